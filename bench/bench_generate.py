"""Batched greedy generation vs one sample at a time, on the tiny demo model.

    python bench/bench_generate.py [--n 64] [--batch 32] [--new-tokens 60]

Prints samples/s of both and their ratio, measured in this process on the same prompts, and
checks that both give the same answers.
"""

from __future__ import annotations

import argparse
import time

import torch
from demo_setup import demo_model

from medgrounder.data.collate import PromptCollator


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=60)
    args = ap.parse_args()
    model = demo_model().eval()
    model.llm.lm_head.weight.data *= 200  # sharp logits: both paths must agree token for token
    gen = torch.Generator().manual_seed(0)
    items = [{"image": torch.randint(0, 256, (224, 224), generator=gen, dtype=torch.uint8),
              "task": ("identify", "vqa")[i % 2], "answer": "", "meta": {}} for i in range(args.n)]
    collate = PromptCollator(model.tokenizer)

    def run(batch_size: int) -> tuple[float, list[str]]:
        out: list[str] = []
        start = time.perf_counter()
        for i in range(0, args.n, batch_size):
            b = collate(items[i : i + batch_size])
            out += model.generate(b["images"], b["prompt_ids"], b["prompt_mask"], max_new_tokens=args.new_tokens)
        return args.n / (time.perf_counter() - start), out

    run(args.batch)  # warm-up
    single, single_out = run(1)
    batched, batched_out = run(args.batch)
    same = sum(a == b for a, b in zip(single_out, batched_out, strict=True))
    print(f"one at a time : {single:8.1f} samples/s")
    print(f"batch of {args.batch:<4} : {batched:8.1f} samples/s")
    print(f"ratio         : {batched / single:8.2f}x   (identical answers: {same}/{args.n})")


if __name__ == "__main__":
    main()
