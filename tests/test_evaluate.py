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


# ------------------------------------------------------------------ the cross-rank gather
def _rows() -> list[dict]:
    rng = np.random.default_rng(0)
    rows = []
    for i in range(11):
        w, h = 200, 100
        gt = [("Cardiomegaly", (20.0, 10.0, 120.0, 60.0))] if i % 3 else []
        grid = [("Cardiomegaly", tuple(int(v) for v in np.clip(to_grid(b, w, h) + rng.integers(-8, 8, 4), 0, 100)))
                for _, b in gt]
        rows.append({"id": f"s{i}", "image_id": f"img{i}", "image_width": w, "image_height": h, "task": "identify",
                     "gt_boxes": [[n, *b] for n, b in gt], "reference": identify_answer([(n, to_grid(b, w, h)) for n, b in gt]),
                     "prediction": identify_answer(grid) if i % 4 else "garbage"})
    return rows


class _Replay:
    """A stand-in model whose answer to image ``i`` is row ``i``'s prediction (its tiny tokens,
    each of probability 1)."""

    training = False
    device = torch.device("cpu")
    box_score = "label_x_geomean"

    def __init__(self):
        from medgrounder.models.tokenizer import build_tiny_tokenizer

        self.tokenizer = build_tiny_tokenizer()

    def eval(self):
        return self

    def train(self, mode: bool = True):
        return self

    def generate_decoded(self, images, prompt_ids, prompt_mask, max_new_tokens=None, task=None, labels=None):
        from medgrounder.models.decoding import Decoded

        texts = [_rows()[int(i)]["prediction"] for i in images[:, 0]]
        return [Decoded(ids := self.tokenizer.encode(t, add_special_tokens=False), [0.0] * len(ids), 0.5, True, t)
                for t in texts]


def _collate(items: list[dict]) -> dict:
    return {"images": torch.stack([it["image"] for it in items]), "prompt_ids": torch.zeros(len(items), 1),
            "prompt_mask": torch.ones(len(items), 1), "meta": [it["meta"] for it in items]}


def _replay_loader():
    items = [{"image": torch.tensor([i]), "meta": {k: v for k, v in r.items() if k != "prediction"}}
             for i, r in enumerate(_rows())]
    return torch.utils.data.DataLoader(items, batch_size=2, collate_fn=_collate)


def _generate_worker(rank: int, world: int, port: int, out: str) -> None:
    from medgrounder.pipeline.generation import generate_rows
    from medgrounder.tasks import get_task

    _init(rank, world, port)
    rows = generate_rows(_Replay(), _replay_loader())  # 11 samples: the last shard is padded
    result = {"rows": rows, "metrics": get_task("identify").score(rows, plus_one=True, meteor=None)}
    Path(out, f"rank{rank}.json").write_text(json.dumps(result, sort_keys=True))
    torch.distributed.destroy_process_group()


def test_generate_rows_gathers_each_sample_once_in_order(tmp_path):
    from medgrounder.pipeline.generation import generate_rows
    from medgrounder.tasks import get_task

    single = generate_rows(_Replay(), _replay_loader())
    prompt = get_task("identify").prompt()
    assert [{k: v for k, v in r.items() if k not in ("prediction_boxes", "no_finding_score")} for r in single] == \
        [{**r, "prompt": prompt} for r in _rows()]
    assert all(r["no_finding_score"] == 0.5 and all(b["score"] == 1.0 for b in r["prediction_boxes"]) for r in single)
    mp.spawn(_generate_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    expected = json.loads(json.dumps({"rows": single, "metrics": get_task("identify").score(
        single, plus_one=True, meteor=None)}, sort_keys=True))
    for rank in range(2):
        assert json.loads((tmp_path / f"rank{rank}.json").read_text()) == expected, rank
    assert expected["metrics"]["num_samples"] == 11 and 0 < expected["metrics"]["valid_rate"] < 1


class _Phrases(torch.utils.data.Dataset):
    """``[refer]`` items whose prompts differ in length; image ``i`` is filled with ``i``."""

    PHRASES = ("opacity", "small left apical pneumothorax beside the chest tube", "effusion",
               "right lower lobe consolidation", "cardiomegaly", "bilateral patchy airspace opacities")

    def __len__(self) -> int:
        return len(self.PHRASES)

    def prompt_of(self, i: int) -> tuple[str, str]:
        from medgrounder.tasks import Target, get_task

        return "refer", get_task("refer").instruction(Target(text=self.PHRASES[i]))

    def __getitem__(self, i: int) -> dict:
        from medgrounder.tasks import get_task

        task, instruction = self.prompt_of(i)
        return {"image": torch.full((8, 8), i, dtype=torch.uint8), "task": task, "instruction": instruction,
                "answer": "", "meta": {"id": f"p{i}", "task": task, "prompt": get_task(task).prompt(instruction)}}


class _Echo(_Replay):
    """Answers each image's index and records each batch's prompt lengths."""

    def __init__(self):
        super().__init__()
        self.batches: list[list[int]] = []

    def generate_decoded(self, images, prompt_ids, prompt_mask, max_new_tokens=None, task=None, labels=None):
        from medgrounder.models.decoding import Decoded

        self.batches.append(prompt_mask.sum(1).tolist())
        return [Decoded([], [], None, True, str(round(float(im[0, 0, 0]) * 255))) for im in images]


def test_generation_batches_by_prompt_length_and_returns_dataset_order():
    from medgrounder.data.collate import PromptCollator
    from medgrounder.pipeline.generation import generate_rows

    model, dataset = _Echo(), _Phrases()
    collate = PromptCollator(model.tokenizer)
    lengths = [len(collate.suffix_ids(*dataset.prompt_of(i))) for i in range(len(dataset))]
    assert lengths != sorted(lengths, reverse=True)  # dataset order is not length order
    rows = generate_rows(model, torch.utils.data.DataLoader(dataset, batch_size=2, collate_fn=collate))
    assert [r["id"] for r in rows] == [f"p{i}" for i in range(len(dataset))]
    assert [r["prediction"] for r in rows] == [str(i) for i in range(len(dataset))]  # each row its own answer
    assert [n for b in model.batches for n in b] == sorted(lengths, reverse=True)
    assert [len(b) for b in model.batches] == [2, 2, 2]


def test_prompt_of_is_the_items_prompt_in_every_evaluation_dataset(synth_pfmvg_dir, synth_vindr_root):
    from hydra.utils import instantiate

    from helpers import pfmvg_overrides

    pfmvg = instantiate(compose_train([*pfmvg_overrides(synth_pfmvg_dir), "paths.output_dir=."]).data)
    pfmvg.setup()
    vindr = instantiate(compose_train(tiny_run_overrides(synth_vindr_root, ".")).data)
    vindr.setup()
    datasets = [pfmvg.for_task("refer").dataset("test"), pfmvg.for_task("caption").dataset("test"),
                *(vindr.dataset("test", task) for task in ("identify", "vqa", "grounding"))]
    for dataset in datasets:
        for i in range(0, len(dataset), max(1, len(dataset) // 7)):
            item = dataset[i]
            assert dataset.prompt_of(i) == (item["task"], item.get("instruction")), (type(dataset).__name__, i)


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


# ---------------------------------------------------------------- box figures
def test_box_figure_falls_back_to_the_cached_image(synth_vindr_root, tmp_path):
    from medgrounder.data.vindr.datamodule import VinDrDataModule
    from medgrounder.data.vindr.prepared import prepare_vindr
    from medgrounder.pipeline.figures import draw_panels
    from medgrounder.tasks import get_task

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
    panels = draw_panels([row], get_task("identify"), dm, 1)
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
    full = draw_panels([row], get_task("identify"), dm, 1)
    assert full[0].size == (rec.width, rec.height)


class _Pictures:
    """A datamodule's ``picture``: a black 50 x 100 picture of a 100 x 200 original (factor 1/2)."""

    def __init__(self):
        self.asked: list[str] = []

    def picture(self, image_id: str):
        self.asked.append(image_id)
        return np.zeros((50, 100), np.uint8), 0.5, 0.5


def test_refer_panels_show_the_phrase_boxes_on_the_picture():
    from medgrounder.pipeline.figures import draw_panels
    from medgrounder.tasks import get_task

    rows = [{"image_id": f"img{i}", "image_width": 200, "image_height": 100, "category": "Edema",
             "label_text": f"phrase {i}", "gt_boxes": [[20, 10, 60, 50]], "prediction": "{<50><20><90><80>}"}
            for i in range(3)]
    data = _Pictures()
    panels = draw_panels(rows, get_task("refer"), data, 2)
    assert data.asked == ["img0", "img1"] and [p.size for p in panels] == [(100, 50), (100, 50)]
    px = np.asarray(panels[0]).astype(int)
    red = (px[..., 0] > 180) & (px[..., 1] < 80) & (px[..., 2] < 80)
    green = (px[..., 1] > 150) & (px[..., 0] < 80)
    # prediction: grid (50, 20)-(90, 80) -> pixels (100, 20)-(180, 80) -> picture (50, 10)-(90, 40)
    assert red[10, 50:90].any() and red[40, 50:90].any() and not red[:, :45].any()
    assert green[5:25, 10].any() and green[25, 10:30].any()  # ground truth (10, 5)-(30, 25)
    assert draw_panels(rows, get_task("vqa"), data, 2) is None  # vqa draws no figure
    assert draw_panels([{**rows[0], "gt_boxes": []}], get_task("refer"), data, 2) is None
