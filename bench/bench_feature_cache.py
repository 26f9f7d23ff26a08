"""Training step with the frozen-feature cache (``model.cache_frozen_features``) against the same
step through the frozen towers: same tiny demo model, batch and optimizer, measured in this process.

    python bench/bench_feature_cache.py [--batch 32] [--steps 20] [--rounds 3] [--threads N]

Rounds alternate the two loops so machine load hits both alike. Prints the median step time of
each, the speed-up, and the largest difference between the two losses of one batch (the cache
holds the towers' own tokens, so it must be float noise).
"""

from __future__ import annotations

import statistics
import time

import torch
from demo_setup import demo_model, identify_batch, step_bench_args

WARMUP = 2


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
    args = step_bench_args(__doc__, batch=32, steps=20)
    model = demo_model().train()
    batch, images = identify_batch(model, args.batch, image_keys=True)
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
