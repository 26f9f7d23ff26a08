"""Synthetic MS-CXR, the csv reader, the patient split, crops that move boxes with the pixels,
the [refer] instruction pool and the MS-CXR DataModule."""

from __future__ import annotations

import csv
import hashlib
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from medgrounder.core.boxes import from_grid
from medgrounder.core.labels import MSCXR_CATEGORIES
from medgrounder.core.template import prompt_suffix
from medgrounder.data.mscxr.datamodule import MSCXRDataModule, ReferDataset
from medgrounder.data.mscxr.layout import MSCXR_CSV, MSCXR_HEADER, patient_of
from medgrounder.data.mscxr.records import load_mscxr_csv, official_split, split_by_patient
from medgrounder.data.mscxr.synth import synth_mscxr
from medgrounder.data.synthetic import location_words
from medgrounder.data.views import (
    CropSettings,
    View,
    boxes_into_view,
    render_view,
    sample_crop,
    view_grid,
    view_grid_to_pixels,
)
from medgrounder.tasks.refer import (
    REFER_INSTRUCTIONS,
    mscxr_mean_box_baseline,
    mscxr_refer_metrics,
    parse_refer,
    refer_answer,
    refer_instruction,
)

PATH_RE = re.compile(r"^files/p(\d{2})/p(\d{8})/s(\d{8})/([0-9a-f]{8}(?:-[0-9a-f]{8}){4})\.jpg$")


@pytest.fixture(scope="module")
def mscxr_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("mscxr") / "ms-cxr"
    synth_mscxr(root, n=60, seed=5, min_side=96, max_side=160)
    return root


def _rows(root: Path) -> list[dict]:
    with open(root / MSCXR_CSV, newline="") as f:
        return list(csv.DictReader(f))


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode() + p.read_bytes())
    return h.hexdigest()


# ------------------------------------------------------------------ synthetic MS-CXR


def test_synth_mscxr_writes_the_csv_schema_and_mimic_jpg_layout(mscxr_root):
    from PIL import Image

    with open(mscxr_root / MSCXR_CSV, newline="") as f:
        assert tuple(next(csv.reader(f))) == MSCXR_HEADER
    rows = _rows(mscxr_root)
    assert {r["category_name"] for r in rows} <= set(MSCXR_CATEGORIES)
    assert {r["split"] for r in rows} == {"train", "val", "test"}
    for r in rows:
        m = PATH_RE.match(r["path"])
        assert m, r["path"]
        assert m.group(1) == m.group(2)[:2] and m.group(4) == r["dicom_id"]
        with Image.open(mscxr_root / r["path"]) as im:
            assert im.format == "JPEG" and im.mode == "L"
            assert im.size == (int(r["image_width"]), int(r["image_height"]))
        x, y, w, h = (int(r[k]) for k in "xywh")
        assert x >= 0 and y >= 0 and w > 0 and h > 0
        assert x + w <= int(r["image_width"]) and y + h <= int(r["image_height"])
    # several boxes for one phrase, several phrases for one image
    per_sample = {}
    for r in rows:
        per_sample.setdefault((r["dicom_id"], r["label_text"]), []).append(r)
    assert max(map(len, per_sample.values())) >= 2
    assert len({d for d, _ in per_sample}) < len(per_sample)


def test_synth_mscxr_phrases_name_what_is_drawn_and_where(mscxr_root):
    samples = load_mscxr_csv(mscxr_root / MSCXR_CSV)
    for s in samples:
        words = s.label_text.lower()
        if s.category != "Cardiomegaly":
            assert location_words(s.boxes, s.width, s.height).split()[0] in words
        keyword = {"Pleural Effusion": ("effusion", "fluid"), "Lung Opacity": ("opacity",),
                   "Cardiomegaly": ("cardiomegaly", "cardiac")}.get(s.category, (s.category.lower(),))
        assert any(k in words for k in keyword), (s.category, words)


def test_synth_mscxr_findings_are_visible_patterns(mscxr_root):
    """Each box holds its category's pattern: the pixels inside differ from the same region of
    a picture of the same image without findings, and nothing changes outside them."""
    from medgrounder.data.synthetic import ChestPlan, chest_pixels, plan_chests

    plan = plan_chests(np.random.default_rng(0), 1, 200, 200, (0.0, 1.0))[0]
    with_finding = chest_pixels(plan, seed=1, salt="t").astype(float)
    without = chest_pixels(ChestPlan(plan.index, plan.width, plan.height, ()), seed=1, salt="t").astype(float)
    ((_, boxes),) = plan.findings
    diff = np.abs(with_finding - without)
    for box in boxes:
        x1, y1, x2, y2 = (int(v) for v in box)
        assert diff[y1:y2, x1:x2].mean() > 15
        diff[y1:y2, x1:x2] = 0
    assert diff.max() == 0  # nothing drawn outside the boxes


def test_synth_mscxr_is_deterministic_whatever_the_workers(tmp_path):
    synth_mscxr(tmp_path / "a", n=12, seed=2, min_side=64, max_side=96)
    synth_mscxr(tmp_path / "b", n=12, seed=2, min_side=64, max_side=96, workers=2)
    synth_mscxr(tmp_path / "c", n=12, seed=3, min_side=64, max_side=96)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b") != _digest(tmp_path / "c")


def test_synth_command_line_mscxr_and_captions(tmp_path, capsys):
    from medgrounder.synth import main

    summary = main(["mscxr", "--out", str(tmp_path / "m"), "--n", "6", "--min-side", "64", "--max-side", "80"])
    assert summary["images"] == 6 and (tmp_path / "m" / MSCXR_CSV).is_file()
    summary = main(["captions", "--out", str(tmp_path / "c"), "--n", "8", "--min-side", "64", "--max-side", "80"])
    assert summary["images_per_corpus"] == 8 and (tmp_path / "c" / "roco").is_dir()
    assert '"dataset": "captions"' in capsys.readouterr().out


# ------------------------------------------------------------------ csv reader and splits


def test_rows_sharing_image_and_phrase_are_one_sample(mscxr_root):
    rows = _rows(mscxr_root)
    samples = load_mscxr_csv(mscxr_root / MSCXR_CSV)
    assert sum(len(s.boxes) for s in samples) == len(rows)
    assert len(samples) == len({(r["dicom_id"], r["label_text"]) for r in rows})
    multi = next(s for s in samples if len(s.boxes) > 1)
    for (x1, y1, x2, y2), line in zip(multi.boxes, sorted(multi.lines), strict=False):
        assert x2 > x1 and y2 > y1 and line >= 2
    assert len({s.sample_id for s in samples}) == len(samples)


def _write_csv(path: Path, rows: list[dict], header=MSCXR_HEADER) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(header), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


GOOD = {"dicom_id": "d1", "category_name": "Edema", "label_text": "edema", "x": "10", "y": "10", "w": "20",
        "h": "20", "image_width": "100", "image_height": "80", "path": "files/p10/p10000001/s50000001/d1.jpg",
        "split": "train"}


@pytest.mark.parametrize(("change", "message"), [
    ({"x": "ten"}, r":3: column 'x' must be a number, got 'ten'"),
    ({"w": "0"}, r":3: box size 0.0 x 20.0"),
    ({"path": "images/d1.jpg"}, r":3: path 'images/d1.jpg' is not a MIMIC-CXR-JPG path"),
    ({"label_text": "  "}, r":3: empty 'label_text'"),
    ({"x": "500"}, r":3: box x=500.0.*outside the 100 x 80 image"),
    ({"image_width": "120"}, r":3: rows of image d1 and phrase 'edema' disagree.*line 2"),
])
def test_bad_csv_rows_name_file_line_and_key(tmp_path, change, message):
    path = _write_csv(tmp_path / "ms.csv", [GOOD, {**GOOD, **change}])
    with pytest.raises(ValueError, match=re.escape(str(path)) + message):
        load_mscxr_csv(path)


def test_missing_column_is_named(tmp_path):
    path = _write_csv(tmp_path / "ms.csv", [GOOD], header=[c for c in MSCXR_HEADER if c != "h"])
    with pytest.raises(ValueError, match=r"missing column\(s\) h"):
        load_mscxr_csv(path)


def test_boxes_past_the_edge_are_clipped(tmp_path):
    path = _write_csv(tmp_path / "ms.csv", [{**GOOD, "x": "-5", "w": "200"}])
    (sample,) = load_mscxr_csv(path)
    assert sample.boxes == [(0.0, 10.0, 100.0, 30.0)] and sample.subject_id == "10000001"


def test_patient_comes_from_the_path():
    assert patient_of("files/p10/p10000032/s50414267/02aa804e.jpg") == ("10000032", "50414267")
    with pytest.raises(ValueError, match="not a MIMIC-CXR-JPG path"):
        patient_of("p10000032/02aa804e.jpg")


def test_random_split_keeps_every_patient_in_one_split(mscxr_root):
    samples = load_mscxr_csv(mscxr_root / MSCXR_CSV)
    splits = split_by_patient(samples, (7, 1, 2), seed=0)
    patients = {k: {s.subject_id for s in v} for k, v in splits.items()}
    assert not patients["train"] & patients["val"] and not patients["train"] & patients["test"]
    assert not patients["val"] & patients["test"]
    assert sum(map(len, splits.values())) == len(samples)
    n = len({s.subject_id for s in samples})
    assert abs(len(patients["train"]) - 0.7 * n) <= 1 and abs(len(patients["test"]) - 0.2 * n) <= 1
    again = split_by_patient(samples, (7, 1, 2), seed=0)
    assert {k: [s.sample_id for s in v] for k, v in again.items()} == {k: [s.sample_id for s in v] for k, v in splits.items()}
    other = split_by_patient(samples, (7, 1, 2), seed=1)
    assert [s.sample_id for s in other["test"]] != [s.sample_id for s in splits["test"]]


def test_official_split_reads_the_column(mscxr_root, tmp_path):
    samples = load_mscxr_csv(mscxr_root / MSCXR_CSV)
    splits = official_split(samples)
    rows = _rows(mscxr_root)
    assert {s.dicom_id for s in splits["test"]} == {r["dicom_id"] for r in rows if r["split"] == "test"}
    bad = load_mscxr_csv(_write_csv(tmp_path / "ms.csv", [{**GOOD, "split": "holdout"}]))
    with pytest.raises(ValueError, match="split 'holdout'"):
        official_split(bad)


# ------------------------------------------------------------------ crops move boxes exactly

box_strategy = st.tuples(st.floats(0, 190), st.floats(0, 140), st.floats(1, 120), st.floats(1, 100)).map(
    lambda t: (t[0], t[1], min(t[0] + t[2], 200.0), min(t[1] + t[3], 150.0)))


@settings(max_examples=300, deadline=None)
@given(boxes=st.lists(box_strategy, min_size=1, max_size=4), seed=st.integers(0, 2**31 - 1),
       min_visible=st.sampled_from([0.0, 0.3, 0.9]))
def test_crop_moves_boxes_exactly(boxes, seed, min_visible):
    """Kept boxes are the boxes' intersections with the crop, shifted by its corner; dropped
    boxes keep less than min_visible of their area (or nothing); the grid round trip maps back
    to original pixels within half a grid step."""
    width, height = 200.0, 150.0
    view = sample_crop(np.random.default_rng(seed), width, height, CropSettings(scale=(0.2, 1.0), min_visible=min_visible))
    assert 0 <= view.x1 < view.x2 <= width and 0 <= view.y1 < view.y2 <= height
    for box, out in zip(boxes, boxes_into_view(boxes, view, min_visible), strict=True):
        ix1, iy1 = max(box[0], view.x1), max(box[1], view.y1)
        ix2, iy2 = min(box[2], view.x2), min(box[3], view.y2)
        visible = max(ix2 - ix1, 0) * max(iy2 - iy1, 0)
        area = (box[2] - box[0]) * (box[3] - box[1])
        if out is None:
            assert visible <= 0 or visible < min_visible * area
            continue
        assert visible > 0 and visible >= min_visible * area
        assert out == pytest.approx((ix1 - view.x1, iy1 - view.y1, ix2 - view.x1, iy2 - view.y1), abs=1e-9)
        assert 0 <= out[0] < out[2] <= view.width + 1e-9 and 0 <= out[1] < out[3] <= view.height + 1e-9
        back = view_grid_to_pixels(view_grid(out, view), view)
        tol = (view.width / 200 + 1e-9, view.height / 200 + 1e-9) * 2
        assert all(abs(b - i) <= t for b, i, t in zip(back, (ix1, iy1, ix2, iy2), (tol[0], tol[1], tol[0], tol[1]),
                                                         strict=True))


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_crop_moves_the_pixels_with_the_box(seed):
    """A bright rectangle drawn at a box lands where the transformed box says, in the rendered view."""
    rng = np.random.default_rng(seed)
    width, height, cache, size = 240, 180, 240, 120
    x1, y1 = rng.uniform(10, 120), rng.uniform(10, 90)
    box = (float(round(x1)), float(round(y1)), float(round(x1 + rng.uniform(40, 100))), float(round(y1 + rng.uniform(30, 80))))
    img = np.zeros((cache, cache), np.uint8)
    sx, sy = cache / width, cache / height
    img[round(box[1] * sy):round(box[3] * sy), round(box[0] * sx):round(box[2] * sx)] = 255
    view = sample_crop(rng, width, height, CropSettings(scale=(0.5, 1.0)))
    (moved,) = boxes_into_view([box], view)
    # a sliver under 2 output pixels wide is blurred below half brightness by the resize
    if moved is None or min((moved[2] - moved[0]) / view.width, (moved[3] - moved[1]) / view.height) * size < 2:
        return
    pixels = render_view(img, width, height, view, size)
    ys, xs = np.nonzero(pixels > 127)
    assert len(xs)
    expected = (moved[0] / view.width * size, moved[1] / view.height * size,
                moved[2] / view.width * size, moved[3] / view.height * size)
    found = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    assert found == pytest.approx(expected, abs=1.6)


def test_full_view_maps_the_grid_back_like_from_grid():
    view = View.full(2544, 3056)
    for grid in [(0, 0, 100, 100), (12, 34, 56, 78), (99, 1, 100, 2)]:
        assert view_grid_to_pixels(grid, view) == pytest.approx(from_grid(grid, 2544, 3056))


# ------------------------------------------------------------------ instruction pool and answers


def test_every_refer_and_caption_instruction_renders():
    from medgrounder.models.tokenizer import load_tokenizer
    from medgrounder.tasks.caption import CAPTION_INSTRUCTIONS

    tok = load_tokenizer()
    phrase = "small right apical pneumothorax"
    assert len(set(REFER_INSTRUCTIONS)) == len(REFER_INSTRUCTIONS) >= 4
    for k in range(len(REFER_INSTRUCTIONS)):
        text = prompt_suffix("refer", refer_instruction(f"  {phrase}. ", k))
        assert text.startswith("</Img> [refer] ") and text.endswith(" [/INST]") and phrase in text
        assert "{" not in text and "  " not in text
        assert tok.decode(tok.encode(text, add_special_tokens=False)) == text
    assert len(set(CAPTION_INSTRUCTIONS)) == len(CAPTION_INSTRUCTIONS) >= 4
    for instruction in CAPTION_INSTRUCTIONS:
        text = prompt_suffix("caption", instruction)
        assert text == f"</Img> [caption] {instruction} [/INST]"
        assert tok.decode(tok.encode(text, add_special_tokens=False)) == text
    with pytest.raises(ValueError, match="non-empty label text"):
        refer_instruction(" ")


def test_refer_answer_joins_sorted_boxes_and_parses_back():
    answer = refer_answer([(60, 20, 90, 50), (5, 30, 40, 70)])
    assert answer == "{<5><30><40><70>}<delim>{<60><20><90><50>}"
    parsed = parse_refer(answer)
    assert parsed.valid and [b for _, b in parsed.findings] == [(5, 30, 40, 70), (60, 20, 90, 50)]


def test_mean_box_baseline_uses_the_category_prior():
    rows = [{"category": "Edema", "image_width": 100, "image_height": 100, "gt_boxes": [[10, 10, 30, 30]],
             "prediction": "x"},
            {"category": "Cardiomegaly", "image_width": 100, "image_height": 100, "gt_boxes": [[40, 40, 80, 80]],
             "prediction": "x"}]
    train = [("Edema", (10, 10, 30, 30)), ("Edema", (10, 10, 30, 50)), ("Cardiomegaly", (40, 40, 80, 80))]
    m = mscxr_mean_box_baseline(train, rows)
    assert m["iou/Cardiomegaly"] == 1.0
    assert m["iou/Edema"] == pytest.approx(400 / 600)  # mean box (10, 10, 30, 40) vs (10, 10, 30, 30)
    assert m["iou/mean"] == pytest.approx((1 + 400 / 600) / 2)
    assert mscxr_refer_metrics(rows)["valid_rate"] == 0.0


# ------------------------------------------------------------------ the DataModule


@pytest.fixture(scope="module")
def datamodule(mscxr_root):
    from medgrounder.models.tokenizer import load_tokenizer

    dm = MSCXRDataModule(str(mscxr_root), tokenizer=load_tokenizer(), image_size=64, cache_size=96, batch_size=4,
                         eval_batch_size=8, crop={"scale": [0.3, 1.0], "min_visible": 0.3}, decode_workers=1, seed=0)
    dm.setup()
    return dm


def test_training_items_are_crops_with_an_instruction_from_the_pool(datamodule):
    ds = datamodule.dataset("train")
    assert isinstance(ds, ReferDataset)
    instructions, views = set(), set()
    for epoch in range(6):
        item = ds[(0, epoch)]
        assert item["image"].shape == (64, 64) and item["image"].dtype == torch.uint8
        parsed = parse_refer(item["answer"])
        assert parsed.valid and parsed.findings
        assert ds.samples[0].label_text in item["instruction"]
        instructions.add(item["instruction"])
        views.add(tuple(item["meta"]["view"]))
    assert len(instructions) > 1 and len(views) > 1
    again = ds[(0, 3)]
    assert again["answer"] == ds[(0, 3)]["answer"] and torch.equal(again["image"], ds[(0, 3)]["image"])


def test_a_crop_without_any_box_is_drawn_again(datamodule):
    """Tiny crops miss the boxes most of the time; every item still grounds its phrase."""
    s = datamodule.samples("train")[0]
    ds = ReferDataset([s], datamodule.image_index, datamodule.cache, 64, True,
                      CropSettings(scale=(0.02, 0.05), min_visible=0.5, max_tries=50), seed=0)
    rng = np.random.default_rng(0)
    misses = sum(all(b is None for b in boxes_into_view(s.boxes, sample_crop(rng, s.width, s.height, ds.crop), 0.5))
                 for _ in range(50))
    assert misses > 25
    for epoch in range(10):
        view, boxes = ds.view_and_boxes(s, np.random.default_rng(epoch))
        assert boxes and all(b[2] > b[0] and b[3] > b[1] for b in boxes)
        assert view.width <= s.width and view.height <= s.height


def test_test_items_view_whole_images_with_the_first_instruction(datamodule):
    batch = next(iter(datamodule.test_dataloader()))
    assert batch["images"].shape == (8, 3, 64, 64)
    for meta in batch["meta"]:
        assert meta["view"] == [0.0, 0.0, float(meta["image_width"]), float(meta["image_height"])]
        assert REFER_INSTRUCTIONS[0].format(meta["label_text"]) in meta["prompt"]
        grid = [b for _, b in parse_refer(meta["reference"]).findings]
        pixels = [from_grid(g, meta["image_width"], meta["image_height"]) for g in grid]
        for p, gt in zip(pixels, sorted(meta["gt_boxes"]), strict=True):
            assert p == pytest.approx(gt, abs=max(meta["image_width"], meta["image_height"]) / 200 + 1e-6)
        assert meta["category"] in MSCXR_CATEGORIES


def test_loaders_are_deterministic_and_train_differs_by_epoch(datamodule):
    first = [m["id"] for m in next(iter(datamodule.train_dataloader()))["meta"]]
    second = [m["id"] for m in next(iter(datamodule.train_dataloader()))["meta"]]
    assert first == second  # a new loader starts at epoch 0 again
    loader = datamodule.train_dataloader()
    epochs = [[m["id"] for b in loader for m in b["meta"]] for _ in range(2)]
    ids = {s.sample_id for s in datamodule.samples("train")}
    assert epochs[0] != epochs[1]  # a new permutation each epoch, without repeats (last partial batch dropped)
    for ids_of_epoch in epochs:
        assert len(set(ids_of_epoch)) == len(ids_of_epoch) == len(ids) // 4 * 4 and set(ids_of_epoch) <= ids


def test_missing_images_are_named(mscxr_root, tmp_path):
    dm = MSCXRDataModule(str(mscxr_root), image_root=str(tmp_path), image_size=64, decode_workers=1)
    with pytest.raises(FileNotFoundError, match=r"MS-CXR images are missing under image_root=.*files/p"):
        dm.setup()


def test_iters_per_epoch_continues_the_stream_and_targets_hold_every_box(datamodule):
    n = len(datamodule.samples("train"))
    datamodule.set_task("refer", iters_per_epoch=3)
    try:
        loader = datamodule.train_dataloader()
        epochs = [[m["id"] for b in loader for m in b["meta"]] for _ in range(2)]
    finally:
        datamodule.set_task("refer")
    order = [datamodule.samples("train")[i].sample_id for k in range(2)
             for i in np.random.default_rng([0, k]).permutation(n)]
    assert [len(e) for e in epochs] == [12, 12] and epochs[0] + epochs[1] == order[:24]
    targets = datamodule.targets("train")
    assert [t.text for t in targets] == [s.label_text for s in datamodule.samples("train")]
    assert sum(len(t.findings) for t in targets) == sum(len(s.boxes) for s in datamodule.samples("train"))
    assert datamodule.for_task("refer") is datamodule and datamodule.fixed_training_images() is None
    img, sx, _ = datamodule.picture(targets[0].image_id)
    assert img.shape == (96, 96) and sx == 96 / targets[0].width
