"""Constrained against free greedy decoding on the demo model, in one run, at batch 32.

    python bench/bench_constrained.py [--batch 32] [--n 64] [--new-tokens 80] [--rounds 7] [--llama DIR]

Both modes run the same prompts ([identify] and [vqa] batches) through the same
``generate_decoded``, which records the raw log-probabilities in both. They differ only in the
grammar mask. A constrained batch stops when its last row writes ``</s>``, while a free one from an
untrained model runs to its budget. So each free batch gets the length its constrained run took
as its budget. The image encoding and the prompt's prefill are then shared out over the same number
of steps in both modes, and the ratio is the time per decoding step (one token for every row of the
batch). The grammar's per-state token sets are built on first use and cached for the
process (the warm-up round builds the common ones), as in an evaluation over a test split.
``--llama DIR``: a second line with Llama-2's real tokenizer (32,000 tokens) in place of the tiny
one, the same tiny LLM otherwise (its vocabulary sized to the tokenizer).
"""

from __future__ import annotations

import argparse
import os
import time

import torch
from demo_setup import demo_config, demo_model

from medgrounder.data.collate import PromptCollator


def measure(model, items, batch: int, new_tokens: int, rounds: int) -> dict[bool, float]:
    """Seconds per decoding step of each mode (``{constrained: s/step}``): each batch's best of
    ``rounds`` in each mode, the two modes timed back to back so a busy spell hits both."""
    collate = PromptCollator(model.tokenizer)
    batches = [collate(items[i : i + batch]) for i in range(0, len(items), batch)]

    def run(b, constrained: bool, budget: int) -> tuple[float, int]:
        model.constrained_decoding = constrained
        start = time.perf_counter()
        decoded = model.generate_decoded(b["images"], b["prompt_ids"], b["prompt_mask"], budget, task=b["meta"][0]["task"])
        return time.perf_counter() - start, max(len(d.ids) + d.ended for d in decoded)

    seconds = {True: [float("inf")] * len(batches), False: [float("inf")] * len(batches)}
    steps = {True: [0] * len(batches), False: [0] * len(batches)}
    for k, b in enumerate(batches):
        # warm-up (and the grammar's token sets); the free run then gets the constrained length
        _, length = run(b, True, new_tokens)
        budget = {True: new_tokens, False: length}
        for r in range(rounds):
            for mode in (r % 2 == 0, r % 2 == 1):
                t, steps[mode][k] = run(b, mode, budget[mode])
                seconds[mode][k] = min(seconds[mode][k], t)
    return {mode: sum(seconds[mode]) / sum(steps[mode]) for mode in (True, False)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=80)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--llama", default=os.environ.get("MEDGROUNDER_LLAMA_TOKENIZER"),
                    help="Llama-2 tokenizer directory for the 32,000-token line (default: $MEDGROUNDER_LLAMA_TOKENIZER)")
    args = ap.parse_args()
    gen = torch.Generator().manual_seed(0)
    # one task per batch, as evaluation batches are
    tasks = [("identify", "vqa")[(i // args.batch) % 2] for i in range(args.n)]
    items = [{"image": torch.randint(0, 256, (224, 224), generator=gen, dtype=torch.uint8), "task": t,
              "answer": "", "meta": {"task": t}} for t in tasks]
    lines = [("tiny tokenizer", demo_model())]
    if args.llama and os.path.isfile(os.path.join(args.llama, "tokenizer.json")):
        cfg = demo_config()
        cfg.model.llm.tokenizer = {"pretrained": args.llama}
        lines.append(("Llama-2 tokenizer", demo_model(cfg)))
    print(f"batch {args.batch}, {args.n} prompts, budget {args.new_tokens} new tokens, best of {args.rounds}")
    for name, model in lines:
        model.eval()
        best = measure(model, items, args.batch, args.new_tokens, args.rounds)
        print(f"{name:18s} (vocab {len(model.tokenizer):>6,}): free {best[False] * 1e3:7.2f} ms/step, "
              f"constrained {best[True] * 1e3:7.2f} ms/step, ratio {best[True] / best[False]:5.3f}x")


if __name__ == "__main__":
    main()
