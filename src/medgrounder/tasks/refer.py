"""``[refer]``: phrase grounding on MS-CXR (PFMVG stage 2). The prompt combines a question from
a pool with the phrase ("[refer] [Instruction] [label text]", PFMVG section 2.2); the answer is
every box of the phrase, sorted (left to right, then top to bottom), joined with ``<delim>``:
``{<x1><y1><x2><y2>}<delim>{...}``.

Scored with PFMVG's IoU and Dice of box unions per category (tables 1-4), beside a
category-prior mean-box baseline; rows with scored boxes also by AP per category
(:func:`mscxr_detection_metrics`)."""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache

import numpy as np

from medgrounder.core.automaton import Automaton, Option, Pick, Skip, box_nodes
from medgrounder.core.boxes import from_grid
from medgrounder.core.grammar import BOX_DELIM, BOX_RE, DELIM_RE, format_box
from medgrounder.core.labels import MSCXR_CATEGORIES
from medgrounder.metrics.detection_export import coco_files
from medgrounder.metrics.overlap import box_iou_dice, pixel_boxes
from medgrounder.metrics.tables import refer_table
from medgrounder.tasks.base import (
    BASELINE,
    PAPER,
    Target,
    Task,
    class_prior_boxes,
    paper_view,
    prefixed,
    protocol_parts,
    sorted_boxes,
)
from medgrounder.tasks.detection import (
    CONSTANT,
    DETECTION,
    ap_section,
    boxes_of,
    detection_table,
    has_boxes,
    per_class_table,
    settings,
)
from medgrounder.tasks.parse import Pair, Parsed, well_formed_box

#: ``{}`` is replaced by the label text (the phrase to ground).
REFER_INSTRUCTIONS: tuple[str, ...] = (
    "Give the bounding box of the region described by: {}",
    "Where is the following finding in this image? {}",
    "Locate the area that this phrase refers to: {}",
    "Please output the location of {}",
    "Which region of the chest radiograph shows {}?",
    "Find the bounding box for this description: {}",
)

#: MiniGPT-v2's own [refer] phrasings (its RefCOCO / Visual Genome pools; its evaluation asks the
#: first): the zero-shot row asks MiniGPT-v2 as it was trained.
MINIGPTV2_REFER_INSTRUCTIONS: tuple[str, ...] = (
    "give me the location of {}",
    "{}",
    "where is {} ?",
    "from this image, tell me the location of {}",
    "the location of {} is",
    "could you tell me the location for {} ?",
    "where can I locate the {} ?",
)
#: ``data.instructions`` of MS-CXR: the pool its ``[refer]`` prompts are drawn from
REFER_PHRASINGS: dict[str, tuple[str, ...]] = {"default": REFER_INSTRUCTIONS, "minigptv2": MINIGPTV2_REFER_INSTRUCTIONS}


def refer_instruction(label_text: str, choice: int = 0, phrasing: str = "default") -> str:
    """Phrasing ``choice`` of the ``phrasing`` pool (:data:`REFER_PHRASINGS`) with the label
    text filled in (surrounding whitespace and a final period of the text dropped)."""
    text = " ".join(str(label_text).split()).rstrip(".")
    if not text:
        raise ValueError("a [refer] instruction needs a non-empty label text")
    if phrasing not in REFER_PHRASINGS:
        raise ValueError(f"data.instructions must be one of {sorted(REFER_PHRASINGS)}, got {phrasing!r}")
    return REFER_PHRASINGS[phrasing][choice].format(text)


def refer_answer(grid_boxes: Iterable[Sequence[int]]) -> str:
    """Grid boxes -> the ``[refer]`` answer."""
    boxes = sorted_boxes(list(grid_boxes))
    if not boxes:
        raise ValueError("a [refer] answer needs at least one box")
    return BOX_DELIM.join(format_box(b) for b in boxes)


@lru_cache(maxsize=16)
def refer_grammar() -> Automaton:
    """The ``[refer]`` answers: one or more boxes joined by ``<delim>``."""
    return Automaton({"start": Skip(" ", "box"), **box_nodes("box", "after"),
                      "after": Pick((Option(BOX_DELIM, "box"),), accept=True)}, "start")


def refer_pairs(text: object) -> list[Pair]:
    """Every well-formed box of a ``[refer]`` answer, label ``""``, in text order (what scoring
    counts, wherever the box sits)."""
    if not isinstance(text, str):
        return []
    return [Pair("", b, m.span()) for m in BOX_RE.finditer(text) if (b := well_formed_box(m)) is not None]


def parse_refer(text: object) -> Parsed:
    """Parse a ``[refer]`` answer: boxes joined by ``<delim>``, ``findings = [("", box), ...]``
    (every well-formed box, :func:`refer_pairs`).

    Valid when there is at least one box, every box is well formed and there is nothing else but
    whitespace, delimiters and punctuation (``.,;``); the boxes are returned either way.
    """
    if not isinstance(text, str):
        return Parsed(False)
    findings = [("", p.box) for p in refer_pairs(text)]
    rest = DELIM_RE.sub(" ", BOX_RE.sub(" ", text))
    valid = (bool(findings) and len(findings) == len(BOX_RE.findall(text))
             and re.fullmatch(r"[\s.,;]*", rest) is not None)
    return Parsed(valid, findings, set())


def mscxr_sample_scores(row: Mapping) -> tuple[bool, float, float]:
    """``(valid, iou, dice)`` of one ``[refer]`` row: the prediction's well-formed grid boxes
    (several may be joined by ``<delim>``; valid answer or not) mapped to pixels, against
    ``gt_boxes`` (pixels); an output without a box scores 0."""
    parsed = parse_refer(row.get("prediction"))
    if not parsed.findings:
        return parsed.valid, 0.0, 0.0
    w, h = row["image_width"], row["image_height"]
    pred = [from_grid(g, w, h) for _, g in parsed.findings]
    return (parsed.valid, *box_iou_dice(pred, pixel_boxes(row["gt_boxes"])))


def mscxr_refer_metrics(rows: Sequence[Mapping], categories: Sequence[str] = MSCXR_CATEGORIES) -> dict:
    """PFMVG Tables 1-4 (design section 7).

    Per sample, IoU and Dice between the union of the predicted boxes and the union of the
    ground-truth boxes, as masks in original pixels (:func:`box_iou_dice`); an invalid output
    scores its well-formed boxes (none: 0) and still counts. ``iou/<category>`` and ``dice/<category>`` average the samples of
    a category; ``iou/mean`` / ``dice/mean`` average the categories that have samples (the 8 of
    MS-CXR in the paper); ``iou/weighted`` / ``dice/weighted`` average all samples (PFMVG's wIoU
    and wDice: categories weighted by their sample counts). Also ``num/<category>``,
    ``num_samples``, ``valid_rate`` and ``valid_rate/<category>``. Categories not in
    ``categories`` get their own keys and take part in the averages.
    """
    by_cat: dict[str, list[tuple[bool, float, float]]] = defaultdict(list)
    for row in rows:
        by_cat[str(row["category"])].append(mscxr_sample_scores(row))
    names = [c for c in categories if c in by_cat] + sorted(set(by_cat) - set(categories))
    every = [s for c in names for s in by_cat[c]]
    out: dict = {"num_samples": len(every),
                 "valid_rate": float(np.mean([s[0] for s in every])) if every else 0.0}
    for c in names:
        v = np.asarray(by_cat[c], dtype=float)
        out[f"num/{c}"] = len(v)
        out[f"valid_rate/{c}"] = float(v[:, 0].mean())
        out[f"iou/{c}"] = float(v[:, 1].mean())
        out[f"dice/{c}"] = float(v[:, 2].mean())
    for k in ("iou", "dice"):
        out[f"{k}/mean"] = float(np.mean([out[f"{k}/{c}"] for c in names])) if names else 0.0
        j = 1 if k == "iou" else 2
        out[f"{k}/weighted"] = float(np.mean([s[j] for s in every])) if every else 0.0
    return out


def mscxr_mean_box_baseline(train_boxes: Iterable[tuple[str, Sequence[int]]], rows: Sequence[Mapping],
                            categories: Sequence[str] = MSCXR_CATEGORIES) -> dict:
    """Category-prior grounding baseline reported beside the model (PFMVG's task).

    Every test row is answered with one box, the mean 0-100 grid box of its category over
    ``train_boxes`` (``(category, grid box)`` pairs; :func:`class_prior_boxes`), or of all
    training boxes for a category not seen in training; scored by :func:`mscxr_refer_metrics`.
    The phrase's category is given for free, so this measures "where does this finding usually
    sit"."""
    means, fallback = class_prior_boxes(train_boxes)
    answers = {c: refer_answer([b]) for c, b in means.items()}
    baseline_rows = [{**row, "prediction": answers.get(str(row["category"]), refer_answer([fallback]))} for row in rows]
    return mscxr_refer_metrics(baseline_rows, categories)


#: the IoU thresholds of ``[refer]``'s AP (strict ``>``)
DETECTION_IOUS = (0.4, 0.5)


def mscxr_detection_boxes(rows: Sequence[Mapping], constant: bool = False) -> tuple[list, list]:
    """``(gts, preds)`` of ``[refer]`` rows, each row its own image (one image + phrase sample,
    key = its position) and class = its ``category``: ground truth its ``gt_boxes``, predictions
    its ``prediction_boxes`` (their ``label`` is not read), every score 1.0 with ``constant``."""
    gts, preds = [], []
    for i, row in enumerate(rows):
        cat = str(row["category"])
        gts += [(i, cat, b) for b in pixel_boxes(row["gt_boxes"])]
        preds += [(i, cat, b, s) for _, b, s in boxes_of(row, constant)]
    return gts, preds


def mscxr_detection_metrics(rows: Sequence[Mapping], thresholds: Sequence[float] = DETECTION_IOUS) -> dict:
    """AP per MS-CXR category of the rows' scored boxes (``{}`` when no row carries
    ``prediction_boxes``), keys under ``detection/``: ``ap@<t>/<category>`` the PASCAL VOC 2010
    all-point AP at IoU > t (t = 0.4, 0.5) over the samples of a category
    (:func:`mscxr_detection_boxes`; boxes ranked by score over all samples, a box matching an
    unmatched GT box of its own sample), ``map@<t>`` their mean over the categories with
    samples; ``constant/...`` the same with every score 1.0 (generation order); ``num_gt``,
    ``num_pred``."""
    if not has_boxes(rows):
        return {}
    gts, preds = mscxr_detection_boxes(rows)
    out = {**ap_section(gts, preds, thresholds), "num_gt": len(gts), "num_pred": len(preds)}
    out.update(prefixed(CONSTANT, ap_section(*mscxr_detection_boxes(rows, constant=True), thresholds)))
    return prefixed(DETECTION, out)


def mscxr_export(rows: Sequence[Mapping], kind: str) -> dict[str, object]:
    """``coco``: COCO results and ground truth of :func:`mscxr_detection_boxes` (images: the rows,
    ids 1..N in file order; categories: MS-CXR's 8, then any other sorted) and the settings."""
    if kind != "coco":
        raise ValueError(f"mscxr_refer has no {kind!r} export (it has: coco)")
    if not has_boxes(rows):
        raise ValueError("no row carries prediction_boxes: nothing to export")
    gts, preds = mscxr_detection_boxes(rows)
    cats = [*MSCXR_CATEGORIES, *sorted({c for _, c, _ in gts} - set(MSCXR_CATEGORIES))]
    images = [{"key": i, "width": r["image_width"], "height": r["image_height"],
               "file_name": str(r.get("image_id", r.get("id", i)))} for i, r in enumerate(rows)]
    gt, results = coco_files(images, cats, gts, preds)
    info = settings(rows, metric="AP per category (PASCAL VOC 2010 all-point), each row its own image",
                    iou_thresholds=list(DETECTION_IOUS), iou_rule=">",
                    categories={i: c for i, c in enumerate(cats, start=1)},
                    images=[{"coco_image_id": i + 1, "row": i, "id": r.get("id"), "image_id": r.get("image_id")}
                            for i, r in enumerate(rows)],
                    num_predictions=len(results), num_gt_boxes=len(gt["annotations"]))
    return {"": results, "gt": gt, "settings": info}


class Refer(Task):
    name = "refer"
    metric_key = "mscxr_refer"
    instructions = REFER_INSTRUCTIONS
    takes_phrase = True
    localizes = True
    row_fields = ("prediction", "category", "gt_boxes", "image_width", "image_height")
    summary_keys = ("num_samples", "valid_rate", "detection/map@0.4", "detection/map@0.5",
                    "detection/constant/map@0.4", "detection/constant/map@0.5")
    draws_figure = True
    exports = ("coco",)

    def instruction(self, target: Target | None = None, rng: np.random.Generator | None = None,
                    phrasing: str = "default") -> str:
        if target is None or not target.text:
            raise ValueError("a [refer] instruction needs the phrase to ground (target.text)")
        pool = REFER_PHRASINGS.get(phrasing, REFER_INSTRUCTIONS)
        choice = 0 if rng is None else int(rng.integers(len(pool)))
        return refer_instruction(target.text, choice, phrasing)

    def answer(self, target: Target) -> str:
        return refer_answer(box for _, box in target.findings)

    def prompt_suffix(self, instruction: str | None = None) -> str:
        if instruction is None:
            raise ValueError("a [refer] prompt needs its instruction (with the phrase)")
        return super().prompt_suffix(instruction)

    def prompt(self, instruction: str | None = None) -> str:
        self.prompt_suffix(instruction)  # the same refusal without a phrase
        return super().prompt(instruction)

    def prompt_corpus(self) -> list[str]:
        # no prompt without a phrase: every phrasing of the pool with an example phrase
        return [self.prompt_suffix(refer_instruction("right lower pleural effusion", k))
                for k in range(len(self.instructions))]

    def answer_corpus(self) -> list[str]:
        return [" ".join(MSCXR_CATEGORIES).lower()]

    def parse(self, text: object) -> Parsed:
        return parse_refer(text)

    def answer_grammar(self, labels=None) -> Automaton:
        return refer_grammar()

    def pairs(self, text: object) -> list[Pair]:
        return refer_pairs(text)

    def score(self, rows, *, protocol="clean", plus_one=False, keep_tags=False, meteor="nltk", text=True) -> dict:
        """:func:`mscxr_refer_metrics`. PFMVG publishes no scoring code: its protocol's keys
        (``paper/...``) are the same definitions, named apart so a table never mixes them up
        (the other options do not apply)."""
        clean, paper = protocol_parts(protocol)
        m = mscxr_refer_metrics(rows)
        out = dict(m) if clean else {k: m[k] for k in ("num_samples", "valid_rate")}
        if paper:
            out.update(prefixed(PAPER, {k: v for k, v in m.items() if k.startswith(("iou/", "dice/"))}))
        out.update(mscxr_detection_metrics(rows))  # scored boxes (any protocol: PFMVG has none)
        return out

    def baseline(self, train, rows, protocol="clean") -> dict:
        """:func:`mscxr_mean_box_baseline`'s IoU and Dice (``baseline/iou/...``, ``baseline/dice/...``;
        ``baseline/paper/...`` the same under the papers' protocol)."""
        clean, paper = protocol_parts(protocol)
        m = mscxr_mean_box_baseline((f for t in train for f in t.findings), rows)
        kept = {k: v for k, v in m.items() if k.startswith(("iou/", "dice/"))}
        return {**(prefixed(BASELINE, kept) if clean else {}), **(prefixed(BASELINE + PAPER, kept) if paper else {})}

    def report(self, metrics, label=None, detailed=False) -> str:
        name = self._label(label)
        base = {k.removeprefix(BASELINE): v for k, v in metrics.items() if k.startswith(BASELINE)}
        clean_base = {k: v for k, v in base.items() if not k.startswith(PAPER)}
        rows = {}
        if "iou/mean" in metrics:
            rows[name] = metrics
        elif paper_view(metrics):  # PFMVG's protocol is the clean one (same definitions)
            rows[f"{name}, papers' protocol"] = paper_view(metrics)
        if clean_base:
            rows["mean-box baseline (category prior)"] = clean_base
        elif paper_view(base):
            rows["mean-box baseline (category prior)"] = paper_view(base)
        parts = []
        for metric, title in (("iou", "IoU"), ("dice", "Dice")):
            parts += [f"MS-CXR [{self.identifier}] {title} (PFMVG tables 1-4)", "", refer_table(rows, metric), ""]
        counts = [f"{split} {metrics[f'num_samples/{split}']}" for split in ("train", "val", "test")
                  if f"num_samples/{split}" in metrics]
        if counts:  # the paper gives 1,153 samples for MS-CXR: how many each split has here
            parts.append(f"Samples: {', '.join(counts)}")
        parts.append(f"Valid outputs [{self.identifier}]: {metrics['valid_rate']:.4f}")
        table = detection_table(metrics, [(f"map@{t:g}", f"mAP@{t:g}") for t in DETECTION_IOUS], name)
        if table:
            parts += ["", "Detection over scored boxes: AP per category (VOC 2010 all-point, IoU > t)", "", table]
            if detailed:
                parts += [per_class_table(metrics, t, "Category") for t in DETECTION_IOUS]
        return "\n".join(parts).rstrip("\n")

    def export(self, rows, kind) -> dict[str, object]:
        """:func:`mscxr_export`."""
        return mscxr_export(rows, kind)

    def headline(self, metrics) -> dict:
        return {k: round(v, 4) for k, v in metrics.items()
                if k.split("/")[-1] in ("mean", "weighted") or k == "valid_rate"}

    def gt_boxes(self, row):
        return [(row["category"], b[-4:]) for b in row["gt_boxes"]]

    def figure_title(self, row) -> str:
        return str(row["label_text"])[:40]
