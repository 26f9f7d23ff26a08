"""VinDr labels from the Kaggle VinBigData ``train.csv`` at its real size (67,914 rows: 15,000
images, 3 readers each, 10,606 normal images, ~36,000 boxes), against reading the same file with
the csv module alone, measured in this process.

    python bench/bench_vindr_labels.py [--rounds 5] [--seed 0]

The csv is synthetic, written with the real columns and proportions (a row per reader and box,
"No finding" rows with empty coordinates). Prints the median time of ``parse_kaggle`` +
``build_records`` (the issue's target: at most 0.5 s), of a bare ``csv.DictReader`` pass, and
their ratio.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from medgrounder.core.labels import KAGGLE_CLASSES, KAGGLE_NO_FINDING_ID, NO_FINDING
from medgrounder.data.vindr.records import build_records, parse_kaggle

IMAGES, NORMAL, READERS = 15_000, 10_606, 3


def write_kaggle_csv(path: Path, seed: int) -> int:
    """A train.csv with Kaggle's columns and proportions; returns its number of rows."""
    rng = np.random.default_rng(seed)
    normal = set(rng.choice(IMAGES, NORMAL, replace=False).tolist())
    rows = []
    for i in range(IMAGES):
        iid = f"{rng.integers(2**62):016x}{i:016x}"
        for rad in rng.choice(17, READERS, replace=False):
            if i in normal:
                rows.append((iid, NO_FINDING, KAGGLE_NO_FINDING_ID, f"R{rad + 1}", "", "", "", ""))
                continue
            for _ in range(1 + rng.poisson(1.74)):  # ~2.7 boxes a reader, as Kaggle's 36,096 / 4,394 / 3
                c = int(rng.integers(len(KAGGLE_CLASSES)))
                x, y = rng.uniform(0, 2400, 2)
                w, h = rng.uniform(20, 500, 2)
                rows.append((iid, KAGGLE_CLASSES[c], c, f"R{rad + 1}", f"{x:.0f}", f"{y:.0f}",
                             f"{x + w:.0f}", f"{y + h:.0f}"))
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image_id", "class_name", "class_id", "rad_id", "x_min", "y_min", "x_max", "y_max"])
        w.writerows(rows)
    return len(rows)


def labels(root: Path) -> int:
    parsed = parse_kaggle(root)
    sizes = {i: (3000, 3000) for i in parsed.readings}  # header sizes, as prepare's workers give
    records, _ = build_records(parsed, sizes, dict.fromkeys(sizes, ""))
    return len(records)


def bare_read(root: Path) -> int:
    with open(root / "train.csv", newline="") as f:
        return sum(1 for _ in csv.DictReader(f))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        n = write_kaggle_csv(root / "train.csv", args.seed)
        labels(root)  # imports and first-touch costs out of the measurement
        times = {"labels": [], "csv": []}
        for _ in range(args.rounds):  # alternate, so machine load hits both alike
            for name, fn in (("labels", labels), ("csv", bare_read)):
                t = time.perf_counter()
                fn(root)
                times[name].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"train.csv: {n:,} rows, {IMAGES:,} images")
    print(f"labels (parse_kaggle + build_records): {med['labels']:.3f} s   (target <= 0.5 s)")
    print(f"csv.DictReader alone:                  {med['csv']:.3f} s")
    print(f"ratio labels / bare csv read:          {med['labels'] / med['csv']:.2f}x")


if __name__ == "__main__":
    main()
