"""The paper rows train as the papers' code did (fidelity audit A2-A4; experiments/REPRODUCTION.md):
the experiment configs composed as the command line would, and the code paths they switch on,
on small synthetic data. Each test is named after the audit item it covers."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from PIL import Image

from helpers import compose_train
from medgrounder.core.labels import GLOBAL_LABELS
from medgrounder.data.views import View, render_view
from medgrounder.tasks import get_task
from medgrounder.tasks.vqa import vindr_vqa_metrics

ROOT = Path(__file__).parents[1]
LITEGPT = sorted(p.stem for p in (ROOT / "conf/experiment").glob("litegpt_*.yaml"))


def _cfg(name: str, *extra: str):
    return compose_train([f"+experiment={name}", "paths.output_dir=/tmp/unused", *extra])


@pytest.mark.parametrize("name", LITEGPT)
def test_audit_10_12_13_16_litegpt_rows_train_as_the_reference(name):
    cfg = _cfg(name)
    assert cfg.data.windowing == "litegpt"
    assert cfg.data.val_fraction == 0
    assert cfg.trainer.gradient_clip_val is None
    global_batch = cfg.data.batch_size * cfg.trainer.devices * cfg.trainer.accumulate_grad_batches
    assert global_batch == 8 and 4394 // global_batch == cfg.stages.identify.iters_per_epoch == 549
    assert compose_train(["paths.output_dir=/tmp/unused"]).trainer.gradient_clip_val == 1.0  # the demo keeps it


def test_audit_10_windowing_reaches_the_dicom_reader(synth_vindr_root):
    from medgrounder.data.vindr.datamodule import VinDrDataModule
    from medgrounder.data.vindr.dicom import load_dicom_uint8

    images = {}
    for windowing in ("litegpt", "dicom"):
        dm = VinDrDataModule(str(synth_vindr_root), image_size=32, windowing=windowing, decode_workers=1)
        dm.setup()
        images[windowing] = dm.images["train"][0].numpy()
    path = dm.records["train"][0].path
    expected = np.asarray(Image.fromarray(load_dicom_uint8(path, windowing="litegpt")).resize((32, 32), Image.BILINEAR))
    assert np.array_equal(images["litegpt"], expected)
    assert not np.array_equal(images["litegpt"], images["dicom"])


def test_audit_12_paper_rows_keep_every_training_image(synth_vindr_root, tmp_path):
    from helpers import tiny_run_overrides
    from medgrounder.data.vindr.datamodule import VinDrDataModule
    from medgrounder.train import run

    dm = VinDrDataModule(str(synth_vindr_root), image_size=32, val_fraction=0, decode_workers=1)
    dm.setup()
    assert dm.samples("val") == [] and len(dm.samples("train", "vqa")) == len(dm.records["train"])
    assert len(dm.samples("train", "identify")) == sum(bool(r.findings) for r in dm.records["train"])
    with pytest.raises(ValueError, match=r"data\.val_fraction"):
        VinDrDataModule(str(synth_vindr_root), val_fraction=1.0)
    # Training with no validation images: epochs end, nothing is validated, nothing crashes.
    out = tmp_path / "run"
    cfg = compose_train([*tiny_run_overrides(synth_vindr_root, out), "data.val_fraction=0", "run_stages=[identify]",
                         "stages.identify.max_steps=2", "stages.identify.iters_per_epoch=1", "evaluate=false",
                         "tower_pretraining.steps=2", "logger.wandb.mode=disabled", "trainer.log_every_n_steps=1"])
    run(cfg)
    assert (out / "checkpoints" / "identify.pt").is_file()
    logged = (out / "csv" / "identify" / "metrics.csv").read_text()
    assert "train/loss" in logged and "val/loss" not in logged


def test_audit_14_litegpt_rows_norm_the_tower_tokens():
    for name in LITEGPT:
        cfg = _cfg(name)
        eva = "eva" in cfg.model.encoder._target_.lower()
        # EVA's own ln_vision is the reference's norm there; the others get the model's
        assert cfg.model.encoder_output_norm is (not eva), name
        assert not eva or cfg.model.encoder.ln_vision
    assert compose_train(["paths.output_dir=/tmp/unused"]).model.encoder_output_norm is False  # demo


def _tiny_model(*overrides: str):
    torch.manual_seed(0)
    return instantiate(compose_train(["paths.output_dir=/tmp/unused", *overrides]).model)


def test_audit_14_output_norm_standardises_each_token_and_trains_nothing():
    plain, normed = _tiny_model(), _tiny_model("model.encoder_output_norm=true")
    assert plain.trainable_names() == normed.trainable_names()
    assert plain.state_dict().keys() == normed.state_dict().keys()
    seen = {}
    normed.projector.register_forward_pre_hook(lambda mod, args: seen.setdefault("x", args[0]))
    images = torch.rand(2, 3, normed.image_size, normed.image_size)
    normed.encode_images(images)
    width = normed.encoder.width
    chunks = seen["x"].reshape(2, -1, width)  # a merged token is k tower tokens side by side
    assert torch.allclose(chunks.mean(-1), torch.zeros(()), atol=1e-4)
    assert torch.allclose(chunks.var(-1, unbiased=False), torch.ones(()), atol=1e-2)
    with pytest.raises(Exception, match="encoder_output_norm"):  # hydra wraps the ValueError
        _tiny_model("model/encoder=eva_vit_g", "model.encoder_output_norm=true", "model.merge=4")


def test_audit_15_minigptv2_row_at_the_reference_224():
    from medgrounder.summary import summarize

    assert summarize(_cfg("litegpt_minigptv2"))["visual_tokens"] == 64  # 256 EVA tokens merged by 4
    assert summarize(_cfg("litegpt_minigptv2", "model.image_size=448"))["visual_tokens"] == 256


def test_audit_32_table6_trains_identify_only():
    cfg = _cfg("litegpt_grounding_token")
    assert list(cfg.run_stages) == ["identify"] and cfg.stages.identify.task == "grounding"


def _write_labels(root: Path) -> None:
    """A PhysioNet-layout training split of three images: A has a box but no diagnosis ("No
    finding" 0), B is normal ("No finding" 1), C has Pneumonia."""
    ann = root / "annotations"
    ann.mkdir(parents=True)
    (ann / "annotations_train.csv").write_text(
        "image_id,rad_id,class_name,x_min,y_min,x_max,y_max\n"
        "A,R1,Cardiomegaly,10,10,50,50\nB,R1,No finding,,,,\nC,R1,Lung Opacity,5,5,20,20\n")
    head = "image_id,rad_id,Cardiomegaly,Lung Opacity," + ",".join(
        g if g != "Other disease" else "Other diseases" for g in GLOBAL_LABELS)
    flags = {"A": "1,0,0,0,0,0,0,0", "B": "0,0,0,0,0,0,0,1", "C": "0,1,0,0,1,0,0,0"}
    (ann / "image_labels_train.csv").write_text(head + "\n" + "".join(f"{i},R1,{f}\n" for i, f in flags.items()))


def test_audit_6_binary_truth_is_the_no_finding_column(tmp_path):
    from medgrounder.data.vindr.datamodule import VinDrDataModule
    from medgrounder.data.vindr.records import build_records, parse_physionet

    _write_labels(tmp_path)
    records, _ = build_records(parse_physionet(tmp_path, "train"), {i: (100, 100) for i in "ABC"},
                               {i: f"{i}.dicom" for i in "ABC"})
    assert {r.image_id: r.no_finding for r in records} == {"A": False, "B": True, "C": False}
    vqa = get_task("vqa")
    answers = {r.image_id: vqa.answer(VinDrDataModule._target(r)) for r in records}
    assert answers["A"].endswith("are none.") and answers["B"].endswith("are No finding.")
    assert answers["C"].endswith("are Pneumonia.")
    # A model that calls A normal is wrong on the binary task: A is a finding by the column.
    rows = [{"id": i, "reference": answers[i], "prediction": p}
            for i, p in (("A", answers["B"]), ("B", answers["B"]), ("C", answers["C"]))]
    m = vindr_vqa_metrics(rows)
    assert m["finding/support"] == 2 and m["no_finding/support"] == 1
    assert m["finding/recall"] == 0.5 and m["finding/accuracy"] == pytest.approx(2 / 3)
    assert m["valid_rate"] == 1.0


def _texture(width: int, height: int) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width]
    return (127.5 + 127.5 * np.sin(x / 1.7) * np.cos(y / 2.3)).astype(np.uint8)


def test_audit_23_crops_come_from_a_cache_large_enough():
    cfg = _cfg("pfmvg")
    for part in (cfg.data.tasks.refer, cfg.data.tasks.caption):
        lo, ratio = part.crop.scale[0], part.crop.ratio[0]
        assert part.cache_size >= cfg.model.image_size / math.sqrt(lo * ratio)
    # Behaviour: a 0.6-area crop rendered from the 1024 cache is closer to the crop taken from
    # the original than one from the old 448 cache.
    w, h = 1600, 2000
    original = _texture(w, h)
    view = View(200.0, 300.0, 200.0 + w * math.sqrt(0.6), 300.0 + h * math.sqrt(0.6))
    box = (view.x1, view.y1, view.x2, view.y2)
    truth = np.asarray(Image.fromarray(original).resize((448, 448), Image.BILINEAR, box=box)).astype(float)
    err = {}
    for side in (448, 1024):
        cache = np.asarray(Image.fromarray(original).resize((side, side), Image.BILINEAR))
        err[side] = np.abs(render_view(cache, w, h, view, 448).astype(float) - truth).mean()
    assert err[1024] < 0.5 * err[448], err


def test_audit_26_zero_shot_asks_in_minigptv2_phrasing(tmp_path):
    from medgrounder.data.mscxr.datamodule import MSCXRDataModule
    from medgrounder.data.mscxr.synth import synth_mscxr

    assert _cfg("pfmvg_zero_shot").data.instructions == "minigptv2"
    assert _cfg("pfmvg").data.tasks.refer.instructions == "default"
    synth_mscxr(tmp_path / "ms", n=12, seed=0, min_side=64, max_side=96)
    prompts = {}
    for pool in ("default", "minigptv2"):
        dm = MSCXRDataModule(str(tmp_path / "ms"), image_size=32, decode_workers=1, instructions=pool)
        dm.setup()
        item = dm.dataset("test")[0]
        prompts[pool] = item["meta"]["prompt"]
    phrase = item["meta"]["label_text"].rstrip(".")
    assert f"[refer] give me the location of {phrase}" in prompts["minigptv2"]
    assert "give me the location" not in prompts["default"] and phrase in prompts["default"]
    with pytest.raises(ValueError, match=r"data\.instructions"):
        MSCXRDataModule(str(tmp_path / "ms"), instructions="pfmvg_paper")


def test_audit_30_31_33_documentation_fixes():
    lora = " ".join((ROOT / "conf/model/lora/r64.yaml").read_text().splitlines()[:2])
    assert "alpha=16" in lora and "code" in lora and "Both papers" not in lora
    assert "3.1.2" in (ROOT / "conf/experiment/litegpt_dual.yaml").read_text()
    assert "1HkoUUrjzFGn33cSiUkI-KcT-zysCynAz" in (ROOT / "conf/paths/default.yaml").read_text()


def test_reproduction_md_covers_every_audit_item_and_is_linked():
    text = (ROOT / "experiments/REPRODUCTION.md").read_text()
    items = {int(line.split("|")[1]) for line in text.splitlines()
             if line.startswith("| ") and line.split("|")[1].strip().isdigit()}
    assert items == set(range(1, 35)), sorted(set(range(1, 35)) - items)
    assert "REPRODUCTION.md" in (ROOT / "README.md").read_text()
    assert "REPRODUCTION.md" in (ROOT / "experiments/README.md").read_text()


def _mimic_reports_of(mscxr_root: Path, out: Path) -> None:
    """A MIMIC-CXR report corpus (split csv, one report per study) over the images of a
    synthetic MS-CXR, every image in the training split: stage 1 sees MS-CXR's patients."""
    import csv

    from medgrounder.data.captions.layout import MIMIC_SPLIT_COLUMNS, MIMIC_SPLIT_CSV
    from medgrounder.data.mscxr.layout import MSCXR_CSV, mimic_report_path, patient_of

    with open(mscxr_root / MSCXR_CSV, newline="") as f:
        paths = sorted({row["path"] for row in csv.DictReader(f)})
    out.mkdir(parents=True)
    rows = []
    for path in paths:
        subject, study = patient_of(path)
        report = out / mimic_report_path(subject, study)
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text("FINDINGS: The lungs are clear.\nIMPRESSION: No acute process.\n")
        rows.append([Path(path).stem, study, subject, "train"])
    with open(out / MIMIC_SPLIT_CSV, "w", newline="") as f:
        csv.writer(f).writerows([MIMIC_SPLIT_COLUMNS, *rows])


def test_audit_25_stage1_keeps_mscxr_eval_patients_out(tmp_path):
    from medgrounder.data.captions.datamodule import CaptionDataModule
    from medgrounder.data.captions.sources import MimicReports
    from medgrounder.data.mscxr.datamodule import MSCXRDataModule
    from medgrounder.data.mscxr.synth import synth_mscxr
    from medgrounder.data.multitask import MultiTaskDataModule

    assert _cfg("pfmvg").data.exclude_eval_patients is True
    synth_mscxr(tmp_path / "ms", n=24, seed=0, min_side=64, max_side=96)
    _mimic_reports_of(tmp_path / "ms", tmp_path / "mimic")
    kept = {}
    for exclude in (False, True):
        mimic = MimicReports(str(tmp_path / "mimic"), image_root=str(tmp_path / "ms"))
        captions = CaptionDataModule({"mimic": mimic}, image_size=32)
        refer = MSCXRDataModule(str(tmp_path / "ms"), image_size=32, decode_workers=1)
        MultiTaskDataModule({"caption": captions, "refer": refer}, exclude_eval_patients=exclude).setup()
        subjects = {Path(r.image).parents[1].name[1:] for r in captions.records["train"][0]}
        kept[exclude] = (subjects, refer.eval_patients(), mimic.excluded.get("train", 0))
    every, eval_patients, _ = kept[False]
    left, _, dropped = kept[True]
    assert eval_patients and eval_patients <= every  # without the option stage 1 captions them
    assert left == every - eval_patients and not left & eval_patients
    assert dropped == len(list((tmp_path / "ms").rglob("*.jpg"))) - sum(
        1 for p in (tmp_path / "ms").rglob("*.jpg") if p.parents[1].name[1:] in left)


def test_audit_27_sample_counts_per_split_reach_the_table(tmp_path):
    from medgrounder.data.mscxr.datamodule import MSCXRDataModule
    from medgrounder.data.mscxr.synth import synth_mscxr

    synth_mscxr(tmp_path / "ms", n=20, seed=0, min_side=64, max_side=96)
    dm = MSCXRDataModule(str(tmp_path / "ms"), image_size=32, decode_workers=1)
    dm.setup()
    counts = dm.sample_counts()
    assert sum(counts.values()) == sum(len(dm.samples(s)) for s in ("train", "val", "test")) > 0
    rows = [{**dm.dataset("test")[i]["meta"], "prediction": "{<0><0><100><100>}"} for i in range(len(dm.samples("test")))]
    refer = get_task("refer")
    metrics = {**refer.score(rows), **{f"num_samples/{k}": v for k, v in counts.items()}}
    assert metrics["num_samples"] == counts["test"]
    assert f"Samples: train {counts['train']}, val {counts['val']}, test {counts['test']}" in refer.report(metrics)


def test_audit_10_a_prepared_cache_must_match_the_rows_windowing(synth_vindr_root, tmp_path):
    from medgrounder.data.vindr.datamodule import VinDrDataModule
    from medgrounder.data.vindr.prepared import prepare_vindr, read_prepared

    prepare_vindr(synth_vindr_root, tmp_path / "dicom", size=32, windowing="dicom")
    prepare_vindr(synth_vindr_root, tmp_path / "litegpt", size=32, windowing="litegpt")
    with pytest.raises(ValueError, match="windowing"):
        VinDrDataModule(str(tmp_path / "dicom"), image_size=32, windowing="litegpt").setup()
    dm = VinDrDataModule(str(tmp_path / "litegpt"), image_size=32, windowing="litegpt", decode_workers=1)
    dm.setup()
    assert dm.prepared and len(dm.records["train"]) > 0
    # the No finding column survives the cache (audit 6)
    records = read_prepared(tmp_path / "litegpt")[2]["test"]
    assert records and all(r.no_finding is (not r.findings) for r in records)
