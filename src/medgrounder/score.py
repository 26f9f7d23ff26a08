"""Score a ``predictions.jsonl`` file without a model (design section 6).

    python -m medgrounder.score --predictions F --task T [--out metrics.json]
        [--protocol {clean,paper,both}] [--plus-one] [--keep-tags] [--meteor {nltk,coco,none}]
        [--export {coco,kaggle} [--export-out PATH]]

Tasks: ``vindr_identify`` and ``vindr_vqa`` (LiteGPT tables 1-3, 6, 8-13), ``mscxr_refer``
(PFMVG tables 1-4: rows need ``category``, ``gt_boxes`` in pixels, ``image_width`` and
``image_height``) and ``caption`` (text metrics of LiteGPT tables 4-5 on every row, whatever its
task). ``--protocol`` as the runs' ``protocol`` key (design section 7; default ``both``: the
clean keys and the papers' under ``paper/``); ``--plus-one`` / ``--keep-tags`` change the clean
keys only. Prints the metrics as markdown tables and, with ``--out``, writes them as JSON (sorted
keys; a METEOR with no backend is ``null``). Rows carrying ``prediction_boxes`` (scored boxes,
design section 7) also get the detection keys (``detection/map@0.4``, ``detection/froc/...``);
``--export`` writes them as COCO results + COCO ground truth (``vindr_identify``,
``mscxr_refer``) or a Kaggle VinBigData submission (``vindr_identify``) to ``--export-out``
(default: beside the predictions, ``<stem>.<format>.json|csv``), each with a ``.settings.json``
sidecar recording the metric settings (``.gt.json``: COCO's ground truth). Exit codes: 0
success, 1 bad input file, 2 usage error.
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


def _bad_score(v) -> bool:
    return not (_number(v) and 0.0 <= v <= 1.0)


def _prediction_boxes_error(boxes) -> str | None:
    """What is wrong with a row's ``prediction_boxes`` (None when it is well formed)."""
    if not isinstance(boxes, list):
        return f"must be a list of boxes, got {type(boxes).__name__}"
    for k, b in enumerate(boxes):
        if not isinstance(b, dict):
            return f"[{k}] must be an object with label, box and score, got {type(b).__name__}"
        if not isinstance(b.get("label"), str):
            return f"[{k}].label must be a string, got {b.get('label')!r}"
        box = b.get("box")
        if not (isinstance(box, list) and len(box) == 4 and all(_number(v) for v in box)):
            return f"[{k}].box must be [x1, y1, x2, y2] of 4 finite numbers, got {box!r}"
        if box[0] > box[2] or box[1] > box[3]:
            return f"[{k}].box must have x1 <= x2 and y1 <= y2, got {box!r}"
        if _bad_score(b.get("score")):
            return f"[{k}].score must be a finite number in [0, 1], got {b.get('score')!r}"
    return None


def validate_rows(numbered: list[tuple[int, dict]], path: str | Path) -> None:
    """Refuse what would be scored wrongly or crash: a duplicate ``id`` (it would count twice),
    an image size that is not a positive finite number, ``gt_boxes`` that is not a list of boxes
    of four finite numbers, a ``prediction`` / ``reference`` that is not text, malformed
    ``prediction_boxes`` (not a list; an item whose ``label`` is not a string, ``box`` not four
    finite numbers with x1 <= x2 and y1 <= y2, or ``score`` not finite in [0, 1]), a ``no_finding_score`` (when not null)
    outside [0, 1], and a file where only some rows carry ``prediction_boxes`` (detection
    metrics need every row's; ``[]`` is a row without a box). Errors name the file, the line
    and the field."""
    first_line: dict = {}
    with_boxes = [n for n, row in numbered if row.get("prediction_boxes") is not None]
    if with_boxes and len(with_boxes) < len(numbered):
        n = next(n for n, row in numbered if row.get("prediction_boxes") is None)
        raise InputError(f"{path}:{n}: no prediction_boxes while {len(with_boxes)} of {len(numbered)} rows have "
                         f"them (first on line {with_boxes[0]}): give every row its list ([] for no box)")
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
        if row.get("prediction_boxes") is not None:
            problem = _prediction_boxes_error(row["prediction_boxes"])
            if problem:
                raise InputError(f"{where}: prediction_boxes{problem if problem.startswith('[') else ' ' + problem}")
        if row.get("no_finding_score") is not None and _bad_score(row["no_finding_score"]):
            raise InputError(f"{where}: no_finding_score must be a finite number in [0, 1] or null, "
                             f"got {row['no_finding_score']!r}")


def score(rows: list[dict], task: str, plus_one: bool = False, keep_tags: bool = False,
          meteor: str | None = "nltk", protocol: str = "clean") -> dict:
    """Metrics of ``rows`` of one section ``task`` in ``protocol`` (without the text metrics a
    training run adds to its ``[identify]`` and ``[vqa]`` sections)."""
    return task_for_metric(task).score(rows, protocol=protocol, plus_one=plus_one, keep_tags=keep_tags, meteor=meteor,
                                       text=False)


def report(m: dict, task: Task) -> str:
    """Markdown tables of the metrics of one section: its counts, the task's report (as in
    ``tables.md``) and its text metrics."""
    parts = [summary_table(m, [k for k in task.summary_keys if k in m])]
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
    parser.add_argument("--export", choices=("coco", "kaggle"),
                        help="also write the scored boxes (prediction_boxes) as COCO results + ground truth or a "
                             "Kaggle VinBigData submission, with a .settings.json sidecar")
    parser.add_argument("--export-out", help="the export's main file (default: beside --predictions)")
    args = parser.parse_args(argv)
    task = task_for_metric(args.task)
    if args.export_out and not args.export:
        parser.error("--export-out needs --export")
    if args.export and args.export not in task.exports:
        parser.error(f"--task {args.task} has no --export {args.export} (it has: {', '.join(task.exports) or 'none'})")
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
        files = task.export(kept, args.export) if args.export else {}
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
    for written in write_export(files, args.export_out or default_export_path(args.predictions, args.export)):
        print(f"note: wrote {written}", file=sys.stderr)
    print(f"## {args.task}: {args.predictions}\n\n{report(metrics, task)}")
    return 0


def default_export_path(predictions: str | Path, kind: str | None) -> Path:
    """``<dir>/<stem>.coco.json`` or ``<dir>/<stem>.kaggle.csv`` beside the predictions file."""
    p = Path(predictions)
    return p.with_name(f"{p.stem}.{kind}.{'csv' if kind == 'kaggle' else 'json'}")


def write_export(files: dict, main: str | Path) -> list[Path]:
    """Write a task's export (:meth:`~medgrounder.tasks.Task.export`): the main file at ``main``,
    each other role at ``<main without suffix>.<role>.json``; text as is, the rest as JSON."""
    main = Path(main)
    out = []
    for role, content in files.items():
        path = main if not role else main.with_name(f"{main.stem}.{role}.json")
        path.parent.mkdir(parents=True, exist_ok=True)
        text = content if isinstance(content, str) else json.dumps(content, indent=1 if role else None) + "\n"
        out.append(atomic_write_text(path, text))
    return out


if __name__ == "__main__":
    raise SystemExit(main())
