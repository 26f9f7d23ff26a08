"""Rebuild a paper table: run the Hydra multirun of its experiments, then assemble the table from
the runs' ``metrics.json`` beside the paper's numbers (kept here, in :data:`TABLES`, and nowhere
else).

    python -m medgrounder.tables pfmvg_table3                     # run the sweep, print and write the table
    python -m medgrounder.tables pfmvg_table3 --scale tiny -- ++stages.refer.max_epochs=2   # tiny scale
    python -m medgrounder.tables litegpt_table3 --runs multirun/litegpt_table1/DATE     # reuse a sweep
    python -m medgrounder.tables pfmvg_table1 --dry-run           # print the command only
    python -m medgrounder.tables --list                           # the tables

The sweep is ``python -m medgrounder.train -m +experiment=A,B,... hydra.sweep.dir=DIR [scale=tiny]
[overrides]``. Hydra first composes the base config (the demo) with the overrides, so a key that
only the experiments have needs ``++`` (e.g. ``++stages.refer.max_epochs=2``); each job writes
``DIR/<n>/metrics.json`` and its resolved config ``DIR/<n>/.hydra/config.yaml`` (whose
``task_name`` names the experiment). The table goes to stdout and ``DIR/<table>.md``. LiteGPT
tables 1-5 share one sweep (the four models), so one run serves them all through ``--runs``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf

from medgrounder.core.io import atomic_write_text
from medgrounder.core.labels import MSCXR_CATEGORIES
from medgrounder.metrics.tables import TEXT_COLUMNS, markdown_table
from medgrounder.tasks.base import PAPER

LITEGPT_MODELS = ("litegpt_minigptv2", "litegpt_biomedclip", "litegpt_pubmedclip", "litegpt_dual")
NAMES = {
    "litegpt_minigptv2": "MiniGPT-v2",
    "litegpt_biomedclip": "BiomedCLIP - Llama 2",
    "litegpt_pubmedclip": "PubMedCLIP - Llama 2",
    "litegpt_dual": "BiomedCLIP + PubMedCLIP - Llama 2",
    "litegpt_grounding_token": "[grounding]",
    "pfmvg": "Ours (stage 1 + stage 2)",
    "pfmvg_zero_shot": "no fine-tuning",
    "pfmvg_stage2_only": "stage 2 only",
    "pfmvg_stage1_only": "stage 1 only",
}


@dataclass
class Column:
    header: str
    task: str  # the metrics.json section
    key: str
    scale: float = 1.0  # 100: percent
    spec: str = ".2f"


@dataclass
class Table:
    title: str
    experiments: tuple[str, ...]
    columns: list[Column]
    paper: dict[str, list[float | None]]  # experiment -> the paper's row, column by column
    names: dict[str, str] = field(default_factory=dict)  # row names that differ from NAMES
    note: str = ""


def _text_columns(task: str) -> list[Column]:
    return [Column(h, task, f"text/{k}", 100) for k, h in TEXT_COLUMNS] + [Column("CIDEr", task, "text/cider")]


def _refer_columns(metric: str) -> list[Column]:
    last = "wIoU" if metric == "iou" else "wDice"
    return [Column(c, "mscxr_refer", f"{metric}/{c}", spec=".3f") for c in MSCXR_CATEGORIES] + [
        Column("mean", "mscxr_refer", f"{metric}/mean", spec=".3f"),
        Column(last, "mscxr_refer", f"{metric}/weighted", spec=".3f")]


PFMVG_ABLATION = ("pfmvg_zero_shot", "pfmvg_stage2_only", "pfmvg_stage1_only", "pfmvg")
TABLES: dict[str, Table] = {
    "litegpt_table1": Table(
        "LiteGPT Table 1: binary classification (finding / no finding), [vqa]", LITEGPT_MODELS,
        [Column(f"{m} {c} (%)", "vindr_vqa", f"{k}/{mk}", 100, ".0f")
         for m, mk in (("Precision", "precision"), ("Recall", "recall"), ("F1", "f1"))
         for c, k in (("finding", "finding"), ("no finding", "no_finding"))],
        {"litegpt_minigptv2": [73, 83, 59, 90, 66, 86], "litegpt_biomedclip": [88, 82, 54, 97, 67, 89],
         "litegpt_pubmedclip": [73, 80, 49, 92, 59, 85], "litegpt_dual": [84, 83, 59, 95, 70, 89]}),
    "litegpt_table2": Table(
        "LiteGPT Table 2: global-label F1, [vqa]", LITEGPT_MODELS,
        [Column("F1 (%) as published", "vindr_vqa", "-", 100, ".0f"), Column("macro F1 (%)", "vindr_vqa", "global/macro/f1", 100, ".0f"),
         Column("micro F1 (%)", "vindr_vqa", "global/micro/f1", 100, ".0f"),
         Column("weighted F1 (%)", "vindr_vqa", "global/weighted/f1", 100, ".0f")],
        {"litegpt_minigptv2": [53, None, None, None], "litegpt_biomedclip": [59, None, None, None],
         "litegpt_pubmedclip": [55, None, None, None], "litegpt_dual": [60, None, None, None]},
        note="The paper does not say which average its F1 is (none of its appendix tables' averages gives "
             "these numbers; its Table 11 gives the dual model a micro F1 of 0.76), so the runs report "
             "macro, micro and weighted F1."),
    "litegpt_table3": Table(
        "LiteGPT Table 3: localization, [identify]", LITEGPT_MODELS,
        [Column(f"Accuracy@{t} (%)", "vindr_identify", f"acc@{t}", 100) for t in ("0.3", "0.4", "0.5")],
        {"litegpt_minigptv2": [5.9, 5.01, 3.38], "litegpt_biomedclip": [10.72, 9.01, 6.75],
         "litegpt_pubmedclip": [6.23, 4.38, 2.86], "litegpt_dual": [12.54, 10.5, 8.12]}),
    "litegpt_table4": Table(
        "LiteGPT Table 4: text validity of the [identify] answers", LITEGPT_MODELS, _text_columns("vindr_identify"),
        {"litegpt_minigptv2": [42.85, 35.37, 42.28, 42.27, 21.84, 20.6, 19.4, 18.17, 61.54, 0.29],
         "litegpt_biomedclip": [49.51, 38.77, 48.5, 48.46, 32.76, 30.56, 28.62, 26.71, 68.73, 0.46],
         "litegpt_pubmedclip": [22.3, 14.31, 21.58, 21.6, 14.16, 12.95, 11.95, 10.98, 34, 0.1],
         "litegpt_dual": [50.1, 40.58, 48.75, 48.74, 28.96, 27.02, 25.37, 23.74, 61.92, 0.56]}),
    "litegpt_table5": Table(
        "LiteGPT Table 5: text validity of the [vqa] answers", LITEGPT_MODELS, _text_columns("vindr_vqa"),
        {"litegpt_minigptv2": [94.48, 93.35, 94.47, 94.47, 94.22, 92.32, 91.15, 90.05, 93.91, 7.26],
         "litegpt_biomedclip": [95.18, 94.14, 95.18, 95.18, 94.43, 92.69, 91.61, 90.59, 94.8, 7.57],
         "litegpt_pubmedclip": [93.31, 91.80, 93.31, 93.31, 88.59, 86.33, 84.82, 83.34, 92.58, 7.06],
         "litegpt_dual": [95.12, 94.08, 95.12, 95.12, 94.45, 92.70, 91.60, 90.56, 94.74, 7.52]}),
    "litegpt_table6": Table(
        "LiteGPT Table 6: identifier token of the localization stage", ("litegpt_grounding_token", "litegpt_dual"),
        [Column(f"Accuracy@{t} (%)", "vindr_identify", f"acc@{t}", 100) for t in ("0.3", "0.4", "0.5")],
        {"litegpt_grounding_token": [11.98, 10.31, 8.04], "litegpt_dual": [12.54, 10.5, 8.12]},
        names={"litegpt_dual": "[identify]"}),
    "pfmvg_table1": Table(
        "PFMVG Table 1: IoU on MS-CXR", ("pfmvg",), _refer_columns("iou"),
        {"pfmvg": [0.446, 0.303, 0.343, 0.395, 0.286, 0.592, 0.28, 0.374, 0.377, 0.407]}),
    "pfmvg_table2": Table(
        "PFMVG Table 2: Dice on MS-CXR", ("pfmvg",), _refer_columns("dice"),
        {"pfmvg": [0.584, 0.43, 0.489, 0.543, 0.401, 0.736, 0.405, 0.519, 0.513, 0.544]}),
    "pfmvg_table3": Table(
        "PFMVG Table 3: IoU, ablation of the two stages", PFMVG_ABLATION, _refer_columns("iou"),
        {"pfmvg_zero_shot": [0.118, 0.041, 0.104, 0.098, 0.108, 0.136, 0.137, 0.069, 0.101, 0.101],
         "pfmvg_stage2_only": [0.418, 0.159, 0.345, 0.419, 0.409, 0.607, 0.24, 0.256, 0.357, 0.374],
         "pfmvg_stage1_only": [0.049, None, None, None, None, 0, None, 0, 0.006, 0.016],
         "pfmvg": [0.446, 0.303, 0.343, 0.395, 0.286, 0.592, 0.28, 0.374, 0.377, 0.407]}),
    "pfmvg_table4": Table(
        "PFMVG Table 4: Dice, ablation of the two stages", PFMVG_ABLATION, _refer_columns("dice"),
        {"pfmvg_zero_shot": [0.184, 0.071, 0.167, 0.157, 0.181, 0.221, 0.212, 0.116, 0.164, 0.163],
         "pfmvg_stage2_only": [0.55, 0.231, 0.464, 0.546, 0.524, 0.746, 0.336, 0.354, 0.469, 0.488],
         "pfmvg_stage1_only": [0.094, None, None, None, None, 0, None, 0, 0.012, 0.031],
         "pfmvg": [0.584, 0.43, 0.489, 0.543, 0.401, 0.736, 0.405, 0.519, 0.513, 0.544]}),
}


def sweep_command(experiments: Sequence[str], sweep_dir: Path, scale: str | None, overrides: Sequence[str],
                  python: str = sys.executable) -> list[str]:
    """The Hydra multirun over ``experiments`` (one job each, in order)."""
    cmd = [python, "-m", "medgrounder.train", "-m", f"+experiment={','.join(experiments)}",
           f"hydra.sweep.dir={sweep_dir}"]
    if scale:
        cmd.append(f"scale={scale}")
    return cmd + list(overrides)


def collect(sweep_dir: Path) -> dict[str, dict]:
    """``{experiment: metrics}`` of every finished job under ``sweep_dir`` (the experiment is the
    job's ``task_name``; a later job of the same experiment wins)."""
    out: dict[str, dict] = {}
    for metrics_path in sorted(Path(sweep_dir).glob("*/metrics.json"), key=lambda p: p.parent.stat().st_mtime):
        config = metrics_path.parent / ".hydra" / "config.yaml"
        if not config.is_file():
            continue
        name = OmegaConf.load(config).get("task_name")
        out[str(name)] = json.loads(metrics_path.read_text())
    return out


def _cell(value: object, column: Column) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "-"
    return format(value * column.scale, column.spec)


def _metric(metrics: Mapping, column: Column, paper: bool) -> object:
    section = metrics.get(column.task) or {}
    return section.get(f"{PAPER}{column.key}" if paper else column.key)


def assemble(table: Table, runs: Mapping[str, Mapping]) -> str:
    """Markdown: for each experiment the paper's row, then this sweep's rows: the papers'
    protocol (``paper/`` keys: the figure to compare with the paper's) and the clean one
    (design section 7), each only where the run has its keys ('-' for a missing value)."""
    header = ["Method", *(c.header for c in table.columns)]
    rows = []
    for exp in table.experiments:
        name = table.names.get(exp, NAMES.get(exp, exp))
        paper = table.paper.get(exp, [])
        rows.append([f"{name} (paper)", *(format(v, ".3f" if c.spec == ".3f" else ".2f").rstrip("0").rstrip(".")
                                          if isinstance(v, int | float) else "-"
                                          for v, c in zip(paper, table.columns, strict=True))])
        metrics = runs.get(exp)
        if metrics is None:
            rows.append([f"{name} (this run)", *("not run" for _ in table.columns)])
            continue
        shown = [(label, paper) for label, paper in (("this run, papers' protocol", True), ("this run, clean", False))
                 if any(_metric(metrics, c, paper) is not None for c in table.columns)]
        for label, paper in shown or [("this run", False)]:
            rows.append([f"{name} ({label})", *(_cell(_metric(metrics, c, paper), c) for c in table.columns)])
    text = f"## {table.title}\n\n" + markdown_table(header, rows)
    return text + (f"\n{table.note}\n" if table.note else "")


def run_table(table_name: str, argv: Sequence[str] = (), runner: Callable[[list[str]], int] | None = None) -> str:
    """Run (or, with ``--runs``, reuse) the sweep of one table and assemble it; returns the table
    (the command with ``--dry-run``)."""
    table = TABLES[table_name]
    parser = argparse.ArgumentParser(prog=f"python -m medgrounder.tables {table_name}", description=table.title,
                                     epilog="Arguments after -- are Hydra overrides for every job.")
    parser.add_argument("--runs", type=Path, help="assemble from this existing sweep directory instead of running")
    parser.add_argument("--sweep-dir", type=Path, help="where the sweep writes (default multirun/<table>/<time>)")
    parser.add_argument("--scale", choices=("full", "tiny"), help="scale=... for every job (default: the experiments')")
    parser.add_argument("--only", nargs="+", choices=table.experiments, metavar="EXPERIMENT",
                        help=f"run only these of {', '.join(table.experiments)} (the table shows the others as not run)")
    parser.add_argument("--dry-run", action="store_true", help="print the command and exit")
    args, overrides = parser.parse_known_args(argv)
    overrides = [o for o in overrides if o != "--"]
    sweep_dir = args.runs or args.sweep_dir or Path("multirun") / table_name / time.strftime("%Y-%m-%d_%H-%M-%S")
    if args.runs is None:
        experiments = [e for e in table.experiments if not args.only or e in args.only]
        cmd = sweep_command(experiments, sweep_dir, args.scale, overrides)
        print("$ " + shlex.join(cmd), file=sys.stderr)
        if args.dry_run:
            return shlex.join(cmd)
        rc = (runner or (lambda c: subprocess.call(c)))(cmd)
    else:
        rc = 0
    text = assemble(table, collect(sweep_dir))
    Path(sweep_dir).mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(sweep_dir) / f"{table_name}.md", text)
    print(text)
    if rc:  # the table shows what finished; the exit status says the sweep did not
        print(f"the sweep exited with status {rc}", file=sys.stderr)
        raise SystemExit(rc)
    return text


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "--list") or argv[0] not in TABLES:
        listing = "\n".join(f"  {name:16s} {t.title}" for name, t in TABLES.items())
        usage = "usage: python -m medgrounder.tables TABLE [--scale tiny] [--runs DIR] [--dry-run] [-- overrides]"
        if argv and argv[0] not in ("-h", "--help", "--list"):
            raise SystemExit(f"{usage}\nunknown table {argv[0]!r}; the tables:\n{listing}")
        print(f"{usage}\n\n{listing}")
        return
    run_table(argv[0], argv[1:])


if __name__ == "__main__":
    main()
