"""`python -m medgrounder.score` on small predictions files."""

import json

import pytest

from medgrounder import score
from medgrounder.core.labels import GLOBAL_LABELS, LOCAL_LABELS
from medgrounder.tasks.identify import identify_answer
from medgrounder.tasks.vqa import vqa_answer


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def row(i, task, reference, prediction, **extra):
    return {
        "id": str(i),
        "image_id": f"img{i}",
        "task": task,
        "prompt": "[INST] ...",
        "reference": reference,
        "prediction": prediction,
        "image_width": 200,
        "image_height": 100,
        **extra,
    }


def test_identify(tmp_path, capsys):
    gt = [("Cardiomegaly", (38, 49, 82, 63)), ("Aortic enlargement", (53, 28, 65, 36))]
    rows = [
        row(0, "vindr_identify", identify_answer(gt), identify_answer(gt)),
        row(1, "vindr_identify", identify_answer(gt[:1]), "<p>Cardiomegaly</p> {<0><0><5><5>"),
        # gt_boxes (pixels of the 200x100 image) take precedence over the reference.
        row(
            2,
            "vindr_identify",
            "",
            identify_answer([("ILD", (10, 10, 20, 20))]),
            gt_boxes=[["ILD", 20, 10, 40, 20]],
        ),
        row(3, "vindr_vqa", vqa_answer([]), vqa_answer([])),  # another task: skipped
    ]
    pred = write_jsonl(tmp_path / "predictions.jsonl", rows)
    out = tmp_path / "sub" / "metrics.json"
    assert (
        score.main(["--predictions", str(pred), "--task", "vindr_identify", "--out", str(out)]) == 0
    )
    text = out.read_text()
    m = json.loads(text)
    assert list(m) == sorted(m)
    assert m["num_samples"] == 3 and m["valid_rate"] == pytest.approx(2 / 3)
    assert m["num_gt"] == 4 and m["num_pred"] == 3
    for t in ("0.3", "0.4", "0.5"):
        assert m[f"acc@{t}"] == 0.75 and m[f"acc_strict@{t}"] == 0.75
    for name in LOCAL_LABELS:
        assert f"local/{name}/f1" in m
    assert m["local/Cardiomegaly/recall"] == 0.5 and m["local/Cardiomegaly/support"] == 2
    assert m["local/micro/support"] == 4
    stdout = capsys.readouterr().out
    assert "| Local labels | Precision | Recall | F1-score | Support |" in stdout
    assert "| model | 75.00 | 75.00 | 75.00 |" in stdout
    assert "| samples avg |" in stdout
    assert "Strict@0.5 (%)" in stdout  # score prints the one-to-one accuracy beside the paper's


def test_vqa(tmp_path, capsys):
    rows = [
        row(0, "vindr_vqa", vqa_answer(["Pneumonia", "Tuberculosis"]), vqa_answer(["Pneumonia"])),
        row(1, "vindr_vqa", vqa_answer([]), vqa_answer([])),
        row(2, "vindr_vqa", vqa_answer(["Lung tumor"]), "Global diseases are no tumor"),
        row(3, "vqa", vqa_answer(["Other disease"]), "Other diseases."),
    ]
    pred = write_jsonl(tmp_path / "predictions.jsonl", rows)
    out = tmp_path / "metrics.json"
    assert score.main(["--predictions", str(pred), "--task", "vindr_vqa", "--out", str(out)]) == 0
    m = json.loads(out.read_text())
    assert m["num_samples"] == 4 and m["valid_rate"] == 0.75
    for name in [*GLOBAL_LABELS, "micro", "macro", "weighted", "samples"]:
        for k in ("precision", "recall", "f1", "support"):
            assert f"global/{name}/{k}" in m
    assert m["global/Pneumonia/f1"] == 1.0 and m["global/Tuberculosis/recall"] == 0.0
    assert m["global/micro/precision"] == 1.0 and m["global/micro/recall"] == 0.6
    # Binary: 3 finding images (one invalid -> wrong), 1 no-finding image.
    assert m["finding/recall"] == pytest.approx(2 / 3) and m["finding/precision"] == 1.0
    assert m["no_finding/recall"] == 1.0 and m["no_finding/precision"] == 0.5
    assert m["finding/accuracy"] == 0.75
    assert "| Global labels | Precision |" in capsys.readouterr().out


def test_malformed_line_names_file_and_line(tmp_path, capsys):
    pred = tmp_path / "predictions.jsonl"
    good = json.dumps(row(0, "vindr_vqa", vqa_answer([]), vqa_answer([])))
    pred.write_text(f"{good}\n\n{good}\n{{not json\n", encoding="utf-8")
    assert score.main(["--predictions", str(pred), "--task", "vindr_vqa"]) == 1
    err = capsys.readouterr().err
    assert f"{pred}:4:" in err and "malformed" in err


def test_missing_field_names_line(tmp_path, capsys):
    pred = write_jsonl(tmp_path / "p.jsonl", [{"id": "0", "prediction": "x"}])
    assert score.main(["--predictions", str(pred), "--task", "vindr_vqa"]) == 1
    assert ":1: missing field(s) reference" in capsys.readouterr().err


def test_mscxr_refer(tmp_path, capsys):
    # 200 x 100 image: grid x = pixels / 2, grid y = pixels.
    rows = [
        row(0, "refer", "", "{<0><0><50><50>}", category="Edema", gt_boxes=[[0, 0, 100, 50]]),
        row(1, "refer", "", "{<0><0><25><50>}", category="Edema", gt_boxes=[[0, 0, 100, 50]]),
        row(2, "refer", "", "no box", category="Pneumonia", gt_boxes=[[0, 0, 10, 10]]),
        row(3, "identify", "", "{<0><0><50><50>}", category="Edema", gt_boxes=[[0, 0, 1, 1]]),
    ]
    pred = write_jsonl(tmp_path / "p.jsonl", rows)
    out = tmp_path / "m.json"
    assert score.main(["--predictions", str(pred), "--task", "mscxr_refer", "--out", str(out)]) == 0
    m = json.loads(out.read_text())
    assert m["num_samples"] == 3 and m["valid_rate"] == pytest.approx(2 / 3)
    assert m["iou/Edema"] == pytest.approx((1 + 0.5) / 2)
    assert m["dice/Edema"] == pytest.approx((1 + 2 / 3) / 2)
    assert m["iou/Pneumonia"] == 0 and m["iou/mean"] == pytest.approx(0.375)
    assert m["iou/weighted"] == pytest.approx(0.5)
    printed = capsys.readouterr()
    assert "| Pneumonia |" in printed.out and "wIoU" in printed.out and "wDice" in printed.out
    assert "skipped 1 rows" in printed.err


def test_caption_scores_every_row_and_meteor_flag(tmp_path, capsys):
    gt = [("Cardiomegaly", (38, 49, 82, 63))]
    rows = [row(0, "identify", identify_answer(gt), identify_answer(gt)),
            row(1, "vqa", vqa_answer(["Pneumonia"]), vqa_answer(["COPD"]))]
    pred = write_jsonl(tmp_path / "p.jsonl", rows)
    out = tmp_path / "m.json"
    assert score.main(["--predictions", str(pred), "--task", "caption", "--out", str(out),
                       "--meteor", "none"]) == 0
    m = json.loads(out.read_text())
    assert m["num_samples"] == 2 and m["meteor"] is None
    assert 0 < m["rouge1"] < 1 and 0 < m["bleu1"] < 1 and m["cider"] >= 0
    assert "ROUGE-1 (%)" in capsys.readouterr().out
    assert score.main(["--predictions", str(pred), "--task", "caption", "--out", str(out),
                       "--meteor", "none", "--keep-tags"]) == 0
    tagged = json.loads(out.read_text())
    assert tagged["bleu1"] > m["bleu1"]  # the matching p tags count as tokens then


def test_refer_missing_category_is_bad_input(tmp_path, capsys):
    pred = write_jsonl(tmp_path / "p.jsonl", [row(0, "refer", "", "{<0><0><1><1>}", gt_boxes=[])])
    assert score.main(["--predictions", str(pred), "--task", "mscxr_refer"]) == 1
    assert "missing field(s) category" in capsys.readouterr().err


def test_unknown_task_is_usage_error(tmp_path):
    with pytest.raises(SystemExit) as e:
        score.main(["--predictions", str(tmp_path / "p.jsonl"), "--task", "nope"])
    assert e.value.code == 2


# --------------------------------------------------------------------------------------------
# Hostile predictions files: each bad value is refused naming the file, line and field


def _identify_rows(n):
    return [row(i, "identify", identify_answer([]), identify_answer([])) for i in range(n)]


def test_duplicate_ids_are_refused_naming_both_lines(tmp_path, capsys):
    rows = _identify_rows(3)
    pred = write_jsonl(tmp_path / "p.jsonl", [*rows, rows[1]])
    assert score.main(["--predictions", str(pred), "--task", "vindr_identify"]) == 1
    assert f"{pred}:4: duplicate id '1' (first on line 2)" in capsys.readouterr().err


@pytest.mark.parametrize(("field", "value", "message"), [
    ("image_width", 0, "image_width must be a positive number, got 0"),
    ("image_width", -5, "image_width must be a positive number, got -5"),
    ("image_height", "100", "image_height must be a positive number, got '100'"),
    ("image_width", None, "image_width must be a positive number, got None"),
    ("gt_boxes", "[[0, 0, 1, 1]]", "gt_boxes must be a list of boxes, got str"),
    ("gt_boxes", [["Nodule/Mass", 1, 2]], "gt_boxes entry ['Nodule/Mass', 1, 2] is not"),
    ("gt_boxes", [[1, 2, 3, None]], "gt_boxes entry [1, 2, 3, None] is not"),
    ("prediction", 7, "prediction must be text, got int"),
])
def test_bad_values_are_refused_naming_line_and_field(tmp_path, capsys, field, value, message):
    rows = _identify_rows(2)
    rows[1][field] = value
    pred = write_jsonl(tmp_path / "p.jsonl", rows)
    for extra in ([], ["--plus-one"]):
        assert score.main(["--predictions", str(pred), "--task", "vindr_identify", *extra]) == 1
        err = capsys.readouterr().err
        assert f"{pred}:2: {message}" in err and "Traceback" not in err


def test_nan_width_is_refused(tmp_path, capsys):
    pred = tmp_path / "p.jsonl"
    good = json.dumps(_identify_rows(1)[0])
    pred.write_text(good + "\n" + good.replace('"id": "0"', '"id": "1"').replace('"image_width": 200', '"image_width": NaN') + "\n")
    assert score.main(["--predictions", str(pred), "--task", "vindr_identify"]) == 1
    assert f"{pred}:2: image_width must be a positive number, got nan" in capsys.readouterr().err


def test_out_a_directory_is_refused_before_scoring(tmp_path, capsys):
    pred = write_jsonl(tmp_path / "p.jsonl", _identify_rows(2))
    assert score.main(["--predictions", str(pred), "--task", "vindr_identify", "--out", str(tmp_path)]) == 1
    assert "is a directory" in capsys.readouterr().err


def test_refer_overlap_memory_grows_linearly_with_the_boxes():
    import tracemalloc

    from medgrounder.metrics.overlap import union_overlap

    rng = __import__("numpy").random.default_rng(0)
    xy = rng.uniform(0, 1000, (2, 600, 2))
    boxes = [[(min(a[0], b[0]), min(a[1], b[1]), max(a[0], b[0]) + 1, max(a[1], b[1]) + 1) for a, b in zip(*half, strict=True)]
             for half in (xy[:, :300], xy[:, 300:])]
    tracemalloc.start()
    area_a, area_b, inter = union_overlap(*boxes)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    # 600 boxes: a grid of cells at every edge would hold 1,200^2 cells (> 10 MB); the sweep a few
    # arrays of 600.
    assert peak < 2_000_000, peak
    assert 0 < inter <= min(area_a, area_b)
