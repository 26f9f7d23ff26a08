"""What the benches on the tiny demo model share: the model, an ``[identify]`` batch, and the
options of the step-timing benches (``python bench/NAME.py`` puts this folder on the path)."""

from __future__ import annotations

import argparse

import torch
from hydra import compose, initialize_config_module
from hydra.utils import instantiate

from medgrounder.data.collate import PromptCollator
from medgrounder.tasks.identify import identify_answer


def demo_config():
    """The embedded demo's composed config (``medgrounder.train`` with no overrides)."""
    with initialize_config_module("medgrounder.conf", version_base="1.3"):
        return compose("train", overrides=["paths.output_dir=."])


def demo_model(cfg=None):
    """The demo's model, random weights from seed 0."""
    torch.manual_seed(0)
    return instantiate((cfg or demo_config()).model)


def identify_batch(model, n: int, image_keys: bool = False) -> tuple[dict, torch.Tensor]:
    """A collated ``[identify]`` batch of ``n`` random 224 px images with two findings each, and
    those images (uint8 ``[n, 224, 224]``)."""
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 224, 224), generator=gen, dtype=torch.uint8)
    items = [{"image": img, "task": "identify", "meta": {},
              "answer": identify_answer([("Cardiomegaly", (10 + i % 7, 20, 60 + i % 11, 70)),
                                         ("Aortic enlargement", (40, 10, 55, 30))])}
             for i, img in enumerate(images)]
    return PromptCollator(model.tokenizer, image_keys)(items), images


def step_bench_args(doc: str, batch: int, steps: int) -> argparse.Namespace:
    """``--batch --steps --rounds --threads``, parsed; ``--threads`` set on torch."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--batch", type=int, default=batch)
    ap.add_argument("--steps", type=int, default=steps)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    return args
