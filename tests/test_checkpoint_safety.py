"""Checkpoints never run code: a pickle payload or a foreign ``_target_`` in a stage checkpoint is
refused by ``evaluate``, ``predict``, ``init_from`` and Lightning's resume, with no side effect; the
allowlist covers every target the shipped configs name; ``predict`` works from another directory
with the training data and tower cache gone, and reads 16-bit, truncated and non-image files
correctly or refuses them naming the file."""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from helpers import compose_train, tiny_run_overrides

PACKAGE = Path(__file__).parents[1] / "src" / "medgrounder"
CONF = Path(__file__).parents[1] / "conf"


class Payload:
    """Unpickling it writes ``marker``: what a hostile checkpoint could do."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').close()",)


@pytest.fixture(scope="module")
def run_dir(synth_vindr_root, tmp_path_factory):
    """A tiny two-stage run (fast_dev_run) on its own copy of the synthetic data, so tests may
    take that copy away."""
    from medgrounder.train import run

    base = tmp_path_factory.mktemp("safety")
    data = base / "vindr"
    shutil.copytree(synth_vindr_root, data)
    out = base / "run"
    run(compose_train([*tiny_run_overrides(data, out), "+trainer.fast_dev_run=true", "evaluate=false"]))
    return out


def _hostile(run_dir: Path, tmp_path: Path, kind: str) -> tuple[Path, Path]:
    """A copy of the identify checkpoint carrying a pickle payload or a foreign ``_target_``;
    returns it and the marker file its payload would write."""
    marker = tmp_path / f"{kind}-marker"
    ckpt = torch.load(run_dir / "checkpoints" / "identify.pt", weights_only=True)
    if kind == "pickle":
        ckpt["extra"] = Payload(marker)
    else:
        ckpt["config"]["model"]["encoder"] = {"_target_": "builtins.open", "file": str(marker), "mode": "w"}
    path = tmp_path / f"{kind}.pt"
    torch.save(ckpt, path)
    return path, marker


def test_the_payload_is_real(run_dir, tmp_path):
    """Control: unpickled without weights_only, the payload does write its marker."""
    path, marker = _hostile(run_dir, tmp_path, "pickle")
    torch.load(path, weights_only=False)
    assert marker.is_file()


@pytest.mark.parametrize("kind", ["pickle", "target"])
def test_evaluate_and_predict_refuse_hostile_checkpoints(run_dir, tmp_path, kind):
    from medgrounder.evaluate import evaluate_checkpoint
    from medgrounder.predict import predict

    path, marker = _hostile(run_dir, tmp_path, kind)
    image = tmp_path / "x.png"
    Image.fromarray(np.full((32, 32), 100, np.uint8)).save(image)
    expected = "holds objects other than tensors" if kind == "pickle" else \
        "model.encoder._target_: builtins.open is not allowed"
    with pytest.raises(ValueError, match=expected):
        evaluate_checkpoint(path, tmp_path / "eval")
    with pytest.raises(ValueError, match=expected):
        predict(path, image, tmp_path / "predict")
    assert not marker.exists()
    assert not (tmp_path / "eval").exists() and not (tmp_path / "predict").exists()


@pytest.mark.parametrize("kind", ["pickle", "target"])
def test_init_from_refuses_hostile_checkpoints_at_start(run_dir, synth_vindr_root, tmp_path, kind):
    from medgrounder.train import run

    path, marker = _hostile(run_dir, tmp_path, kind)
    data = tmp_path / "absent"  # synthetic data would be written here by a run that got going
    cfg = compose_train([*tiny_run_overrides(data, tmp_path / "run"), "data.synth={n: 8}",
                         f"stages.identify.init_from={path}"])
    with pytest.raises(ValueError, match=str(path)):
        run(cfg)
    assert not marker.exists() and not data.exists()


def test_resume_refuses_a_hostile_resume_checkpoint(run_dir, synth_vindr_root, tmp_path):
    """Lightning's own resume (``trainer.fit(ckpt_path=...)``) reads tensors only too."""
    from medgrounder.train import run

    marker = tmp_path / "marker"
    out = tmp_path / "run"
    last = out / "checkpoints" / "resume" / "identify" / "last.ckpt"
    last.parent.mkdir(parents=True)
    torch.save({"state_dict": {}, "extra": Payload(marker)}, last)
    cfg = compose_train([*tiny_run_overrides(run_dir.parent / "vindr", out), "+trainer.fast_dev_run=true",
                         "evaluate=false", f"tower_pretraining.cache_dir={run_dir}/towers"])
    with pytest.raises(ValueError, match=r"last\.ckpt refused: it holds objects other than tensors"):
        run(cfg)
    assert not marker.exists()


def _yaml_targets(node, key=""):
    if isinstance(node, dict):
        if "_target_" in node:
            yield key, node["_target_"]
        for k, v in node.items():
            yield from _yaml_targets(v, f"{key}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _yaml_targets(v, f"{key}[{i}]")


def test_the_allowlist_covers_the_shipped_configs_and_nothing_foreign():
    from medgrounder.utils.targets import allowed_target

    shipped = {t for f in CONF.rglob("*.yaml") for _, t in _yaml_targets(yaml.safe_load(f.read_text()))}
    assert len(shipped) > 20 and "medgrounder.models.vlm.VisionLanguageModel" in shipped
    assert sorted(t for t in shipped if not allowed_target(t)) == []
    # a package function that writes files, a library class re-exported by a package module, builtins
    for foreign in ("builtins.open", "os.system", "subprocess.Popen", "medgrounder.core.io.atomic_write_text",
                    "medgrounder.train.Path", "medgrounder.models.vlm.nn.Module", "medgrounder.nope.Class", 3):
        assert not allowed_target(foreign), foreign


def test_no_torch_load_without_weights_only_in_the_package():
    unsafe = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and ast.unparse(node.func).endswith("torch.load"):
                flags = {k.arg: k.value for k in node.keywords}
                if not (isinstance(flags.get("weights_only"), ast.Constant) and flags["weights_only"].value is True):
                    unsafe.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    assert unsafe == []
    # the check sees what it looks for
    call = ast.parse("torch.load(p, weights_only=False)").body[0].value
    assert ast.unparse(call.func) == "torch.load" and call.keywords[0].value.value is False


# ------------------------------------------------------------------------------ predict
def test_predict_is_self_contained(run_dir, tmp_path, monkeypatch):
    """From another directory, with the training data and the tower cache gone, predict gives the
    answer it gave beside them."""
    from medgrounder.predict import predict

    pixels = np.random.default_rng(0).integers(0, 256, (96, 80), dtype=np.uint8)
    image = tmp_path / "x.png"
    Image.fromarray(pixels).save(image)
    ckpt = tmp_path / "identify.pt"
    shutil.copy(run_dir / "checkpoints" / "identify.pt", ckpt)
    before = predict(ckpt, image, tmp_path / "before", max_new_tokens=24)
    moved = run_dir.parent / "vindr-moved"
    (run_dir.parent / "vindr").rename(moved)
    towers = run_dir / "towers"
    towers.rename(run_dir / "towers-moved")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    try:
        after = predict(ckpt, image, tmp_path / "after", max_new_tokens=24)
    finally:
        moved.rename(run_dir.parent / "vindr")
        (run_dir / "towers-moved").rename(towers)
    assert after["answer"] == before["answer"] and after["boxes"] == before["boxes"]
    assert not (run_dir / "towers-moved").exists() and not any(elsewhere.iterdir())


def test_sixteen_bit_png_is_scaled_by_its_bit_depth(tmp_path):
    from medgrounder.predict import read_image

    ramp = np.arange(64 * 48, dtype=np.int64).reshape(48, 64)
    for top in (4095, 65535):  # a 12-bit detector's values, and the full 16 bits
        values = (ramp * top // ramp.max()).astype(np.uint16)
        path = tmp_path / f"x{top}.png"
        Image.fromarray(values).save(path)
        with Image.open(path) as im:
            assert im.mode.startswith("I")  # a real 16-bit PNG
            clipped = np.asarray(im.convert("L"))
        assert (clipped == 255).mean() > 0.9  # what Pillow's convert("L") would feed the model
        got = read_image(path)
        assert got.dtype == np.uint8 and got.shape == (48, 64)
        np.testing.assert_array_equal(got, np.rint(values / top * 255).astype(np.uint8))
        assert got.min() == 0 and got.max() == 255


def test_unreadable_images_are_named_before_the_model_is_built(run_dir, tmp_path):
    from medgrounder.predict import ImageReadError, predict

    good = tmp_path / "good.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (200, 200), dtype=np.uint8)).save(good)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    garbage = tmp_path / "scan.dcm"
    garbage.write_bytes(b"not a dicom file" * 10)
    # a checkpoint whose model cannot be built: the image is refused first all the same
    ckpt = torch.load(run_dir / "checkpoints" / "identify.pt", weights_only=True)
    ckpt["config"]["model"]["llm"]["pretrained"] = str(tmp_path / "no-such-llm")
    broken = tmp_path / "broken.pt"
    torch.save(ckpt, broken)
    for bad in (truncated, garbage, tmp_path / "missing.png"):
        with pytest.raises(ImageReadError, match=str(bad)):
            predict(broken, bad, tmp_path / "out")
    assert not (tmp_path / "out").exists()
