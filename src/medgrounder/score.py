"""Score a ``predictions.jsonl`` file without a model (design section 6).

    python -m medgrounder.score --predictions F --task T [--out metrics.json]
        [--protocol {clean,paper,both}] [--plus-one] [--keep-tags] [--meteor {nltk,coco,none}]

Tasks: ``vindr_identify`` and ``vindr_vqa`` (LiteGPT tables 1-3, 6, 8-13), ``mscxr_refer``
(PFMVG tables 1-4: rows need ``category``, ``gt_boxes`` in pixels, ``image_width`` and
``image_height``) and ``caption`` (text metrics of LiteGPT tables 4-5 on every row, whatever its
task). ``--protocol`` as the runs' ``protocol`` key (design section 7; default ``both``: the
clean keys and the papers' under ``paper/``); ``--plus-one`` / ``--keep-tags`` change the clean
keys only. Prints the metrics as markdown tables and, with ``--out``, writes them as JSON (sorted
keys; a METEOR with no backend is ``null``). Exit codes: 0 success, 1 bad input file, 2 usage
error.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path

from medgrounder.core.io import atomic_write_text
from medgrounder.metrics.tables import summary_table, text_table
from medgrounder.tasks import METRIC_TASKS, Task, row_tasks, task_for_metric
from medgrounder.tasks.base import PROTOCOLS, paper_view


class InputError(ValueError):
    """A predictions file that cannot be scored."""


def read_jsonl(path: str | Path, required: Sequence[str] = ()) -> list[dict]:
    """Read one JSON object a line (blank lines skipped); errors name the file and line."""
    return [row for _, row in read_numbered(path, required)]


def read_numbered(path: str | Path, required: Sequence[str] = ()) -> list[tuple[int, dict]]:
    """:func:`read_jsonl` with each row's line number."""
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
        rows.append((n, row))
    return rows


def _number(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _bad_box(b) -> bool:
    """A ground-truth box: ``[x1, y1, x2, y2]`` or ``[name, x1, y1, x2, y2]`` of finite numbers."""
    if not isinstance(b, list):
        return True
    coords = b[1:] if b and isinstance(b[0], str) else b
    return len(coords) != 4 or not all(_number(v) for v in coords)


def validate_rows(numbered: list[tuple[int, dict]], path: str | Path) -> None:
    """Refuse what would be scored wrongly or crash: a duplicate ``id`` (it would count twice),
    an image size that is not a positive finite number, ``gt_boxes`` that is not a list of boxes
    of four finite numbers, a ``prediction`` / ``reference`` that is not text. Errors name the
    file, the line and the field."""
    first_line: dict = {}
    for n, row in numbered:
        where = f"{path}:{n}"
        if "id" in row:
            key = json.dumps(row["id"], sort_keys=True)
            if key in first_line:
                raise InputError(f"{where}: duplicate id {row['id']!r} (first on line {first_line[key]}): "
                                 "each sample must be scored once")
            first_line[key] = n
        for field in ("image_width", "image_height"):
            if field in row and not (_number(row[field]) and row[field] > 0):
                raise InputError(f"{where}: {field} must be a positive number, got {row[field]!r}")
        for field in ("prediction", "reference"):
            if row.get(field) is not None and not isinstance(row[field], str):
                raise InputError(f"{where}: {field} must be text, got {type(row[field]).__name__}")
        boxes = row.get("gt_boxes")
        if boxes is not None:
            if not isinstance(boxes, list):
                raise InputError(f"{where}: gt_boxes must be a list of boxes, got {type(boxes).__name__}")
            bad = next((b for b in boxes if _bad_box(b)), None)
            if bad is not None or any(b is None for b in boxes):
                raise InputError(f"{where}: gt_boxes entry {bad!r} is not [x1, y1, x2, y2] (optionally after a "
                                 "class name) of finite numbers")


def score(rows: list[dict], task: str, plus_one: bool = False, keep_tags: bool = False,
          meteor: str | None = "nltk", protocol: str = "clean") -> dict:
    """Metrics of ``rows`` of one section ``task`` in ``protocol`` (without the text metrics a
    training run adds to its ``[identify]`` and ``[vqa]`` sections)."""
    return task_for_metric(task).score(rows, protocol=protocol, plus_one=plus_one, keep_tags=keep_tags, meteor=meteor,
                                       text=False)


def report(m: dict, task: Task) -> str:
    """Markdown tables of the metrics of one section: its counts, the task's report (as in
    ``tables.md``) and its text metrics."""
    parts = [summary_table(m, list(task.summary_keys))]
    section = task.report(m, label="model", detailed=True)
    if section:
        parts.append(section)
    text = {name: task.text_scores(v) for name, v in (("model", m), ("model, papers' protocol", paper_view(m)))}
    text = {name: v for name, v in text.items() if v}
    if text:
        parts.append(text_table(text))
    return "\n".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m medgrounder.score", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--predictions", required=True, help="predictions.jsonl (design section 6)")
    parser.add_argument("--task", required=True, choices=list(METRIC_TASKS))
    parser.add_argument("--out", help="write the metrics as JSON here")
    parser.add_argument(
        "--protocol", choices=PROTOCOLS, default="both",
        help="clean (the project's definitions), paper (LiteGPT's reference code, keys under paper/) or both",
    )
    parser.add_argument(
        "--plus-one", action="store_true", help="clean keys: LiteGPT's +1 IoU on the 0-100 grid"
    )
    parser.add_argument(
        "--keep-tags", action="store_true", help="caption: leave the <p> tags in the text"
    )
    parser.add_argument(
        "--meteor", choices=("nltk", "coco", "none"), default="nltk",
        help="caption: METEOR backend (nltk + WordNet 3.0 = LiteGPT; coco = Java METEOR 1.5)",
    )
    args = parser.parse_args(argv)
    task = task_for_metric(args.task)
    accepted = row_tasks(args.task)
    try:
        if args.out and Path(args.out).is_dir():
            raise InputError(f"--out {args.out} is a directory: give a file name, e.g. {Path(args.out) / 'metrics.json'}")
        numbered = read_numbered(args.predictions, task.row_fields)
        validate_rows(numbered, args.predictions)
        rows = [row for _, row in numbered]
        kept = [r for r in rows if accepted is None or r.get("task") is None or r["task"] in accepted]
        if len(kept) < len(rows):
            print(f"note: skipped {len(rows) - len(kept)} rows of other tasks", file=sys.stderr)
        if not kept:
            raise InputError(f"{args.predictions}: no rows for task {args.task}")
        metrics = score(kept, args.task, plus_one=args.plus_one, keep_tags=args.keep_tags,
                        meteor=None if args.meteor == "none" else args.meteor, protocol=args.protocol)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except (ValueError, KeyError, TypeError) as e:  # bad field values in a row
        print(f"error: {args.predictions}: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out, json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    print(f"## {args.task}: {args.predictions}\n\n{report(metrics, task)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
