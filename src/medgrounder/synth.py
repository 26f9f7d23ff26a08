"""Synthetic datasets in the official on-disk formats (design section 2), from the command line:

    python -m medgrounder.synth vindr --out DIR --n N --seed S [--layout kaggle]
    python -m medgrounder.synth mscxr --out DIR --n N --seed S
    python -m medgrounder.synth captions --out DIR --n N --seed S

Each subcommand calls its dataset's writer (:func:`medgrounder.data.vindr.synth.synth_vindr`,
:func:`medgrounder.data.mscxr.synth.synth_mscxr`,
:func:`medgrounder.data.captions.synth.synth_captions`) and prints its summary as JSON. The same
seed gives byte-identical files, whatever ``--workers``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

from medgrounder.data.captions.synth import synth_captions
from medgrounder.data.mscxr.synth import synth_mscxr
from medgrounder.data.vindr.layout import LAYOUTS
from medgrounder.data.vindr.synth import synth_vindr


def _cmd_vindr(args: argparse.Namespace) -> dict:
    return synth_vindr(args.out, args.n, args.seed, test_frac=args.test_frac,
                       min_side=args.min_side, max_side=args.max_side, workers=args.workers,
                       layout=args.layout)


def build_parser() -> argparse.ArgumentParser:
    """The ``synth`` parser: one subcommand per dataset, each sets ``func(args) -> summary``."""
    parser = argparse.ArgumentParser(prog="python -m medgrounder.synth",
                                     description="Write synthetic datasets in the official on-disk formats.")
    sub = parser.add_subparsers(dest="dataset", required=True)
    p = sub.add_parser("vindr", help="VinDr-CXR: PhysioNet 1.0.0 or Kaggle VinBigData layout (DICOM + csv)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--n", type=int, default=100, help="number of images (default 100)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--test-frac", type=float, default=0.2)
    p.add_argument("--min-side", type=int, default=256)
    p.add_argument("--max-side", type=int, default=512)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--layout", choices=LAYOUTS, default="physionet",
                   help="physionet (annotations/*.csv, default) or kaggle (train.csv)")
    p.set_defaults(func=_cmd_vindr)
    for name, func, default_sides in (("mscxr", synth_mscxr, (320, 512)), ("captions", synth_captions, (256, 448))):
        help_text = ("MS-CXR: the local alignment csv + MIMIC-CXR-JPG images" if name == "mscxr" else
                     "caption corpora: ROCO captions.txt, ImageCLEF 2022 caption_prediction_*.csv, "
                     "MIMIC-CXR reports + split csv + JPG images")
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--out", required=True, help="output directory")
        p.add_argument("--n", type=int, default=200, help="number of images (per corpus for captions; default 200)")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--min-side", type=int, default=default_sides[0])
        p.add_argument("--max-side", type=int, default=default_sides[1])
        p.add_argument("--workers", type=int, default=1)
        p.set_defaults(func=lambda a, f=func: f(a.out, n=a.n, seed=a.seed, min_side=a.min_side,
                                                  max_side=a.max_side, workers=a.workers))
    return parser


def main(argv: Sequence[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    summary = args.func(args)
    print(json.dumps(summary))
    return summary



def cli() -> None:
    """The console script (``medgrounder-synth``): :func:`main`, exit status 0 (the console-script
    wrapper would turn the returned summary into status 1)."""
    main()


if __name__ == "__main__":
    cli()
