"""``[identify]``: localization of VinDr-CXR's 22 local findings with boxes (LiteGPT stage 1);
``[grounding]`` is the same task under MiniGPT-v2's identifier (LiteGPT table 6).

The answer lists classes in label order, the boxes of one class left to right (then top to
bottom) joined with ``<delim>``: ``Local diseases of this chest radiograph are <p>Aortic
enlargement</p> {<53><28><65><36>}, <p>Cardiomegaly</p> {<38><49><82><63>}.``; an image
without findings answers :data:`NO_LOCAL_FINDINGS`.

Scored with LiteGPT's Accuracy@t (:func:`~medgrounder.metrics.localization.localization_accuracy`)
and the 22-local-label report, beside a class-prior mean-box baseline; rows with scored boxes
also as a detector (VinBigData mAP@0.4, FROC: :func:`vindr_detection_metrics`).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache

from medgrounder.core.automaton import END, Automaton, Option, Pick, Skip, box_nodes
from medgrounder.core.boxes import from_grid
from medgrounder.core.grammar import BOX_DELIM, BOX_RE, PHRASE_RE, format_box
from medgrounder.core.labels import (
    KAGGLE_CLASS_ID,
    KAGGLE_CLASSES,
    KAGGLE_NO_FINDING_ID,
    LOCAL_INDEX,
    LOCAL_LABELS,
    NO_FINDING,
)
from medgrounder.metrics.classification import multilabel_report
from medgrounder.metrics.detection_export import coco_files, kaggle_csv
from medgrounder.metrics.localization import DEFAULT_THRESHOLDS, localization_accuracy
from medgrounder.metrics.tables import classification_table, localization_table
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
    text_section,
)
from medgrounder.tasks.detection import (
    CONSTANT,
    DETECTION,
    ap_section,
    boxes_of,
    detection_table,
    froc_columns,
    froc_keys,
    has_boxes,
    per_class_table,
    settings,
)
from medgrounder.tasks.parse import (
    GROUP_RE,
    Pair,
    Parsed,
    grid_box,
    grounded_pairs,
    mentioned,
    norm,
    prefix_re,
)

LOCAL_PREFIX = "Local diseases of this chest radiograph are "
NO_LOCAL_FINDINGS = "The chest radiograph shows no findings."
# LiteGPT section 4.4, stage 1.
INSTRUCTION = (
    "Please describe the critical findings along with their localized bounding boxes in the "
    "radiological image of a chest as much detail as possible. If there are no findings, "
    "state that the chest radiograph shows no findings."
)


def identify_answer(findings: Iterable[tuple[str, Sequence[int]]]) -> str:
    """``[(class, grid_box), ...]`` -> the ``[identify]`` answer."""
    by_class: dict[str, list[Sequence[int]]] = {}
    for name, box in findings:
        by_class.setdefault(name, []).append(box)
    if not by_class:
        return NO_LOCAL_FINDINGS
    parts = []
    for name in sorted(by_class, key=lambda n: LOCAL_INDEX[n]):
        boxes = BOX_DELIM.join(format_box(b) for b in sorted_boxes(by_class[name]))
        parts.append(f"<p>{name}</p> {boxes}")
    return LOCAL_PREFIX + ", ".join(parts) + "."


# ------------------------------------------------------------------------------ parser
_LOCAL_PREFIX_RE = prefix_re(LOCAL_PREFIX)
_LOCAL_NAMES = {norm(n): n for n in LOCAL_LABELS}
#: groups separated by commas / semicolons / colons / periods / whitespace / "and" (or nothing)
_SEP = r"(?:[\s,;:.]|\band\b)*"
_BODY_RE = re.compile(f"{_SEP}(?:{GROUP_RE.pattern}{_SEP})+", re.IGNORECASE)
_NO_FINDINGS_RES = [
    re.compile(p)
    for p in (
        r"none",
        r"(?:(?:the|this) )?(?:chest )?(?:radiograph|x-ray|xray|image|study)"
        r"(?: (?:shows|has|demonstrates|reveals|with))? no (?:\w+ )?"
        r"(?:findings?|abnormalit(?:y|ies)|diseases?)",
        r"no (?:(?:local|significant|acute|abnormal|critical|visible) )?"
        r"(?:findings?|abnormalit(?:y|ies)|diseases?)(?: (?:found|detected|seen|present))?",
    )
]


def _is_no_findings(text: str) -> bool:
    m = _LOCAL_PREFIX_RE.match(text)
    body = " ".join(text[m.end() if m else 0 :].lower().split()).strip(" .!")
    return any(r.fullmatch(body) for r in _NO_FINDINGS_RES)


def identify_pairs(text: object) -> list[Pair]:
    """The well-formed ``(local class, grid box)`` pairs of an answer
    (:func:`~medgrounder.tasks.parse.grounded_pairs` over the 22 local labels): what both
    evaluation protocols score, and what a caller attaching scores to boxes starts from."""
    return grounded_pairs(text, _LOCAL_NAMES)


def parse_identify(text: object) -> Parsed:
    """Parse an ``[identify]`` answer into its ``(local class, grid box)`` pairs.

    ``findings``: :func:`identify_pairs`, whatever the rest of the text is. Class names match the
    22 local labels case- and whitespace-insensitively; a class may repeat (its boxes add up).

    ``valid``: the whole answer follows the grammar: optional :data:`LOCAL_PREFIX`, then groups
    ``<p>Class</p> box (<delim> box)*`` of known classes with well-formed boxes
    (:func:`~medgrounder.tasks.parse.well_formed_box`), separated by commas / whitespace / "and",
    then an optional period; or a "no findings" sentence (e.g. :data:`NO_LOCAL_FINDINGS`), valid
    with no findings. An unknown class, a phrase with no box, an orphan box, a dangling
    ``<delim>``, a malformed box or any other text (truncation, chatter) makes it invalid.
    """
    if not isinstance(text, str) or not text.strip():
        return Parsed(False)
    if not BOX_RE.search(text) and not PHRASE_RE.search(text) and _is_no_findings(text):
        return Parsed(True)
    findings = [(p.label, p.box) for p in identify_pairs(text)]
    body = _strip_prefix(text)
    valid = _BODY_RE.fullmatch(body) is not None
    if valid:  # the grammar holds; every name known and every box well formed
        groups = list(GROUP_RE.finditer(body))
        valid = all(norm(g.group(1)) in _LOCAL_NAMES for g in groups) and \
            sum(1 for g in groups for _ in BOX_RE.finditer(body, g.start(), g.end())) == len(findings)
    return Parsed(valid, findings, {c for c, _ in findings})


def reference_findings(text: object) -> Parsed:
    """An ``[identify]`` reference (an answer the task wrote): its pairs read leniently
    (:func:`~medgrounder.tasks.parse.grid_box`), valid as :func:`parse_identify` says except for
    box geometry."""
    parsed = parse_identify(text)
    pairs = [(p.label, p.box) for p in grounded_pairs(text, _LOCAL_NAMES, read_box=grid_box)]
    valid = parsed.valid or (bool(pairs) and _BODY_RE.fullmatch(_strip_prefix(text)) is not None)
    return Parsed(valid, pairs, {c for c, _ in pairs})


def _strip_prefix(text: str) -> str:
    m = _LOCAL_PREFIX_RE.match(text)
    return text[m.end() if m else 0 :]


@lru_cache(maxsize=16)
def identify_grammar(labels: Sequence[str] = LOCAL_LABELS) -> Automaton:
    """The ``[identify]`` answers :func:`identify_answer` writes over ``labels`` (local labels):
    the no-findings sentence, or the prefix and groups ``<p>label</p> box (<delim>box)*`` joined
    by ``, `` with labels in label order, each once, then ``.``. The no-findings answer ends on the
    node ``no_finding``."""
    known = sorted(set(labels), key=lambda n: LOCAL_INDEX[n])
    if not known:
        raise ValueError("an [identify] grammar needs at least one local label")
    return Automaton({
        "start": Skip(" ", "first"),
        "first": Pick((Option(NO_LOCAL_FINDINGS, "no_finding"), Option(LOCAL_PREFIX + "<p>", "label"))),
        "no_finding": Pick(accept=True),
        "label": Pick(tuple(Option(f"{n}</p> ", "box", label=LOCAL_INDEX[n]) for n in known)),
        **box_nodes("box", "after"),
        "after": Pick((Option(BOX_DELIM, "box"), Option(", <p>", "label", needs_label=True), Option(".", END))),
    }, "start")


# ------------------------------------------------------------------------------ metrics
def gt_findings(row: Mapping) -> list[tuple[str, tuple[float, ...]]]:
    """Ground-truth ``(class, pixel box)`` of an identify row: ``gt_boxes`` (``[class, x1, y1,
    x2, y2]`` in pixels) when present, else the parsed ``reference`` mapped from the grid."""
    if row.get("gt_boxes") is not None:
        return [(str(b[0]), tuple(float(v) for v in b[1:5])) for b in row["gt_boxes"]]
    ref = reference_findings(row["reference"])
    if not ref.valid:
        raise ValueError(f"row {row.get('id')!r}: unparseable reference {row['reference']!r}")
    w, h = row["image_width"], row["image_height"]
    return [(c, from_grid(g, w, h)) for c, g in ref.findings]


def with_findings(rows: Sequence[Mapping]) -> list[Mapping]:
    """The rows whose image has at least one local finding: the test images LiteGPT's
    ``[identify]`` numbers cover (its stage 1 trains on them; audit A1 item 4)."""
    return [r for r in rows if gt_findings(r)]


def _identify_scores(rows: Sequence[Mapping], plus_one: bool, thresholds: Sequence[float], paper: bool) -> dict:
    samples, y_true, y_pred, n_valid = [], [], [], 0
    for row in rows:
        gt = gt_findings(row)
        parsed = parse_identify(row.get("prediction"))
        n_valid += parsed.valid
        # the clean protocol reads the classes off the pairs, the papers' off any mention
        named = mentioned(row.get("prediction"), _LOCAL_NAMES) if paper else parsed.labels
        samples.append({"width": row["image_width"], "height": row["image_height"], "gt": gt,
                        "pred": parsed.findings, "named": named})
        y_true.append({c for c, _ in gt})
        y_pred.append(named)
    out = {"num_samples": len(samples), "valid_rate": n_valid / len(samples) if samples else 0.0}
    out.update(localization_accuracy(samples, thresholds, plus_one=plus_one))
    out.update({f"local/{k}": v for k, v in multilabel_report(y_true, y_pred, LOCAL_LABELS).items()})
    return out


def vindr_identify_metrics(
    rows: Sequence[Mapping],
    plus_one: bool = False,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    protocol: str = "clean",
) -> dict:
    """``[identify]`` metrics, pair by pair (every well-formed pair of :func:`identify_pairs`
    counts, valid answer or not).

    Clean protocol, over every test row: ``valid_rate`` (fraction of predictions that follow the
    grammar: a diagnostic), :func:`localization_accuracy` keys (``acc@t``, ``acc_strict@t``,
    ``acc_named@t``, ``num_gt``, ``num_pred``, ``num_gt_named``; pixel IoU unless ``plus_one``),
    ``num_samples`` and the 22-local-label :func:`multilabel_report` under ``local/``, an image's
    labels being the classes of its pairs (GT classes vs predicted classes).

    Papers' protocol (``paper/`` keys; audit A1 items 2-5): the same keys over the rows whose
    image has local findings (:func:`with_findings`), Accuracy@t with the +1 IoU on the 0-100
    grid, and the predicted labels (of ``local/`` and ``acc_named@t``) every local label named
    anywhere in the answer (:func:`~medgrounder.tasks.parse.mentioned`).
    """
    clean, paper = protocol_parts(protocol)
    out: dict = {}
    if clean:
        out.update(_identify_scores(rows, plus_one, thresholds, paper=False))
    if paper:
        out.update(prefixed(PAPER, _identify_scores(with_findings(rows), True, thresholds, paper=True)))
    if not clean:  # the diagnostics of every row stay unprefixed
        n = len(rows)
        out.update(num_samples=n, valid_rate=sum(parse_identify(r.get("prediction")).valid for r in rows) / n if n else 0.0)
    return out


def mean_box_baseline(
    train_findings: Iterable[tuple[str, Sequence[int]]],
    rows: Sequence[Mapping],
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    plus_one: bool = False,
) -> dict:
    """Class-prior localization baseline reported beside the model.

    For each test row, predict one box per ground-truth class: the mean grid box of that class
    over ``train_findings`` (``(class, grid box)`` pairs; :func:`class_prior_boxes`), or the
    mean of all training boxes for a class not seen in training. The classes are given for
    free, so this isolates "where does this finding usually sit". Returns
    :func:`localization_accuracy` of those predictions against :func:`gt_findings`.
    """
    means, fallback = class_prior_boxes(train_findings)
    samples = []
    for row in rows:
        gt = gt_findings(row)
        pred = [(c, means.get(c, fallback)) for c in sorted({c for c, _ in gt})]
        samples.append(
            {"width": row["image_width"], "height": row["image_height"], "gt": gt, "pred": pred}
        )
    return localization_accuracy(samples, thresholds, plus_one=plus_one)


#: the box of the "No finding" class in VinBigData's metric (ground truth and prediction alike)
NO_FINDING_BOX = (0.0, 0.0, 1.0, 1.0)
DETECTION_IOU = 0.4


def vindr_detection_boxes(rows: Sequence[Mapping], constant: bool = False) -> tuple[list, list]:
    """``(gts, preds)`` of the rows as VinBigData scores them, image key = the row's position.

    Ground truth: :func:`gt_findings`, or ``("No finding", (0, 0, 1, 1))`` for an image without
    local findings. Predictions: the row's ``prediction_boxes`` (generation order), then its
    "No finding" box ``(0, 0, 1, 1)``: scored ``no_finding_score`` when the row has one; else
    (``null`` / absent, or every row with ``constant``) score 1.0, and only when the image
    predicted no box (the usual scoreless submission ``14 1 0 0 1 1``). ``constant`` sets every
    box's score to 1.0, so rank = generation order.
    """
    gts, preds = [], []
    for i, row in enumerate(rows):
        gts += [(i, c, b) for c, b in gt_findings(row)] or [(i, NO_FINDING, NO_FINDING_BOX)]
        boxes = boxes_of(row, constant)
        preds += [(i, c, b, s) for c, b, s in boxes]
        nf = None if constant else row.get("no_finding_score")
        if nf is not None:
            preds.append((i, NO_FINDING, NO_FINDING_BOX, float(nf)))
        elif not boxes:
            preds.append((i, NO_FINDING, NO_FINDING_BOX, 1.0))
    return gts, preds


def vindr_detection_metrics(rows: Sequence[Mapping], iou_thr: float = DETECTION_IOU) -> dict:
    """The rows' scored boxes as a detector (design section 7; ``{}`` when no row carries
    ``prediction_boxes``), keys under ``detection/``:

    - ``map@0.4``: VinBigData's metric: PASCAL VOC 2010 all-point AP at IoU > 0.4 per class
      (:func:`~medgrounder.metrics.detection.class_aps`), averaged over the classes with ground
      truth among the local labels and "No finding" (:func:`vindr_detection_boxes`; its AP ranks
      the images by their no-finding probability); ``ap@0.4/<class>`` the AP of each class with
      ground truth (a class only predicted has no AP and no key).
    - ``froc/sens@<r>`` (r = 0.125 ... 8) and ``froc/mean``: the lesion FROC over the local
      findings only (:func:`~medgrounder.metrics.detection.froc`; hit: same class, IoU > 0.4 with
      an unmatched GT box), false positives per image over all rows.
    - ``constant/...``: the same with every score 1.0 (generation order, "No finding" predicted
      only by images without a box): what the confidence adds. ``num_images``, ``num_gt`` and
      ``num_pred`` count the rows, GT lesions and predicted boxes (without "No finding").
    """
    if not has_boxes(rows):
        return {}
    out: dict = {"num_images": len(rows)}
    for prefix, constant in (("", False), (CONSTANT, True)):
        gts, preds = vindr_detection_boxes(rows, constant)
        m = ap_section(gts, preds, (iou_thr,))
        local_gts = [g for g in gts if g[1] != NO_FINDING]
        local_preds = [p for p in preds if p[1] != NO_FINDING]
        m.update(froc_keys(local_gts, local_preds, len(rows), iou_thr))
        out.update(prefixed(prefix, m))
        if not constant:
            out.update(num_gt=len(local_gts), num_pred=len(local_preds))
    return prefixed(DETECTION, out)


def vindr_export(rows: Sequence[Mapping], kind: str) -> dict[str, object]:
    """``coco``: COCO results of :func:`vindr_detection_boxes`' predictions, the matching COCO
    ground truth (categories: the 22 local labels, then other predicted labels sorted, then "No
    finding"; images: the rows, ids 1..N in file order) and the settings. ``kaggle``: a
    VinBigData submission (Kaggle class ids of :data:`KAGGLE_CLASSES`, "No finding" 14, one line
    per row's ``image_id``), dropping labels outside Kaggle's 14 (counted in the settings)."""
    if not has_boxes(rows):
        raise ValueError("no row carries prediction_boxes: nothing to export")
    gts, preds = vindr_detection_boxes(rows)
    rule = {"metric": "VinBigData mAP@0.4 (PASCAL VOC 2010 all-point AP at IoU > 0.4, mean over the classes "
                      "with ground truth; 'No finding' a class with the box 0 0 1 1)",
            "iou_threshold": DETECTION_IOU, "iou_rule": ">",
            "no_finding": "box 0 0 1 1: ground truth of an image without local findings; predicted for every image "
                          "with its no_finding_score, else with score 1 when the image predicted no box"}
    ids = [{"row": i, "id": r.get("id"), "image_id": r.get("image_id")} for i, r in enumerate(rows)]
    if kind == "coco":
        seen = {c for _, c, *_ in preds} | {c for _, c, _ in gts}
        cats = [*LOCAL_LABELS, *sorted(seen - {*LOCAL_LABELS, NO_FINDING}), NO_FINDING]
        images = [{"key": i, "width": r["image_width"], "height": r["image_height"],
                   "file_name": str(r.get("image_id", r.get("id", i)))} for i, r in enumerate(rows)]
        gt, results = coco_files(images, cats, gts, preds)
        info = settings(rows, **rule, categories={i: c for i, c in enumerate(cats, start=1)},
                        images=[{"coco_image_id": d["row"] + 1, **d} for d in ids],
                        num_predictions=len(results), num_gt_boxes=len(gt["annotations"]),
                        cocoeval="COCOeval(gt, gt.loadRes(results), 'bbox') with params.iouThrs = [0.4]: "
                                 "mean of precision[0, :, k, 0, -1] over categories k with ground truth")
        return {"": results, "gt": gt, "settings": info}
    if kind == "kaggle":
        names = [str(r.get("image_id", "")) for r in rows]
        counts = Counter(names)
        dup = next((n for n in names if counts[n] > 1 or not n), None)
        if dup is not None:
            raise ValueError(f"a Kaggle submission needs one row per image_id: {dup!r} is repeated or empty")
        class_ids = {**KAGGLE_CLASS_ID, NO_FINDING: KAGGLE_NO_FINDING_ID}
        text, dropped = kaggle_csv(dict(enumerate(names)), preds, class_ids)
        empty = sum(1 for line in text.splitlines()[1:] if line.endswith(","))
        info = settings(rows, **rule, class_ids={**{str(i): c for i, c in enumerate(KAGGLE_CLASSES)},
                                                 str(KAGGLE_NO_FINDING_ID): NO_FINDING},
                        images=ids, dropped_labels=dict(sorted(dropped.items())),
                        num_dropped=sum(dropped.values()), images_without_prediction=empty,
                        note="Kaggle scores its 14 classes + No finding: labels outside them are dropped, so "
                             "this file's mAP can differ from detection/map@0.4 (over the local labels with GT)")
        return {"": text, "settings": info}
    raise ValueError(f"vindr_identify has no {kind!r} export (it has: coco, kaggle)")


# ------------------------------------------------------------------------------ the task
class Identify(Task):
    name = "identify"
    metric_key = "vindr_identify"
    instructions = (INSTRUCTION,)
    localizes = True
    row_fields = ("prediction", "reference", "image_width", "image_height")
    sweep_columns = ("valid_rate", "acc@0.3", "acc@0.5", "text/rouge1")
    summary_keys = ("num_samples", "valid_rate", "num_gt", "num_pred", "detection/map@0.4", "detection/froc/mean",
                    "detection/constant/map@0.4", "detection/constant/froc/mean")
    draws_figure = True
    no_answer_node = "no_finding"
    exports = ("coco", "kaggle")

    def __init__(self, identifier: str | None = None):
        super().__init__(identifier)
        self.name = self.identifier  # [grounding] is its own stage task name

    def answer(self, target: Target) -> str:
        return identify_answer(target.findings)

    def answer_corpus(self) -> list[str]:
        return [LOCAL_PREFIX, NO_LOCAL_FINDINGS,
                *(f"<p>{name}</p> {{<12><34><56><78>}}<delim>{{<90><100><0><5>}}," for name in LOCAL_LABELS)]

    def parse(self, text: object) -> Parsed:
        return parse_identify(text)

    def vocabulary(self, train) -> tuple[str, ...]:
        """The local labels of the training boxes (every local label when there are none)."""
        seen = {c for t in train for c, _ in t.findings if c in LOCAL_INDEX}
        return tuple(sorted(seen, key=LOCAL_INDEX.__getitem__)) or LOCAL_LABELS

    def answer_grammar(self, labels=None) -> Automaton:
        return identify_grammar(LOCAL_LABELS if labels is None else tuple(labels))

    def pairs(self, text: object) -> list[Pair]:
        return identify_pairs(text)

    def score(self, rows, *, protocol="clean", plus_one=False, keep_tags=False, meteor="nltk", text=True) -> dict:
        """:func:`vindr_identify_metrics`; with ``text``, LiteGPT tables 4-5's text metrics (the
        papers' over the rows with findings, as its numbers)."""
        metrics = vindr_identify_metrics(rows, plus_one=plus_one, protocol=protocol)
        # scored boxes (any protocol: neither paper has them): detector metrics
        metrics.update(vindr_detection_metrics(rows))
        if text:
            clean, paper = protocol_parts(protocol)
            if clean:
                metrics.update(text_section(rows, keep_tags, meteor))
            if paper:
                metrics.update(prefixed(PAPER, text_section(with_findings(rows), meteor=meteor, paper=True)))
        return metrics

    def baseline(self, train, rows, protocol="clean") -> dict:
        """:func:`mean_box_baseline`'s Accuracy@t (``baseline/acc@t``; ``baseline/paper/acc@t``:
        +1 grid IoU over the rows with findings)."""
        clean, paper = protocol_parts(protocol)
        train_findings = [f for t in train for f in t.findings]
        out = {}
        if clean:
            m = mean_box_baseline(train_findings, rows)
            out.update({f"{BASELINE}{k}": v for k, v in m.items() if k.startswith("acc@")})
        if paper:
            m = mean_box_baseline(train_findings, with_findings(rows), plus_one=True)
            out.update({f"{BASELINE}{PAPER}{k}": v for k, v in m.items() if k.startswith("acc@")})
        return out

    def report(self, metrics, label=None, detailed=False) -> str:
        """The Accuracy@t table (rows: the model and the baseline in each protocol present), the
        valid rate, and the local-label report of each protocol."""
        name = self._label(label)
        base = {k.removeprefix(BASELINE): v for k, v in metrics.items() if k.startswith(BASELINE)}
        paper, base_paper = paper_view(metrics), paper_view(base)
        rows = {}
        if paper:
            rows[f"{name}, papers' protocol (+1 grid IoU, images with findings)"] = paper
            if base_paper:
                rows["mean-box baseline (oracle class), papers' protocol"] = base_paper
        if any(k.startswith("acc@") for k in metrics):  # the clean protocol's rows keep their names
            rows[name] = metrics
            if any(k.startswith("acc@") for k in base):
                rows["mean-box baseline (oracle class)"] = base
        parts = [localization_table(rows, strict=detailed, named=detailed), "",
                 f"Valid outputs [{self.identifier}]: {metrics['valid_rate']:.4f}", ""]
        if paper:
            parts += [classification_table(paper, LOCAL_LABELS, "local/",
                                           "Local labels, papers' protocol (names mentioned; images with findings)"), ""]
        if "local/micro/f1" in metrics:
            parts += [classification_table(metrics, LOCAL_LABELS, "local/", "Local labels"), ""]
        table = detection_table(metrics, [("map@0.4", "mAP@0.4"), *froc_columns()], name)
        if table:
            parts += ["Detection over scored boxes: VinBigData mAP@0.4 (VOC 2010 all-point, IoU > 0.4, with "
                      "'No finding'); FROC over the local findings (IoU > 0.4)", "", table]
            if detailed:
                parts += [per_class_table(metrics, DETECTION_IOU, "Class")]
        return "\n".join(parts).rstrip("\n")

    def headline(self, metrics) -> dict:
        return {**super().headline(metrics), **{k: round(metrics[k], 4) for k in
                                                 ("detection/map@0.4", "detection/froc/mean") if k in metrics}}

    def export(self, rows, kind) -> dict[str, object]:
        """:func:`vindr_export`."""
        return vindr_export(rows, kind)

    def gt_boxes(self, row):
        return [(b[0], b[1:]) for b in row["gt_boxes"]]
