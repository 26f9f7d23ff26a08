"""Evaluation beyond the training run: distributed generation and metrics (2 CPU processes,
gloo) equal the single-process ones, ``predict`` on one DICOM / PNG / JPG, and box pictures of
prepared datasets whose DICOMs are gone."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from PIL import Image

from helpers import compose_train, tiny_run_overrides
from medgrounder.core.boxes import to_grid
from medgrounder.tasks.identify import identify_answer
from medgrounder.tasks.vqa import vqa_answer


@pytest.fixture(scope="module")
def tiny_run(synth_vindr_root, tmp_path_factory):
    """A tiny two-stage run of the real train entry point (fast_dev_run): its output folder."""
    from medgrounder.train import run

    out = tmp_path_factory.mktemp("tiny_run")
    run(compose_train([*tiny_run_overrides(synth_vindr_root, out), "+trainer.fast_dev_run=true", "evaluate=false"]))
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _init(rank: int, world: int, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)


# ------------------------------------------------------------------ torchmetrics wrappers
def _rows() -> list[dict]:
    rng = np.random.default_rng(0)
    rows = []
    for i in range(11):
        w, h = 200, 100
        gt = [("Cardiomegaly", (20.0, 10.0, 120.0, 60.0))] if i % 3 else []
        grid = [("Cardiomegaly", tuple(int(v) for v in np.clip(to_grid(b, w, h) + rng.integers(-8, 8, 4), 0, 100)))
                for _, b in gt]
        rows.append({"id": f"s{i}", "image_width": w, "image_height": h, "task": "identify",
                     "gt_boxes": [[n, *b] for n, b in gt], "reference": identify_answer([(n, to_grid(b, w, h)) for n, b in gt]),
                     "prediction": identify_answer(grid) if i % 4 else "garbage",
                     "category": ["Edema", "Pneumonia"][i % 2],
                     "vqa_reference": vqa_answer(["Pneumonia"] if i % 2 else []),
                     "vqa_prediction": vqa_answer(["Pneumonia"] if i % 3 else ["COPD"])})
    return rows


def _metric_worker(rank: int, world: int, port: int, out: str) -> None:
    from medgrounder.eval.metric_modules import IdentifyMetric, ReferMetric, TextMetric, VqaMetric

    _init(rank, world, port)
    rows = _rows()
    shard = rows[rank::world]
    if rank == world - 1:
        shard = [*shard, rows[0]]  # a DistributedSampler pads with repeated samples
    metrics = {"identify": IdentifyMetric(), "refer": ReferMetric(), "text": TextMetric(meteor_backend=None),
               "vqa": VqaMetric()}
    for name, m in metrics.items():
        if name == "vqa":
            m.update([r["vqa_prediction"] for r in shard], [{**r, "reference": r["vqa_reference"]} for r in shard])
        else:
            for k in range(0, len(shard), 2):  # several updates per rank
                m.update(shard[k : k + 2])
    result = {name: m.compute() for name, m in metrics.items()}
    Path(out, f"rank{rank}.json").write_text(json.dumps(result, sort_keys=True))
    torch.distributed.destroy_process_group()


def test_metric_modules_ddp_equal_plain_functions(tmp_path):
    from medgrounder.eval.metric_modules import unique_rows
    from medgrounder.eval.metrics import (
        mscxr_refer_metrics,
        vindr_identify_metrics,
        vindr_vqa_metrics,
    )
    from medgrounder.eval.text_metrics import text_metrics

    mp.spawn(_metric_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    rows = unique_rows(_rows())
    expected = {
        "identify": vindr_identify_metrics(rows),
        "refer": mscxr_refer_metrics(rows),
        "text": text_metrics([r["prediction"] for r in rows], [r["reference"] for r in rows], meteor_backend=None),
        "vqa": vindr_vqa_metrics([{**r, "reference": r["vqa_reference"], "prediction": r["vqa_prediction"]} for r in rows]),
    }
    expected = json.loads(json.dumps(expected, sort_keys=True))
    for rank in range(2):
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert got == expected, rank
    assert expected["identify"]["num_samples"] == 11 and 0 < expected["identify"]["valid_rate"] < 1


def test_metric_module_single_process_and_reset():
    from medgrounder.eval.metric_modules import IdentifyMetric
    from medgrounder.eval.metrics import vindr_identify_metrics

    m = IdentifyMetric(plus_one=True)
    rows = _rows()
    m.update(rows)
    m.update(rows[:3])  # repeated ids count once
    assert m.compute() == vindr_identify_metrics(sorted(rows, key=lambda r: r["id"]), plus_one=True)
    m.reset()
    assert m.rows() == []


# ------------------------------------------------------------------ distributed evaluation
def _evaluate_worker(rank: int, world: int, port: int, ckpt: str, out: str) -> None:
    from medgrounder.evaluate import evaluate_checkpoint

    torch.set_num_threads(1)
    _init(rank, world, port)
    metrics = evaluate_checkpoint(ckpt, out, num_figure_images=1)
    Path(out).mkdir(parents=True, exist_ok=True)
    Path(out, f"metrics_rank{rank}.json").write_text(json.dumps(metrics, sort_keys=True))
    torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_distributed_evaluation_equals_single_process(tiny_run, tmp_path):
    from medgrounder.evaluate import evaluate_checkpoint

    ckpt = str(tiny_run / "checkpoints" / "identify.pt")
    single = evaluate_checkpoint(ckpt, tmp_path / "single", num_figure_images=1)
    mp.spawn(_evaluate_worker, args=(2, _free_port(), ckpt, str(tmp_path / "ddp")), nprocs=2, join=True)
    expected = json.loads(json.dumps(single, sort_keys=True))
    for rank in range(2):
        assert json.loads((tmp_path / "ddp" / f"metrics_rank{rank}.json").read_text()) == expected
    single_rows = (tmp_path / "single" / "predictions.jsonl").read_text()
    assert (tmp_path / "ddp" / "predictions.jsonl").read_text() == single_rows  # each sample once, in order
    ids = [json.loads(line)["id"] for line in single_rows.splitlines()]
    assert len(ids) == len(set(ids)) == single["vindr_identify"]["num_samples"]
    assert (tmp_path / "ddp" / "metrics.json").read_text() == (tmp_path / "single" / "metrics.json").read_text()
    assert "text/rouge1" in single["vindr_identify"] and "BLEU-4 (%)" in (tmp_path / "single" / "tables.md").read_text()


# ------------------------------------------------------------------------------ predict
def _dicom_of(root: Path) -> Path:
    return sorted(root.rglob("*.dicom"))[0]


@pytest.mark.slow
def test_predict_dicom_png_jpg(tiny_run, synth_vindr_root, tmp_path):
    from medgrounder.data.vindr.dicom import load_dicom_uint8
    from medgrounder.predict import predict

    ckpt = tiny_run / "checkpoints" / "identify.pt"
    dicom = _dicom_of(synth_vindr_root)
    pixels = load_dicom_uint8(dicom)
    Image.fromarray(pixels).save(tmp_path / "x.png")
    Image.fromarray(pixels).save(tmp_path / "x.jpg", quality=95)
    results = {}
    for name, image in {"dicom": dicom, "png": tmp_path / "x.png", "jpg": tmp_path / "x.jpg"}.items():
        out = tmp_path / name
        res = predict(ckpt, image, out, max_new_tokens=40)
        results[name] = res
        assert res["task"] == "identify" and res["prompt"].endswith("[/INST]")
        assert (res["image_height"], res["image_width"]) == pixels.shape
        assert json.loads((out / "prediction.json").read_text()) == json.loads(json.dumps(res))
        with Image.open(out / "overlay.png") as im:
            assert im.size == (pixels.shape[1], pixels.shape[0]) and im.mode == "RGB"
        for b in res["boxes"]:
            x1, y1, x2, y2 = b["box"]
            assert 0 <= x1 <= x2 <= res["image_width"] and 0 <= y1 <= y2 <= res["image_height"]
    assert results["png"]["answer"] == results["dicom"]["answer"]  # same pixels, same answer
    phrased = predict(ckpt, tmp_path / "x.png", tmp_path / "refer", phrase="enlarged heart", max_new_tokens=8)
    # the phrase goes into the [refer] pool's first phrasing, as in evaluation
    assert phrased["task"] == "refer"
    assert "[refer] Give the bounding box of the region described by: enlarged heart [/INST]" in phrased["prompt"]


@pytest.mark.slow
def test_predict_command_line(tiny_run, synth_vindr_root, tmp_path):
    out = tmp_path / "cli"
    proc = subprocess.run(
        [sys.executable, "-m", "medgrounder.predict", f"ckpt_path={tiny_run / 'checkpoints' / 'vqa.pt'}",
         f"image={_dicom_of(synth_vindr_root)}", f"hydra.run.dir={out}", "max_new_tokens=8"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / "prediction.json").read_text())
    assert result["task"] == "vqa" and result["boxes"] == [] and '"answer"' in proc.stdout
    assert (out / "overlay.png").is_file()


# ---------------------------------------------------------------- box figure, prepared data
def test_box_figure_falls_back_to_the_cached_image(synth_vindr_root, tmp_path):
    from medgrounder.data.vindr.datamodule import VinDrDataModule
    from medgrounder.evaluate import box_figure
    from medgrounder.prepare import prepare_vindr

    prepare_vindr(synth_vindr_root, tmp_path / "prep", size=64, workers=1)
    dm = VinDrDataModule(str(tmp_path / "prep"), decode_workers=1, image_size=64)
    dm.setup("test")
    rec = next(r for r in dm.records["test"] if r.findings)
    assert Path(rec.image).is_file()
    gone = replace(rec, path=str(tmp_path / "moved" / "x.dicom"))
    name, box = rec.findings[0]
    row = {"image_id": rec.image_id, "gt_boxes": [[name, *box]], "image_width": rec.width, "image_height": rec.height,
           "prediction": identify_answer([(name, to_grid(box, rec.width, rec.height))])}
    dm.records["test"] = [gone]
    panels = box_figure([row], dm, 1)
    assert panels and panels[0].size == (64, 64)  # the cache image, not the original size
    px = np.asarray(panels[0]).astype(int)
    red = (px[..., 0] > 180) & (px[..., 1] < 80) & (px[..., 2] < 80)
    # The predicted box (drawn over the GT one) has its corners at the box scaled to 64 x 64.
    sx, sy = 64 / rec.width, 64 / rec.height
    for x, y in ((box[0] * sx, box[1] * sy), (box[2] * sx, box[3] * sy)):
        r, c = min(round(y), 63), min(round(x), 63)
        assert red[max(r - 1, 0) : r + 2, max(c - 1, 0) : c + 2].any(), (x, y)
    # With the DICOM present, the original resolution is drawn.
    dm.records["test"] = [rec]
    full = box_figure([row], dm, 1)
    assert full[0].size == (rec.width, rec.height)
