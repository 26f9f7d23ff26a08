"""The two evaluation protocols (design section 7; fidelity audit A1 items 1-5 and 7): pair-by-pair
scoring, the papers' measurement cross-checked against independent implementations of LiteGPT's
reference code and the reference libraries, and the generation budgets checked at start-up."""

from __future__ import annotations

import json
import random
import re

import pytest

from medgrounder.core.labels import GLOBAL_LABELS, LOCAL_LABELS
from medgrounder.tasks import get_task
from medgrounder.tasks.base import Target
from medgrounder.tasks.identify import (
    identify_answer,
    identify_pairs,
    parse_identify,
    vindr_identify_metrics,
)
from medgrounder.tasks.refer import mscxr_refer_metrics, parse_refer, refer_answer
from medgrounder.tasks.vqa import vindr_vqa_metrics, vqa_answer

W, H = 200, 100


def identify_row(i, gt_grid, prediction, gt_boxes=True):
    """A row of the 200x100 image ``i`` whose ground truth is ``gt_grid`` (``(class, grid box)``)."""
    row = {"id": str(i), "image_id": f"img{i}", "task": "identify", "image_width": W, "image_height": H,
           "reference": identify_answer(gt_grid), "prediction": prediction}
    if gt_boxes:
        row["gt_boxes"] = [[c, b[0] * W / 100, b[1] * H / 100, b[2] * W / 100, b[3] * H / 100] for c, b in gt_grid]
    return row


# ------------------------------------------------------------------ item 1: pair by pair
@pytest.mark.parametrize("protocol", ["clean", "paper"])
def test_audit_1_truncated_answer_keeps_complete_boxes(protocol):
    gt = [("Cardiomegaly", (38, 49, 82, 63)), ("Nodule/Mass", (10, 10, 20, 20)), ("Pleural effusion", (60, 60, 90, 90))]
    whole = identify_answer(gt)
    cut = whole[: whole.index("{<60>") + len("{<60><60><9")]  # inside the third box
    unknown = whole.replace("Pleural effusion", "Pleural thing")  # an unknown class voids its own box only
    rows = [identify_row(0, gt, cut), identify_row(1, gt, unknown)]
    m = vindr_identify_metrics(rows, protocol=protocol)
    key = "paper/" if protocol == "paper" else ""
    assert m["valid_rate"] == 0.0  # neither answer is whole: a diagnostic, not the score
    for t in ("0.3", "0.4", "0.5"):
        assert m[f"{key}acc@{t}"] == pytest.approx(4 / 6)
    assert m[f"{key}num_pred"] == 4


def test_audit_1_delimited_boxes_after_one_tag_count_and_a_cut_delimiter_does_not_void_them():
    text = "<p>Nodule/Mass</p> {<1><2><3><4>}<delim>{<5><6><7><8>}<delim>{<9><9"
    assert [(p.label, p.box) for p in identify_pairs(text)] == [("Nodule/Mass", (1, 2, 3, 4)),
                                                                 ("Nodule/Mass", (5, 6, 7, 8))]
    # the pairs' spans locate the box text (a caller attaching scores to boxes reads them)
    assert [text[slice(*p.span)] for p in identify_pairs(text)] == ["{<1><2><3><4>}", "{<5><6><7><8>}"]


def test_audit_1_refer_scores_each_well_formed_box_of_an_invalid_answer():
    rows = [{"id": "0", "category": "Edema", "image_width": W, "image_height": H, "gt_boxes": [[0, 0, 100, 50]],
             "prediction": "The region is {<0><0><50><50>} I think {<0><0><9"}]
    m = mscxr_refer_metrics(rows)
    assert m["valid_rate"] == 0.0 and m["iou/Edema"] == 1.0


# ------------------------------------------------------------------ item 2: +1 IoU on the grid
REFERENCE_PAIR = re.compile(r"<p>([^<]+)</p> \{<(\d+)><(\d+)><(\d+)><(\d+)>\}")


def reference_compute_iou(a, b):
    """LiteGPT's ``computeIoU``: inclusive pixels (+1) on the 0-100 grid."""
    iw = max(0, min(a[2], b[2]) - max(a[0], b[0]) + 1)
    ih = max(0, min(a[3], b[3]) - max(a[1], b[1]) + 1)
    inter = iw * ih
    union = (a[2] - a[0] + 1) * (a[3] - a[1] + 1) + (b[2] - b[0] + 1) * (b[3] - b[1] + 1) - inter
    return inter / union


def reference_accuracy(rows, threshold):
    """LiteGPT's ``compute_accuracy``, written independently: every ``<p>X</p> {box}`` pair of the
    reference text over every pair of the prediction, a GT box hit when some predicted box of its
    class in its image has IoU > t; divided by all GT boxes."""
    hits = total = 0
    for row in rows:
        gts = [(n, tuple(map(int, b))) for n, *b in REFERENCE_PAIR.findall(row["reference"])]
        preds = [(n, tuple(map(int, b))) for n, *b in REFERENCE_PAIR.findall(row["prediction"])]
        total += len(gts)
        for name, g in gts:
            hits += any(n == name and reference_compute_iou(p, g) > threshold for n, p in preds)
    return hits / total


def random_box(rng):
    x1 = rng.randrange(0, 90)
    y1 = rng.randrange(0, 90)
    return (x1, y1, rng.randrange(x1 + 1, min(100, x1 + 30) + 1), rng.randrange(y1 + 1, min(100, y1 + 30) + 1))


def jitter(rng, box):
    x1, y1, x2, y2 = (min(100, max(0, v + rng.randint(-3, 3))) for v in box)
    return (min(x1, x2 - 1), min(y1, y2 - 1), max(x2, x1 + 1), max(y2, y1 + 1)) if x1 < 100 and y1 < 100 else box


@pytest.mark.parametrize("seed", range(5))
def test_audit_2_paper_accuracy_equals_the_reference_grid_iou_with_plus_one(seed):
    rng = random.Random(seed)
    rows = []
    for i in range(60):
        classes = rng.sample(LOCAL_LABELS, rng.randint(0, 3))  # one box per class: the reference's format
        gt = [(c, random_box(rng)) for c in classes]
        pred = [(c, jitter(rng, b)) for c, b in gt if rng.random() < 0.8]
        pred += [(rng.choice(LOCAL_LABELS), random_box(rng)) for _ in range(rng.randint(0, 2))]
        by_class = {}
        for c, b in pred:
            by_class.setdefault(c, b)  # one box per class, as the reference's regex reads them
        rows.append(identify_row(i, gt, identify_answer(list(by_class.items())), gt_boxes=False))
    m = vindr_identify_metrics(rows, protocol="paper")
    for t in (0.3, 0.4, 0.5):
        assert m[f"paper/acc@{t:g}"] == pytest.approx(reference_accuracy(rows, t), abs=1e-12)
    assert "acc@0.3" not in m  # protocol=paper: no clean keys


def test_audit_2_the_papers_iou_differs_from_the_pixel_iou_where_the_audit_says():
    """A 3x3-unit nodule shifted by 1 unit along both axes: IoU 0.286 in pixels, 0.391 with +1 on
    the grid."""
    gt = [("Nodule/Mass", (10, 10, 13, 13))]
    rows = [identify_row(0, gt, identify_answer([("Nodule/Mass", (11, 11, 14, 14))]))]
    m = vindr_identify_metrics(rows, protocol="both")
    assert m["acc@0.3"] == 0.0 and m["paper/acc@0.3"] == 1.0


# ------------------------------------------------------------------ item 3: conditional variant
def test_audit_3_conditional_accuracy_counts_the_gt_boxes_of_named_classes():
    gt = [("Cardiomegaly", (38, 49, 82, 63)), ("ILD", (10, 10, 30, 30)), ("Edema", (50, 50, 70, 70))]
    pred = identify_answer([("Cardiomegaly", (38, 49, 82, 63)), ("ILD", (60, 60, 70, 70))])
    m = vindr_identify_metrics([identify_row(0, gt, pred)], protocol="both")
    assert m["acc@0.5"] == pytest.approx(1 / 3) and m["num_gt_named"] == 2
    assert m["acc_named@0.5"] == pytest.approx(1 / 2) and m["paper/acc_named@0.5"] == pytest.approx(1 / 2)


# ------------------------------------------------------------------ item 4: images with findings
def test_audit_4_papers_identify_report_covers_only_the_test_images_with_findings():
    gt = [("Cardiomegaly", (38, 49, 82, 63))]
    hallucinated = identify_answer([("ILD", (10, 10, 30, 30))])
    rows = [identify_row(0, gt, identify_answer(gt)), identify_row(1, gt, hallucinated),
            identify_row(2, [], hallucinated), identify_row(3, [], "The chest radiograph shows no findings.")]
    m = vindr_identify_metrics(rows, protocol="both")
    assert m["num_samples"] == 4 and m["paper/num_samples"] == 2
    # samples-avg recall: 1 and 0 on the two abnormal images; the clean report also averages
    # the two normal images (recall 0 by sklearn's zero_division=0)
    assert m["paper/local/samples/recall"] == pytest.approx(0.5)
    assert m["local/samples/recall"] == pytest.approx(0.25)
    assert m["paper/local/ILD/precision"] == 0.0 and m["paper/local/ILD/support"] == 0
    assert m["local/micro/precision"] == pytest.approx(1 / 3) and m["paper/local/micro/precision"] == pytest.approx(1 / 2)
    task = get_task("identify")
    text = task.score(rows, protocol="both", meteor=None)
    assert text["paper/text/rouge1"] != text["text/rouge1"]  # over the two abnormal rows only
    only = task.score(rows[:2], protocol="paper", meteor=None)
    assert text["paper/text/rouge1"] == only["paper/text/rouge1"]


# ------------------------------------------------------------------ item 5: label mentions
def vqa_row(i, truth, prediction):
    return {"id": str(i), "task": "vqa", "reference": vqa_answer(truth), "prediction": prediction}


def test_audit_5_paper_labels_are_the_names_mentioned_anywhere():
    rows = [vqa_row(0, ["Pneumonia", "Tuberculosis"], "Global diseases of this chest radiograph are Pneumonia, possible tuberculosis."),
            vqa_row(1, [], "no pneumonia"),
            vqa_row(2, ["Lung tumor"], "Pneumonias everywhere"),
            vqa_row(3, [], "No finding.")]
    m = vindr_vqa_metrics(rows, protocol="both")
    # clean: the known items of the structured answer ("possible tuberculosis" is no item)
    assert m["global/Tuberculosis/recall"] == 0.0 and m["global/Pneumonia/recall"] == 1.0
    # paper: any whole-word mention; "no pneumonia" names Pneumonia, "Pneumonias" does not
    assert m["paper/global/Tuberculosis/recall"] == 1.0
    assert m["paper/global/Pneumonia/precision"] == pytest.approx(1 / 2)
    # binary: Finding unless "No finding" is named (rows 0-2 say finding, row 3 no finding)
    assert m["paper/finding/recall"] == 1.0 and m["paper/finding/precision"] == pytest.approx(2 / 3)
    assert m["paper/finding/accuracy"] == pytest.approx(3 / 4)
    # clean: an answer naming no label takes the wrong decision (rows 1, 2)
    assert m["finding/accuracy"] == pytest.approx(2 / 4)
    assert m["valid_rate"] == pytest.approx(1 / 4)  # only row 3 follows the grammar


# ------------------------------------------------------------------ item 7: text metrics
WORDS = ["the", "heart", "is", "enlarged", "lungs", "clear", "effusion", "Pleural", "opacity", "opacities",
         "showing", "shows", "right", "left", "lower", "lobe", "consolidation", "mild", "moderate", "no"]


def random_text(rng):
    sentences = []
    for _ in range(rng.randint(1, 3)):
        words = rng.choices(WORDS, k=rng.randint(2, 9))
        if rng.random() < 0.5:
            words.insert(rng.randrange(len(words)), f"<p>{rng.choice(LOCAL_LABELS)}</p> {{<1><2><{rng.randint(3, 99)}><9>}},")
        sentences.append(" ".join(words).capitalize() + ".")
    return " ".join(sentences)


def _sentence_split(text):
    import nltk
    from nltk.tokenize import PunktSentenceTokenizer

    try:
        return nltk.sent_tokenize(text)
    except LookupError:
        return PunktSentenceTokenizer().tokenize(text)


def test_audit_7_papers_rouge_equals_rouge_score_with_stemming_and_sentence_splitting():
    from rouge_score import rouge_scorer

    from medgrounder.metrics.text import paper_text_metrics

    rng = random.Random(7)
    preds, refs = [random_text(rng) for _ in range(40)], [random_text(rng) for _ in range(40)]
    keys = ["rouge1", "rouge2", "rougeL", "rougeLsum"]
    scorer = rouge_scorer.RougeScorer(keys, use_stemmer=True)

    def lines(t):
        return "\n".join(_sentence_split(re.sub(r"{<\d+><\d+><\d+><\d+>}", "", t).strip()))

    scores = [scorer.score(lines(r), lines(p)) for p, r in zip(preds, refs, strict=True)]
    m = paper_text_metrics(preds, refs, meteor_backend=None)
    for k in keys:
        assert m[k] == pytest.approx(sum(s[k].fmeasure for s in scores) / len(scores), abs=1e-12)
    assert m["rougeL"] != m["rougeLsum"]  # sentences split, as the paper's Table 4 shows


def test_audit_7_papers_cider_equals_pycocoevalcap_in_the_reference_argument_order():
    from pycocoevalcap.cider.cider import Cider

    from medgrounder.metrics.text import paper_text_metrics

    rng = random.Random(11)
    preds, refs = [random_text(rng) for _ in range(30)], [random_text(rng) for _ in range(30)]

    def strip(t):
        return re.sub(r"{<\d+><\d+><\d+><\d+>}", "", t)

    # LiteGPT's compute_cider(preds, labels): the predictions are passed as gts
    expected, _ = Cider().compute_score({i: [strip(p)] for i, p in enumerate(preds)},
                                        {i: [strip(r)] for i, r in enumerate(refs)})
    swapped, _ = Cider().compute_score({i: [strip(r)] for i, r in enumerate(refs)},
                                       {i: [strip(p)] for i, p in enumerate(preds)})
    m = paper_text_metrics(preds, refs, meteor_backend=None)
    assert m["cider"] == pytest.approx(expected, abs=1e-9)
    assert abs(expected - swapped) > 1e-6  # the order matters


def test_audit_7_papers_text_keeps_the_tags_and_removes_only_the_boxes():
    from medgrounder.metrics.text import remove_boxes

    assert remove_boxes("are <p>ILD</p> {<1><2><3><4>}<delim>{< 5 ><6><7><8>}.") == "are <p>ILD</p> <delim>{< 5 ><6><7><8>}."


# ------------------------------------------------------------------ reports and the score command
def test_both_protocols_reach_tables_md_and_score(tmp_path, capsys):
    from medgrounder import score
    from medgrounder.pipeline.reports import render_tables

    gt = [("Cardiomegaly", (38, 49, 82, 63))]
    rows = [identify_row(0, gt, identify_answer(gt)), identify_row(1, [], "No findings")]
    metrics = {"vindr_identify": get_task("identify").score(rows, protocol="both", meteor=None)}
    tables = render_tables(metrics)
    assert "papers' protocol (+1 grid IoU, images with findings) | 100.00 | 100.00 | 100.00 |" in tables
    assert "Local labels, papers' protocol" in tables and "| Local labels | Precision" in tables
    assert "Text validity, papers' protocol" in tables and "Text validity (boxes and <p> tags stripped)" in tables
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "m.json"
    assert score.main(["--predictions", str(path), "--task", "vindr_identify", "--protocol", "paper",
                       "--out", str(out)]) == 0
    m = json.loads(out.read_text())
    assert m["paper/acc@0.5"] == 1.0 and "acc@0.5" not in m and m["paper/num_samples"] == 1
    assert "papers' protocol" in capsys.readouterr().out


def test_refer_and_caption_name_their_papers_keys():
    rows = [{"id": "0", "category": "Edema", "image_width": W, "image_height": H, "gt_boxes": [[0, 0, 100, 50]],
             "prediction": refer_answer([(0, 0, 50, 50)]), "reference": refer_answer([(0, 0, 50, 50)])}]
    m = get_task("refer").score(rows, protocol="both")
    assert m["paper/iou/mean"] == m["iou/mean"] == 1.0
    c = get_task("caption").score(rows, protocol="paper", meteor=None)
    assert "paper/rouge1" in c and "rouge1" not in c


# ------------------------------------------------------------------ the real Llama-2 tokenizer
def test_llama_prompt_and_answer_tokens_with_the_answer_only_loss_mask(llama_tokenizer):
    import torch

    from medgrounder.core.template import IGNORE_INDEX
    from medgrounder.data.collate import PromptCollator

    tok = llama_tokenizer
    identify = get_task("identify")
    answers = [identify_answer([("Cardiomegaly", (38, 49, 82, 63)), ("Nodule/Mass", (5, 6, 7, 8))]),
               vqa_answer(["Pneumonia"])]
    items = [{"image": torch.zeros(8, 8, dtype=torch.uint8), "task": task, "answer": a, "meta": {}}
             for task, a in zip(("identify", "vqa"), answers, strict=True)]
    batch = PromptCollator(tok)(items)
    for i, (task, answer) in enumerate(zip(("identify", "vqa"), answers, strict=True)):
        suffix = tok.encode(get_task(task).prompt_suffix(), add_special_tokens=False)
        ids = tok.encode(answer, add_special_tokens=False)
        n = len(suffix) + len(ids) + 1
        assert batch["text_ids"][i, :n].tolist() == [*suffix, *ids, tok.eos_token_id]
        labels = batch["text_labels"][i]
        assert (labels[: len(suffix)] == IGNORE_INDEX).all() and (labels[n:] == IGNORE_INDEX).all()
        assert labels[len(suffix) : n].tolist() == [*ids, tok.eos_token_id]
        assert batch["prompt_ids"][i, : len(suffix)].tolist() == suffix
        assert tok.decode(labels[len(suffix) : n - 1]) == answer
    assert identify.prompt_suffix().endswith("[/INST]")


@pytest.mark.parametrize("seed", range(10))
def test_parser_reads_back_text_decoded_from_real_tokens(llama_tokenizer, seed):
    rng = random.Random(seed)
    findings = [(rng.choice(LOCAL_LABELS), random_box(rng)) for _ in range(rng.randint(1, 8))]
    answer = identify_answer(findings)
    decoded = llama_tokenizer.decode(llama_tokenizer.encode(answer, add_special_tokens=False))
    parsed = parse_identify(decoded)
    assert parsed.valid and sorted(parsed.findings) == sorted(findings)
    boxes = [random_box(rng) for _ in range(rng.randint(1, 4))]
    decoded = llama_tokenizer.decode(llama_tokenizer.encode(refer_answer(boxes), add_special_tokens=False))
    assert parse_refer(decoded).valid and sorted(b for _, b in parse_refer(decoded).findings) == sorted(boxes)
    # a generation cut at a token boundary keeps every complete pair
    ids = llama_tokenizer.encode(answer, add_special_tokens=False)
    cut = llama_tokenizer.decode(ids[: rng.randrange(1, len(ids))])
    kept = parse_identify(cut).findings
    assert all(f in findings for f in kept)


# ------------------------------------------------------------------ generation budgets
class _Targets:
    """A stand-in datamodule: every task's training targets are ``targets``."""

    def __init__(self, targets):
        self.targets_ = targets

    def for_task(self, task):
        return self

    def targets(self, split):
        return self.targets_


def _vindr_targets(n_boxes):
    rng = random.Random(0)
    return [Target(f"t{k}", W, H, tuple((rng.choice(LOCAL_LABELS), random_box(rng)) for _ in range(n_boxes)),
                   tuple(rng.sample(GLOBAL_LABELS[:-1], 2))) for k in range(50)]


def test_budget_check_refuses_a_too_small_budget_naming_the_key(llama_tokenizer, tmp_path):
    from helpers import compose_train
    from medgrounder.train import selected_stages
    from medgrounder.utils.preflight import BudgetError, check_generation_budgets

    cfg = compose_train(["+experiment=litegpt_dual", f"paths.output_dir={tmp_path}", "stages.identify.max_new_tokens=100"])
    data = _Targets(_vindr_targets(6))  # six boxes: about 159 Llama-2 tokens (audit A1 item 1)
    with pytest.raises(BudgetError) as err:
        check_generation_budgets(cfg, llama_tokenizer, data, selected_stages(cfg))
    msg = str(err.value)
    assert msg.startswith("stages.identify.max_new_tokens=100 is below the 99.5th percentile of the [identify]")
    numbers = re.search(r"budget 100, p99\.5 ([\d.]+), max (\d+), 50 answers", msg)
    assert numbers and 100 < float(numbers.group(1)) <= int(numbers.group(2))
    # the experiment's own budgets cover its answers: [identify] 800, [vqa] 48
    stats = check_generation_budgets(compose_train(["+experiment=litegpt_dual", f"paths.output_dir={tmp_path}"]),
                                     llama_tokenizer, _Targets(_vindr_targets(20)), selected_stages(cfg))
    assert stats["identify"]["budget"] == 800 and stats["vqa"]["budget"] == 48
    assert stats["identify"]["max"] > 400


def test_budget_check_names_the_fallback_key_and_pfmvg_budget_covers_six_boxes(llama_tokenizer, tmp_path):
    from helpers import compose_train
    from medgrounder.train import selected_stages
    from medgrounder.utils.preflight import BudgetError, check_generation_budgets

    cfg = compose_train([f"paths.output_dir={tmp_path}", "model.max_new_tokens=20"])  # the demo: no stage budgets
    with pytest.raises(BudgetError, match=r"model\.max_new_tokens \(stages\.identify\.max_new_tokens is unset\)=20"):
        check_generation_budgets(cfg, llama_tokenizer, _Targets(_vindr_targets(2)), selected_stages(cfg))
    pfmvg = compose_train(["+experiment=pfmvg", f"paths.output_dir={tmp_path}"])
    refer = [Target("r", W, H, tuple(("Edema", random_box(random.Random(k))) for k in range(6)), text="edema")]
    stats = check_generation_budgets(pfmvg, llama_tokenizer, _Targets(refer), selected_stages(pfmvg))
    assert set(stats) == {"refer"} and stats["refer"]["budget"] == 128 >= stats["refer"]["max"]


def test_train_refuses_the_budget_at_start_up(synth_vindr_root, tmp_path):
    from helpers import compose_train, tiny_run_overrides
    from medgrounder.train import run
    from medgrounder.utils.preflight import BudgetError

    cfg = compose_train([*tiny_run_overrides(synth_vindr_root, tmp_path), "check_generation_budgets=true",
                         "stages.identify.max_new_tokens=5"])
    with pytest.raises(BudgetError, match=r"stages\.identify\.max_new_tokens=5 .* answers"):
        run(cfg)
    assert not (tmp_path / "checkpoints" / "identify.pt").exists()


def test_protocol_and_stage_budget_are_validated(tmp_path):
    from helpers import compose_train
    from medgrounder.train import validate

    with pytest.raises(ValueError, match="protocol must be one of clean, paper, both"):
        validate(compose_train([f"paths.output_dir={tmp_path}", "protocol=papers"]))
    with pytest.raises(ValueError, match=r"stages\.vqa\.max_new_tokens must be a positive integer"):
        validate(compose_train([f"paths.output_dir={tmp_path}", "stages.vqa.max_new_tokens=0"]))
    assert compose_train([f"paths.output_dir={tmp_path}"]).protocol == "both"
