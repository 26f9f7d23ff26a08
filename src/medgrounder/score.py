"""Score a ``predictions.jsonl`` file without a model (design section 6).

    python -m medgrounder.score --predictions F --task T [--out metrics.json] [--plus-one]

Prints the metrics as markdown tables and, with ``--out``, writes them as JSON (sorted keys).
Exit codes: 0 success, 1 bad input file, 2 usage error or a task not implemented yet.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from medgrounder.data.labels import GLOBAL_LABELS, LOCAL_LABELS
from medgrounder.eval.metrics import vindr_identify_metrics, vindr_vqa_metrics
from medgrounder.eval.tables import classification_table, localization_table, summary_table

TASKS = ("vindr_identify", "vindr_vqa", "mscxr_refer", "caption")
NOT_IMPLEMENTED = ("mscxr_refer", "caption")
# Values of a row's ``task`` field that each scored task accepts (rows without one are kept).
ROW_TASKS = {
    "vindr_identify": {"vindr_identify", "identify", "grounding"},
    "vindr_vqa": {"vindr_vqa", "vqa"},
}
REQUIRED = {
    "vindr_identify": ("prediction", "reference", "image_width", "image_height"),
    "vindr_vqa": ("prediction", "reference"),
}


class InputError(ValueError):
    """A predictions file that cannot be scored."""


def read_jsonl(path: str | Path, required: Sequence[str] = ()) -> list[dict]:
    """Read one JSON object a line (blank lines skipped); errors name the file and line."""
    rows = []
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: cannot read: {e}") from e
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"{path}:{n}: malformed JSON line: {e.msg}") from e
        if not isinstance(row, dict):
            raise InputError(f"{path}:{n}: expected a JSON object, got {type(row).__name__}")
        missing = [k for k in required if k not in row]
        if missing:
            raise InputError(f"{path}:{n}: missing field(s) {', '.join(missing)}")
        rows.append(row)
    return rows


def score(rows: list[dict], task: str, plus_one: bool = False) -> dict:
    """Metrics of ``rows`` of one task."""
    if task == "vindr_identify":
        return vindr_identify_metrics(rows, plus_one=plus_one)
    return vindr_vqa_metrics(rows)


def report(m: dict, task: str) -> str:
    """Markdown tables of the metrics of one task."""
    if task == "vindr_identify":
        return "\n".join(
            [
                summary_table(m, ["num_samples", "valid_rate", "num_gt", "num_pred"]),
                localization_table({"model": m}, strict=True),
                classification_table(m, LOCAL_LABELS, "local", "Local labels"),
            ]
        )
    binary = [
        f"{c}/{k}"
        for c in ("finding", "no_finding")
        for k in ("precision", "recall", "f1", "support")
    ]
    return "\n".join(
        [
            summary_table(m, ["num_samples", "valid_rate", "finding/accuracy", *binary]),
            classification_table(m, GLOBAL_LABELS, "global", "Global labels"),
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m medgrounder.score", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--predictions", required=True, help="predictions.jsonl (design section 6)")
    parser.add_argument("--task", required=True, choices=TASKS)
    parser.add_argument("--out", help="write the metrics as JSON here")
    parser.add_argument(
        "--plus-one", action="store_true", help="LiteGPT's +1 IoU on the 0-100 grid"
    )
    args = parser.parse_args(argv)
    if args.task in NOT_IMPLEMENTED:
        print(f"error: scoring task {args.task!r} is not implemented yet", file=sys.stderr)
        return 2
    try:
        rows = read_jsonl(args.predictions, REQUIRED[args.task])
        kept = [r for r in rows if r.get("task") is None or r["task"] in ROW_TASKS[args.task]]
        if len(kept) < len(rows):
            print(f"note: skipped {len(rows) - len(kept)} rows of other tasks", file=sys.stderr)
        if not kept:
            raise InputError(f"{args.predictions}: no rows for task {args.task}")
        metrics = score(kept, args.task, plus_one=args.plus_one)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except (ValueError, KeyError, TypeError) as e:  # bad field values in a row
        print(f"error: {args.predictions}: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    print(f"## {args.task}: {args.predictions}\n\n{report(metrics, args.task)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
