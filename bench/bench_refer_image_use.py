"""Does a trained [refer] model look at the image? MS-CXR IoU of a stage checkpoint on the test
split with each sample's own image, against the same batches with the images rolled by one (each
phrase paired with another sample's picture). MS-CXR phrases name the side and zone ("right
lower effusion"), so a model can score above the mean-box baseline from the words alone; the
baseline measured here is the rolled run.

    python bench/bench_refer_image_use.py RUN/checkpoints/refer.pt

Prints ``iou/mean`` and ``iou/weighted`` per category for both and the ratio rolled / true
(1.00: the answers ignore the image).
"""

from __future__ import annotations

import argparse
import os

import torch

from medgrounder.eval.metrics import MSCXR_CATEGORIES, mscxr_refer_metrics
from medgrounder.evaluate import load_checkpoint_module


@torch.no_grad()
def answers(module, loader, roll: bool) -> list[dict]:
    module.eval()
    rows = []
    for batch in loader:
        images = batch["images"].roll(1, dims=0) if roll else batch["images"]
        out = module.generate(images, batch["prompt_ids"], batch["prompt_mask"])
        rows += [{**meta, "prediction": a} for meta, a in zip(batch["meta"], out, strict=True)]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ckpt")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    module, _, _, data = load_checkpoint_module(args.ckpt)
    dm = data()
    dm = dm.for_task("refer")
    results = {name: mscxr_refer_metrics(answers(module, dm.test_dataloader("refer"), roll))
               for name, roll in (("true images", False), ("rolled images", True))}
    cats = [c for c in MSCXR_CATEGORIES if f"iou/{c}" in results["true images"]]
    print("| images | " + " | ".join(cats) + " | mean | weighted |")
    print("| :--- |" + " ---: |" * (len(cats) + 2))
    for name, m in results.items():
        print(f"| {name} | " + " | ".join(f"{m[f'iou/{c}']:.3f}" for c in [*cats, "mean", "weighted"]) + " |")
    true, rolled = results["true images"], results["rolled images"]
    print(f"\nrolled / true: mean {rolled['iou/mean'] / max(true['iou/mean'], 1e-9):.2f}, "
          f"weighted {rolled['iou/weighted'] / max(true['iou/weighted'], 1e-9):.2f}")


if __name__ == "__main__":
    main()
