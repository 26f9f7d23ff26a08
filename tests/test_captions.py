"""Synthetic caption corpora in their layouts, the three readers, the weighted mixture and the
caption DataModule."""

from __future__ import annotations

import gzip
import re
import shutil
from collections import Counter

import numpy as np
import pytest
import torch

from medgrounder.data.captions.datamodule import CaptionDataModule, mixture
from medgrounder.data.captions.sources import (
    ImageCLEF2022Captions,
    MimicReports,
    RocoCaptions,
    report_sections,
)
from medgrounder.data.captions.synth import clef_caption, mimic_report, roco_caption, synth_captions
from medgrounder.data.synthetic import location_words, plan_chests
from medgrounder.tasks.caption import CAPTION_INSTRUCTIONS


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    root = tmp_path_factory.mktemp("captions") / "corpora"
    synth_captions(root, n=30, seed=4, min_side=64, max_side=96)
    return root


def sources(root, **weights):
    return {"roco": RocoCaptions(str(root / "roco"), weight=weights.get("roco", 1.0)),
            "clef2022": ImageCLEF2022Captions(str(root / "imageclef2022"), weight=weights.get("clef2022", 1.0)),
            "mimic": MimicReports(str(root / "mimic-cxr"), weight=weights.get("mimic", 1.0))}


def test_layouts_are_the_official_ones(corpora):
    for split in ("train", "validation", "test"):
        assert (corpora / "roco" / "data" / split / "radiology" / "captions.txt").is_file()
    line = (corpora / "roco" / "data" / "train" / "radiology" / "captions.txt").read_text().splitlines()[0]
    assert re.fullmatch(r"ROCO_\d{5}\t .+", line)
    header = (corpora / "imageclef2022" / "caption_prediction_train.csv").read_text().splitlines()[0]
    assert header == "ID\tcaption"
    assert (corpora / "mimic-cxr" / "mimic-cxr-2.0.0-split.csv").read_text().startswith(
        "dicom_id,study_id,subject_id,split\n")
    reports = list((corpora / "mimic-cxr" / "files").rglob("s*.txt"))
    assert len(reports) == 30
    for report in reports:
        assert (report.with_suffix("") / "").is_dir()  # the study's image folder beside its report


def test_captions_describe_what_is_drawn():
    for plan in plan_chests(np.random.default_rng(1), 30, 64, 96, (0.3, 0.4, 0.3)):
        texts = [roco_caption(plan), clef_caption(plan), mimic_report(plan)]
        if not plan.findings:
            assert "no acute" in texts[0].lower() and "normal" in texts[1].lower()
            assert "No acute cardiopulmonary process." in texts[2]
        for category, boxes in plan.findings:
            where = location_words(boxes, plan.width, plan.height)
            for text in texts:
                if category != "Cardiomegaly":
                    assert where in text.lower(), (where, text)


def test_roco_reads_the_radiology_subset_only(corpora):
    records = RocoCaptions(str(corpora / "roco")).records("train")
    other = RocoCaptions(str(corpora / "roco"), subset="non-radiology").records("train")
    assert records and other and not {r.id for r in records} & {r.id for r in other}
    assert all(r.caption.startswith("Chest X-ray") for r in records)
    assert all(r.caption == "Clinical photograph of the skin." for r in other)
    assert all(r.image.endswith(f"/radiology/images/{r.id}.jpg") for r in records)


def test_roco_line_without_tab_is_named(tmp_path):
    folder = tmp_path / "data" / "test" / "radiology"
    folder.mkdir(parents=True)
    (folder / "captions.txt").write_text("ROCO_00001\t fine\nROCO_00002 no tab here\n")
    with pytest.raises(ValueError, match=r"captions.txt:2: expected 'ID<TAB>caption'"):
        RocoCaptions(str(tmp_path)).records("test")


def test_clef_test_is_valid_and_val_a_seeded_part_of_train(corpora):
    src = ImageCLEF2022Captions(str(corpora / "imageclef2022"), val_fraction=0.25, seed=0)
    train, val, test = (src.records(s) for s in ("train", "val", "test"))
    assert all("_valid_" in r.id for r in test) and test
    assert len(val) == round(0.25 * (len(train) + len(val))) and not {r.id for r in train} & {r.id for r in val}
    assert [r.id for r in val] == [r.id for r in ImageCLEF2022Captions(str(corpora / "imageclef2022"),
                                                                       val_fraction=0.25, seed=0).records("val")]


def test_clef_wrong_header_is_named(tmp_path):
    (tmp_path / "caption_prediction_valid.csv").write_text("id,caption\nx,y\n")
    with pytest.raises(ValueError, match=r"caption_prediction_valid.csv: missing column\(s\) ID"):
        ImageCLEF2022Captions(str(tmp_path)).records("test")


def test_report_sections():
    text = ("FINAL REPORT\n EXAMINATION:  CHEST\n INDICATION: cough\n FINDINGS:\n There is a small\n effusion.\n"
            " IMPRESSION:\n\n Small effusion.\n")
    s = report_sections(text)
    assert s["findings"] == "There is a small effusion." and s["impression"] == "Small effusion."
    assert s["indication"] == "cough"
    src = MimicReports("unused", sections=["impression"])
    assert src.caption(text) == "Small effusion." and src.caption("FINDINGS: x") is None


def test_mimic_reads_split_csv_reports_and_images(corpora, tmp_path):
    src = MimicReports(str(corpora / "mimic-cxr"))
    records = {s: src.records(s) for s in ("train", "val", "test")}
    assert sum(map(len, records.values())) == 30 and all(records.values())
    r = records["train"][0]
    assert re.search(r"files/p\d{2}/p\d{8}/s\d{8}/[0-9a-f-]+\.jpg$", r.image)
    report = re.sub(r"/[^/]+\.jpg$", ".txt", r.image)
    with open(report) as f:
        sections = report_sections(f.read())
    assert r.caption == f"{sections['findings']} {sections['impression']}"
    # as PhysioNet ships it: gzipped
    copy = tmp_path / "mimic"
    shutil.copytree(corpora / "mimic-cxr", copy)
    plain = copy / "mimic-cxr-2.0.0-split.csv"
    with gzip.open(str(plain) + ".gz", "wt") as f:
        f.write(plain.read_text())
    plain.unlink()
    assert [x.id for x in MimicReports(str(copy)).records("test")] == [x.id for x in records["test"]]


def test_mixture_follows_weight_times_size_and_is_deterministic():
    passes = mixture([100, 300, 0], [2.0, 1.0, 5.0], samples_per_pass=5000, seed=0)
    keys = passes(0)
    share = Counter(s for s, _, _ in keys)
    assert share[2] == 0 and abs(share[0] / 5000 - 0.4) < 0.03  # 2 x 100 vs 1 x 300
    first_source0 = [i for s, i, _ in keys if s == 0][:100]
    assert sorted(first_source0) == list(range(100))  # every item before any repeats
    assert passes(0) == keys
    assert passes(1) != keys and {k for _, _, k in passes(1)} == {1}  # the next pass
    with pytest.raises(ValueError, match="no caption source"):
        mixture([0, 10], [1.0, 0.0], 10, 0)


@pytest.fixture(scope="module")
def datamodule(corpora):
    from medgrounder.models.tokenizer import load_tokenizer

    dm = CaptionDataModule(sources(corpora, clef2022=3.0), tokenizer=load_tokenizer(), image_size=64, batch_size=6,
                           eval_batch_size=8, crop={"scale": [0.5, 1.0]}, eval_limit=5, seed=0)
    dm.setup()
    return dm


def test_training_batches_mix_the_corpora_with_pool_instructions(datamodule):
    loader = datamodule.train_dataloader()
    metas = [m for batch in loader for m in batch["meta"]]
    assert {m["source"] for m in metas} == {"roco", "clef2022", "mimic"}
    assert {m["prompt"].split("[caption] ")[1].removesuffix(" [/INST]") for m in metas} <= set(CAPTION_INSTRUCTIONS)
    assert len({m["prompt"] for m in metas}) > 2
    batch = next(iter(datamodule.train_dataloader()))
    assert batch["images"].shape == (6, 3, 64, 64) and batch["text_labels"].ne(-100).any()
    again = next(iter(datamodule.train_dataloader()))
    assert torch.equal(batch["images"], again["images"]) and batch["meta"] == again["meta"]


def test_eval_uses_whole_images_first_instruction_and_limit(datamodule):
    ds = datamodule.dataset("test")
    assert len(ds) == sum(min(5, len(s.records("test"))) for s in datamodule.sources.values())
    batch = next(iter(datamodule.test_dataloader()))
    for meta in batch["meta"]:
        assert meta["prompt"].endswith(f"[caption] {CAPTION_INSTRUCTIONS[0]} [/INST]")
        assert meta["reference"] and meta["image_width"] >= 64
