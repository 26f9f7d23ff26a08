"""How much does the model use the image? Validation loss with each sample's own image against the
same batch with the images shuffled, during a short training run of the real model and data.

    python bench/bench_image_use.py --task identify --steps 500 [--oracle] [hydra overrides...]

A ratio ``shuffled / true`` of 1.00 means the answers ignore the image. ``--oracle`` replaces the
towers' tokens with ground-truth coverage maps (:func:`coverage_targets`) plus 2-D sin-cos
positions, which isolates the language side: it measures how fast the LLM learns to read perfect
visual tokens. Plain AdamW at ``model.optim.lr`` after a 50-step linear warm-up.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch
from hydra import compose, initialize_config_module
from hydra.utils import instantiate

from medgrounder.models.encoders import sincos_2d
from medgrounder.models.tower_pretraining import coverage_targets, pretrain_configured_towers


def oracle_tokens(encoder, metas: list[dict]) -> torch.Tensor:
    """``[B, sum P_i, C]``: per tower, 3 x coverage of the 22 findings, then sin-cos positions."""
    out = []
    for tower in encoder.towers:
        side = int(tower.num_tokens**0.5)
        cov = torch.stack([torch.from_numpy(coverage_targets([(b[0], b[1:]) for b in m["gt_boxes"]],
                                                             m["image_width"], m["image_height"], side))
                           for m in metas])
        pos_width = (encoder.width - cov.shape[-1]) // 4 * 4
        pos = sincos_2d(side, pos_width).expand(len(metas), -1, -1)
        pad = torch.zeros(len(metas), side * side, encoder.width - cov.shape[-1] - pos_width)
        out.append(torch.cat([3 * cov, pos, pad], dim=-1))
    return torch.cat(out, dim=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="identify")
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--every", type=int, default=100)
    parser.add_argument("--oracle", action="store_true")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with initialize_config_module("medgrounder.conf", version_base="1.3"):
        cfg = compose("train", overrides=args.overrides)
    torch.manual_seed(cfg.seed)
    module = instantiate(cfg.model)
    dm = instantiate(cfg.data, tokenizer=module.tokenizer)
    dm.prepare_data()
    dm.setup("fit")
    if not args.oracle:
        pretrain_configured_towers(cfg, module, lambda: dm)
    dm.set_task(args.task)
    current: dict = {}
    if args.oracle:
        module.encoder.forward = lambda images: oracle_tokens(module.encoder, current["meta"])

    def loss(batch, perm=None) -> torch.Tensor:
        perm = torch.arange(len(batch["images"])) if perm is None else perm
        current["meta"] = [batch["meta"][i] for i in perm]
        return module(batch["images"][perm], batch["text_ids"], batch["text_mask"], batch["text_labels"])

    val = list(dm.val_dataloader())[:2]

    @torch.no_grad()
    def validate() -> tuple[float, float]:
        module.eval()
        true = np.mean([loss(b).item() for b in val])
        shuffled = np.mean([loss(b, torch.roll(torch.arange(len(b["images"])), 1)).item() for b in val])
        module.train()
        return float(true), float(shuffled)

    opt = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=module.optim["lr"],
                            weight_decay=module.optim["weight_decay"])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 50))
    loader = dm.train_dataloader()
    batches = iter(loader)
    start = time.perf_counter()
    print(f"{'step':>5} {'val loss':>9} {'shuffled':>9} {'ratio':>6} {'s':>6}")
    for step in range(args.steps + 1):
        if step % args.every == 0:
            true, shuffled = validate()
            print(f"{step:5d} {true:9.4f} {shuffled:9.4f} {shuffled / true:6.3f} {time.perf_counter() - start:6.0f}",
                  flush=True)
        try:
            batch = next(batches)
        except StopIteration:
            batches = iter(loader)
            batch = next(batches)
        opt.zero_grad(set_to_none=True)
        loss(batch).backward()
        opt.step()
        sched.step()


if __name__ == "__main__":
    main()
