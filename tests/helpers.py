"""Test helpers: the real train config composed as the command line would, a tiny run's
overrides (VinDr and PFMVG), the train command in a fresh process, and image references."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from hydra import compose, initialize_config_module


def compose_train(overrides: list[str] | None = None):
    """The real train config, composed as the command line would."""
    with initialize_config_module("medgrounder.conf", version_base="1.3"):
        return compose("train", overrides=list(overrides or []))


def tiny_run_overrides(root, out_dir) -> list[str]:
    """A tiny, fast run on an existing synthetic dataset."""
    return [
        f"data.root={root}",
        "data.synth=null",
        "data.batch_size=4",
        "data.eval_batch_size=8",
        "data.decode_workers=1",
        f"paths.output_dir={out_dir}",
        "tower_pretraining.steps=20",
        f"tower_pretraining.cache_dir={out_dir}/towers",
        # short answers keep generation fast; the tiny [identify] answers are longer (p99.5 about
        # 43 tiny tokens), so the start-up budget check is off for these smoke runs
        "model.max_new_tokens=24",
        "check_generation_budgets=false",
        "logger.wandb.mode=offline",
        "trainer.accelerator=cpu",
        "trainer.enable_progress_bar=false",
        "num_figure_images=2",
    ]


def pfmvg_overrides(data_dir) -> list[str]:
    """The PFMVG demo at its smallest: a few dozen training samples per stage, batch 2, no tower
    pretraining, short answers, nothing logged to W&B."""
    return [
        "+experiment=pfmvg_demo",
        f"paths.data_dir={data_dir}",
        "data.tasks.caption.synth.n=12",
        "data.tasks.refer.synth.n=24",
        "data.tasks.caption.batch_size=2",
        "data.tasks.refer.batch_size=2",
        "data.tasks.refer.eval_batch_size=8",
        "data.tasks.refer.decode_workers=1",
        "tower_pretraining=null",
        "model.max_new_tokens=4",
        "stages.refer.max_new_tokens=4",  # pfmvg.yaml's budget, cut for speed (no budget check)
        "check_generation_budgets=false",
        "trainer.accelerator=cpu",
        "trainer.enable_progress_bar=false",
        "logger.wandb.mode=disabled",
        "num_figure_images=1",
    ]


def train_cli(args: list[str], cwd=None, timeout: int = 900) -> subprocess.CompletedProcess:
    """``python -m medgrounder.train ARGS`` in a fresh process (the package this test session
    imports, plus tests/ for the probe callbacks), one intra-op thread so runs compare exactly."""
    import medgrounder

    src = str(Path(medgrounder.__file__).parents[1])
    path = [src, str(Path(__file__).parent), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path), "OMP_NUM_THREADS": "1",
           "WANDB_MODE": "offline", "WANDB_SILENT": "true", "HF_HUB_OFFLINE": "1"}
    # Not this test process's W&B service (wandb exports its address to children): a run of a
    # killed child would stay "in use" there, as it never would for a command started from a shell.
    env.pop("WANDB_SERVICE", None)
    return subprocess.run([sys.executable, "-m", "medgrounder.train", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def pillow_bilinear(img, width: int, height: int, box):
    """Pillow's bilinear filter in its two one-axis resizes, horizontal first: the reference of
    :func:`medgrounder.data.vindr.resample.bilinear` (Pillow 13's two-axis resize may go vertical first)."""
    from PIL import Image

    x0, y0, x1, y1 = box
    rows = Image.fromarray(img).resize((width, img.shape[0]), Image.BILINEAR, box=(x0, 0, x1, img.shape[0]))
    return np.asarray(rows.resize((width, height), Image.BILINEAR, box=(0, y0, width, y1)))
