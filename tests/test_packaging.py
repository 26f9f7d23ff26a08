"""The configs ship with the package: a wheel built from a clean copy of the repository holds
every file of conf/ as medgrounder/conf/, and an install from it (not editable, outside the
repository) composes the demo and every paper experiment, as the editable install does."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
CONFIGS = sorted(p.relative_to(ROOT / "conf").as_posix() for p in (ROOT / "conf").rglob("*.yaml"))
EXPERIMENTS = sorted(Path(p).stem for p in CONFIGS if p.startswith("experiment/"))
COMPOSE = """
import sys
from hydra import compose, initialize_config_module
import medgrounder
print(medgrounder.__file__)
with initialize_config_module("medgrounder.conf", version_base="1.3"):
    for name in sys.argv[1:]:
        cfg = compose("train", overrides=[f"+experiment={name}"] if name != "-" else [])
        print(name, cfg.task_name)
"""


def _clean_copy(dest: Path) -> Path:
    """The files git tracks (what a clean clone has), else the tree without build outputs."""
    try:
        files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
        names = [n for n in files.decode().split("\0") if n]
    except (OSError, subprocess.CalledProcessError):
        names = [str(p.relative_to(ROOT)) for p in ROOT.rglob("*") if p.is_file()
                 and not {".venv", ".git", "build", "outputs", "__pycache__"} & set(p.relative_to(ROOT).parts)]
    for name in names:
        if (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    return dest


def _run(cmd: list[str], cwd: Path, env: dict | None = None) -> str:
    done = subprocess.run(cmd, cwd=cwd, env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})},
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    return done.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    src = _clean_copy(tmp_path_factory.mktemp("clone"))
    out = tmp_path_factory.mktemp("wheel")
    # the venv's setuptools builds it (no download); its warnings about conf/ folders that look like
    # packages are about package data, which is shipped all the same
    _run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", str(out), str(src)],
         cwd=src)
    return next(out.glob("medgrounder-*.whl"))


def test_the_wheel_holds_every_config_and_every_module(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = sorted(n.removeprefix("medgrounder/conf/") for n in names
                     if n.startswith("medgrounder/conf/") and n.endswith(".yaml"))
    assert shipped == CONFIGS and len(CONFIGS) > 40
    modules = {f"medgrounder/{p.relative_to(ROOT / 'src/medgrounder').as_posix()}"
               for p in (ROOT / "src/medgrounder").rglob("*.py")}
    assert modules <= names, sorted(modules - names)
    assert "medgrounder/conf/__init__.py" in names and "medgrounder/py.typed" in names


def test_an_installed_wheel_composes_every_experiment_from_any_directory(wheel, tmp_path):
    site = tmp_path / "site"
    _run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site), str(wheel)],
         cwd=tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {"PYTHONPATH": str(site)}  # ahead of the editable install of the repository
    out = _run([sys.executable, "-c", COMPOSE, "-", *EXPERIMENTS], cwd=elsewhere, env=env).splitlines()
    assert Path(out[0]).is_relative_to(site), out[0]
    assert out[1:] == ["- train", *(f"{e} {e}" for e in EXPERIMENTS)]
    # the entry point itself (hydra.main's config_path) prints its composed config
    job = _run([sys.executable, "-m", "medgrounder.train", "--cfg", "job", "+experiment=pfmvg"], cwd=elsewhere, env=env)
    assert "task_name: pfmvg" in job and "MSCXRDataModule" in job


def test_the_editable_install_finds_the_configs_from_any_directory(tmp_path):
    job = _run([sys.executable, "-m", "medgrounder.train", "--cfg", "job", "+experiment=litegpt_dual"], cwd=tmp_path)
    assert "task_name: litegpt_dual" in job


def test_every_entry_point_has_its_console_script(wheel):
    import configparser
    import importlib

    entry = ("train", "evaluate", "predict", "score", "prepare", "synth", "summary", "tables")
    text = next(zipfile.ZipFile(wheel).read(n).decode() for n in zipfile.ZipFile(wheel).namelist()
                if n.endswith("entry_points.txt"))
    parser = configparser.ConfigParser()
    parser.read_string(text)
    scripts = dict(parser["console_scripts"])
    assert set(scripts) == {f"medgrounder-{m}" for m in entry}
    for name, target in scripts.items():
        module, attr = target.split(":")
        assert module == f"medgrounder.{name.removeprefix('medgrounder-')}" and callable(
            getattr(importlib.import_module(module), attr)), target
