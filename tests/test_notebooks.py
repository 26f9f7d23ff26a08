"""The analysis notebooks run top to bottom on this interpreter (the venv's) and draw figures."""

import json
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
# Per notebook: the least number of figures and text its printed output must contain.
EXPECTED = {
    "vindr_data.ipynb": (2, ["removed for reader conflicts", "after de-duplication"]),  # label bars, image grid
    "error_analysis.ipynb": (2, ["worst boxes by IoU", "per-class confusion", "acc@0.5"]),
}


@pytest.fixture
def kernel_name(tmp_path, monkeypatch) -> str:
    """A kernelspec running ``sys.executable``, first on JUPYTER_PATH (a user-wide ``python3``
    kernel could point at another Python)."""
    spec = tmp_path / "jupyter" / "kernels" / "medgrounder-test"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "medgrounder (tests)", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    return "medgrounder-test"


def test_notebooks_exist_and_are_stored_without_outputs():
    assert [p.name for p in NOTEBOOKS] == sorted(EXPECTED)
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), path.name


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path, kernel_name, tmp_path):
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, kernel_name=kernel_name, timeout=120,
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    figures = [o for o in outputs if "image/png" in o.get("data", {})]
    min_figures, phrases = EXPECTED[path.name]
    assert len(figures) >= min_figures
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert all(p in text for p in phrases), [p for p in phrases if p not in text]
