"""Prepare datasets once, from the command line (design §6)::

    python -m medgrounder.prepare vindr --root RAW --out DIR [--size N] [--workers W]
        [--windowing dicom|litegpt] [--layout auto|physionet|kaggle]
        [--label-fusion dedup|wbf|none] [--dedup-iou T] [--dedup-mode medoid|mean]
        [--fusion-iou T] [--fusion-conf-type avg|box_and_model_avg] [--min-votes K]

``vindr`` runs :func:`medgrounder.data.vindr.prepared.prepare_vindr` (the cache format, resuming
and the report are described there) and prints the report's counts as JSON; bad input or
settings exit with status 2 and a one-line message naming the file, flag or choices and the fix,
before any image is decoded (root, layout, every split's csv files, output folder, ``--size``
in 64..4096); a bad image is reported in ``report.json`` and skipped. MS-CXR and the caption
corpora are read as published (JPGs), so they need no prepare step.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence

from medgrounder.data.vindr.dicom import WINDOWINGS
from medgrounder.data.vindr.layout import LAYOUTS
from medgrounder.data.vindr.prepared import fusion_summary, prepare_vindr
from medgrounder.data.vindr.records import DEDUP_MODES, FUSION_CONF_TYPES, LABEL_FUSIONS


def _cmd_vindr(args: argparse.Namespace) -> dict:
    report = prepare_vindr(args.root, args.out, size=args.size, workers=args.workers,
                           windowing=args.windowing, layout=args.layout,
                           dedup_iou=args.dedup_iou, dedup_mode=args.dedup_mode,
                           label_fusion=args.label_fusion, fusion_iou=args.fusion_iou,
                           fusion_conf_type=args.fusion_conf_type, min_votes=args.min_votes)
    return {k: v for k, v in report.items() if k != "splits"} | {
        "missing_files": len(report["missing_files"]), "unreadable_files": len(report["unreadable_files"]),
        "invalid_ids": len({(e["split"], e["image_id"]) for e in report["invalid_ids"]}),  # ids, not rows
        "fusion": {split: fusion_summary(r) for split, r in report["splits"].items()}}


SIZE_RANGE = (64, 4096)


def _size(text: str) -> int:
    """``--size``: a whole number of pixels in :data:`SIZE_RANGE`."""
    lo, hi = SIZE_RANGE
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of pixels") from None
    if not lo <= value <= hi:
        raise argparse.ArgumentTypeError(f"{value} is outside {lo}..{hi}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The ``prepare`` parser: one subcommand per dataset, each sets ``func(args) -> summary``."""
    parser = argparse.ArgumentParser(prog="python -m medgrounder.prepare",
                                     description="Decode and cache datasets for training.")
    sub = parser.add_subparsers(dest="dataset", required=True)
    p = sub.add_parser("vindr", help="VinDr-CXR DICOMs -> PNG cache + annotations.jsonl")
    p.add_argument("--root", required=True, help="the downloaded dataset (PhysioNet or Kaggle layout)")
    p.add_argument("--out", required=True, help="output directory (re-runs resume)")
    p.add_argument("--size", type=_size, default=448,
                   help=f"side of the square cache images, {SIZE_RANGE[0]}..{SIZE_RANGE[1]} (default 448)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes (default: all cores)")
    p.add_argument("--windowing", choices=WINDOWINGS, default="dicom",
                   help="dicom (the standard's VOI, default) or litegpt (the paper's appendix code)")
    p.add_argument("--layout", choices=("auto", *LAYOUTS), default="auto",
                   help="physionet (annotations/*.csv), kaggle (VinBigData train.csv) or auto (default: "
                        "the one --root holds)")
    p.add_argument("--label-fusion", choices=LABEL_FUSIONS, default="dedup",
                   help="how the readers' boxes become labels: dedup (LiteGPT's IoU de-duplication, "
                        "default), wbf (weighted boxes fusion, the fused score = reader agreement) or "
                        "none (every box as drawn)")
    p.add_argument("--dedup-iou", type=float, default=0.5, help="dedup: merge boxes of a class above this IoU")
    p.add_argument("--dedup-mode", choices=DEDUP_MODES, default="medoid",
                   help="dedup: medoid keeps one drawn box (the paper), mean averages them")
    p.add_argument("--fusion-iou", type=float, default=0.5, help="wbf: cluster boxes of a class above this IoU")
    p.add_argument("--fusion-conf-type", choices=FUSION_CONF_TYPES, default="avg",
                   help="wbf: ensemble_boxes' conf_type (box_and_model_avg counts distinct readers)")
    p.add_argument("--min-votes", type=int, default=None,
                   help="wbf: drop fused boxes fewer readers agree on (default: keep all)")
    p.set_defaults(func=_cmd_vindr)
    return parser


def main(argv: Sequence[str] | None = None) -> dict:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        summary = args.func(args)
    except (ValueError, OSError) as e:  # bad input or settings: the message names the file and the fix
        parser.exit(2, f"error: {e}\n")
    print(json.dumps(summary))
    return summary



def cli() -> None:
    """The console script (``medgrounder-prepare``): :func:`main`, exit status 0 (the console-script
    wrapper would turn the returned summary into status 1)."""
    main()


if __name__ == "__main__":
    cli()
