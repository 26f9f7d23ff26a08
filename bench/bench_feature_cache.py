"""Training step with the frozen-feature cache (``model.cache_frozen_features``) against the same
step through the frozen towers: same tiny demo model, batch and optimizer, measured in this process.

    python bench/bench_feature_cache.py [--batch 32] [--steps 20] [--rounds 3] [--threads N]

Rounds alternate the two loops so machine load hits both alike. Prints the median step time of
each, the speed-up, and the largest difference between the two losses of one batch (the cache
holds the towers' own tokens, so it must be float noise).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from hydra import compose, initialize_config_module
from hydra.utils import instantiate

from medgrounder.data.collate import PromptCollator
from medgrounder.data.prompts import identify_answer

WARMUP = 2


def make_batch(model, n: int) -> tuple[dict, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 224, 224), generator=gen, dtype=torch.uint8)
    items = [{"image": img, "task": "identify", "meta": {},
              "answer": identify_answer([("Cardiomegaly", (10 + i % 7, 20, 60 + i % 11, 70))])}
             for i, img in enumerate(images)]
    return PromptCollator(model.tokenizer)(items), images


def steps(model, batch: dict, n: int, keys: bool) -> list[float]:
    opt, _ = model.build_optimizer(n)
    times = []
    for _ in range(n):
        t = time.perf_counter()
        loss = model(batch["images"], batch["text_ids"], batch["text_mask"], batch["text_labels"],
                     batch["image_keys"] if keys else None)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t)
    return times[WARMUP:]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with initialize_config_module("medgrounder.conf", version_base="1.3"):
        cfg = compose("train", overrides=["paths.output_dir=."])
    torch.manual_seed(0)
    model = instantiate(cfg.model).train()
    batch, images = make_batch(model, args.batch)
    args_ = (batch["images"], batch["text_ids"], batch["text_mask"], batch["text_labels"])
    with torch.no_grad():
        through = model(*args_).item()
        model.cache_features(images)
        cached = model(*args_, batch["image_keys"]).item()
    times: dict[str, list[float]] = {"towers": [], "cached": []}
    for _ in range(args.rounds):
        times["towers"] += steps(model, batch, args.steps, keys=False)
        times["cached"] += steps(model, batch, args.steps, keys=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"tiny demo model, batch {args.batch}, {args.rounds} x {args.steps} steps, {torch.get_num_threads()} threads")
    for name, t in med.items():
        print(f"{name:<7}: {1000 * t:7.1f} ms/step")
    print(f"speed-up with the cache: {med['towers'] / med['cached']:.2f}x; |loss difference| {abs(through - cached):.2e}")


if __name__ == "__main__":
    main()
