"""Evaluation: greedy generation on the test split, parsing, metrics, tables and box pictures.

``python -m medgrounder.evaluate ckpt_path=RUN/checkpoints/STAGE.pt [overrides]`` rebuilds the
model from the checkpoint's resolved config, loads its trainable weights strictly and evaluates
that stage's task, writing ``predictions.jsonl``, ``metrics.json``, ``tables.md`` and
``boxes.png`` into the run directory.

Distributed: launched under ``torch.distributed`` (e.g. ``torchrun --nproc-per-node 2 -m
medgrounder.evaluate ...``, which this entry point initialises: NCCL on GPUs, gloo on CPU), each
rank generates a shard of the test set, the rows are gathered once per sample
(:func:`generate_rows`) and every rank computes the same metrics; rank 0 writes the reports.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import hydra
import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, DistributedSampler, Subset
from tqdm.auto import tqdm

from medgrounder.core.labels import GLOBAL_LABELS, LOCAL_LABELS
from medgrounder.eval import tables
from medgrounder.eval.metrics import (
    mean_box_baseline,
    mscxr_mean_box_baseline,
    mscxr_refer_metrics,
    vindr_identify_metrics,
    vindr_vqa_metrics,
)
from medgrounder.eval.parse import parse_identify, parse_refer
from medgrounder.eval.text_metrics import text_metrics
from medgrounder.eval.visualize import draw_boxes, save_grid
from medgrounder.models.tower_pretraining import pretrain_configured_towers
from medgrounder.tasks import get_task

log = logging.getLogger("medgrounder.evaluate")
TASK_KEYS = {"identify": "vindr_identify", "grounding": "vindr_identify", "vqa": "vindr_vqa",
             "refer": "mscxr_refer", "caption": "caption"}


def _rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


@torch.no_grad()
def _generate(module, loader, desc: str) -> list[dict]:
    was_training = module.training
    module.eval()
    rows = []
    for batch in tqdm(loader, desc=desc, disable=_rank_world()[0] != 0):
        answers = module.generate(batch["images"].to(module.device), batch["prompt_ids"].to(module.device),
                                  batch["prompt_mask"].to(module.device))
        for meta, answer in zip(batch["meta"], answers, strict=True):
            prompt = meta.get("prompt") or get_task(meta["task"]).prompt()
            rows.append({**meta, "prompt": prompt, "prediction": answer})
    module.train(was_training)
    return rows


def generate_rows(module, loader, desc: str = "generate") -> list[dict]:
    """Greedy answers for every sample of ``loader`` as ``predictions.jsonl`` rows, in dataset
    order.

    Under ``torch.distributed`` (initialised, world size > 1) the dataset is sharded with a
    :class:`~torch.utils.data.DistributedSampler` (no shuffle), each rank generates its shard,
    and the rows of all ranks are gathered on every rank; the samples the sampler repeats to pad
    the last shard are dropped (by sample ``id``), so each sample appears exactly once and the
    rows equal the single-process ones.
    """
    rank, world = _rank_world()
    if world == 1:
        return _generate(module, loader, desc)
    sampler = DistributedSampler(loader.dataset, num_replicas=world, rank=rank, shuffle=False)
    indices = list(sampler)
    shard = DataLoader(Subset(loader.dataset, indices), batch_size=loader.batch_size,
                       collate_fn=loader.collate_fn, num_workers=loader.num_workers)
    mine = list(zip(indices, _generate(module, shard, f"{desc} [rank {rank}/{world}]"), strict=True))
    parts: list = [None] * world
    torch.distributed.all_gather_object(parts, mine)
    by_id: dict = {}
    for part in parts:
        for index, row in part:
            by_id.setdefault(row["id"], (index, row))
    return [row for _, row in sorted(by_id.values(), key=lambda t: t[0])]


def evaluate_task(module, datamodule, task: str, num_figure_images: int = 8):
    """Generate on the test split for ``task``; returns ``({task_key: metrics}, rows, figure)``."""
    rows = generate_rows(module, datamodule.test_dataloader(task), desc=f"generate [{task}] test")
    key = TASK_KEYS[task]
    data = datamodule.for_task(task)
    train_findings = [f for t in data.targets("train") for f in t.findings]  # the mean-box baselines
    if key == "mscxr_refer":
        # PFMVG tables 1-4, and the category-prior baseline beside them.
        metrics = mscxr_refer_metrics(rows)
        baseline = mscxr_mean_box_baseline(train_findings, rows)
        metrics.update({f"baseline/{k}": v for k, v in baseline.items() if k.startswith(("iou/", "dice/"))})
        log.info("[%s] %s", task, {k: round(v, 4) for k, v in metrics.items() if k.split("/")[-1] in ("mean", "weighted")
                                   or k == "valid_rate"})
        return {key: metrics}, rows, refer_box_figure(rows, data, num_figure_images)
    if key == "caption":
        metrics = text_metrics([r["prediction"] for r in rows], [r["reference"] for r in rows])
        log.info("[%s] %s", task, {k: round(v, 4) for k, v in metrics.items() if isinstance(v, float)})
        return {key: metrics}, rows, None
    if key == "vindr_identify":
        metrics = vindr_identify_metrics(rows)
        baseline = mean_box_baseline(train_findings, rows)
        metrics.update({f"baseline/{k}": v for k, v in baseline.items() if k.startswith("acc@")})
        figure = box_figure(rows, data, num_figure_images)
    else:
        metrics = vindr_vqa_metrics(rows)
        figure = None
    # LiteGPT tables 4-5: text metrics of the answers with boxes and <p> tags stripped.
    text = text_metrics([r["prediction"] for r in rows], [r["reference"] for r in rows])
    metrics.update({f"text/{k}": v for k, v in text.items() if k != "num_samples"})
    log.info("[%s] %s", task, {k: round(v, 4) for k, v in metrics.items() if "/" not in k or k.startswith("micro")})
    return {key: metrics}, rows, figure


def box_figure(rows: list[dict], datamodule, n: int):
    """Ground truth (green) and predictions (red) on the first ``n`` abnormal test images, at the
    original resolution (or on the prepared cache image when the DICOM is not there)."""
    from medgrounder.core.boxes import from_grid

    panels = []
    for row in rows:
        if len(panels) >= n:
            break
        if not row["gt_boxes"]:
            continue
        img, sx, sy = datamodule.picture(row["image_id"])
        width, height = row["image_width"], row["image_height"]

        def scaled(box, sx=sx, sy=sy):
            return (box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy)

        parsed = parse_identify(row["prediction"])
        pred = [(name, scaled(from_grid(box, width, height))) for name, box in parsed.findings]
        gt = [(b[0], scaled(b[1:])) for b in row["gt_boxes"]]
        panels.append(draw_boxes(img, gt, pred, title=row["image_id"][:12]))
    return panels or None


def refer_box_figure(rows: list[dict], datamodule, n: int):
    """Ground truth (green, with the phrase's category) and predicted boxes (red) of the first
    ``n`` ``[refer]`` test rows, on the datamodule's cached picture of each image."""
    from medgrounder.core.boxes import from_grid

    panels = []
    for row in rows[:n]:
        img, sx, sy = datamodule.picture(row["image_id"])
        w, h = row["image_width"], row["image_height"]

        def scaled(box, sx=sx, sy=sy):
            return (box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy)

        pred = [("", scaled(from_grid(g, w, h))) for _, g in parse_refer(row["prediction"]).findings]
        gt = [(row["category"], scaled(b[-4:])) for b in row["gt_boxes"]]
        panels.append(draw_boxes(img, gt, pred, title=row["label_text"][:40]))
    return panels or None


def write_reports(out_dir: Path, metrics: dict, rows: list[dict], figures: list) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "predictions.jsonl", "w") as f:
        for row in rows:
            f.write(json.dumps(row, sort_keys=True) + "\n")
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    parts = ["# Results", ""]
    if "vindr_identify" in metrics:
        m = metrics["vindr_identify"]
        base = {k.removeprefix("baseline/"): v for k, v in m.items() if k.startswith("baseline/")}
        parts += [tables.localization_table({"model [identify]": m, "mean-box baseline (oracle class)": base}), "",
                  f"Valid outputs [identify]: {m['valid_rate']:.4f}", "",
                  tables.classification_table(m, LOCAL_LABELS, "local/", "Local labels"), ""]
    if "vindr_vqa" in metrics:
        m = metrics["vindr_vqa"]
        parts += [tables.classification_table(m, GLOBAL_LABELS, "global/", "Global labels"), "",
                  f"Valid outputs [vqa]: {m['valid_rate']:.4f}", ""]
    if "mscxr_refer" in metrics:
        m = metrics["mscxr_refer"]
        base = {k.removeprefix("baseline/"): v for k, v in m.items() if k.startswith("baseline/")}
        for metric, title in (("iou", "IoU"), ("dice", "Dice")):
            parts += [f"MS-CXR [refer] {title} (PFMVG tables 1-4)", "",
                      tables.refer_table({"model [refer]": m, "mean-box baseline (category prior)": base}, metric), ""]
        parts += [f"Valid outputs [refer]: {m['valid_rate']:.4f}", ""]
    text_rows = {f"model [{task}]": {k.removeprefix("text/"): v for k, v in m.items() if k.startswith("text/")}
                 for task, m in metrics.items()}
    if "caption" in metrics:
        text_rows["model [caption]"] = metrics["caption"]
    text_rows = {name: m for name, m in text_rows.items() if m}
    if text_rows:
        parts += ["Text validity (boxes and <p> tags stripped)", "", tables.text_table(text_rows), ""]
    (out_dir / "tables.md").write_text("\n".join(parts))
    panels = [p for fig in figures for p in fig]
    if panels:
        save_grid(panels, out_dir / "boxes.png", cols=4)


def load_stage_checkpoint(module, ckpt: dict, path: str | Path) -> None:
    """Load a stage checkpoint's trainable weights (``ckpt`` as read from ``path``); every saved
    key must match a parameter that training changes in this model, every such parameter must be
    present, and the frozen weights must be the ones it was trained with."""
    expected = module.trainable_names()
    saved = set(ckpt["state_dict"])
    missing, unexpected = sorted(expected - saved), sorted(saved - expected)
    if missing or unexpected:
        raise KeyError(f"checkpoint {path} does not match the model: missing {missing[:20]}"
                       f"{' ...' if len(missing) > 20 else ''}, unexpected {unexpected[:20]}")
    module.load_state_dict(ckpt["state_dict"], strict=False)
    if ckpt.get("frozen_fingerprint") not in (None, module.frozen_fingerprint()):
        raise ValueError(f"checkpoint {path}: the frozen weights of this model differ from those it was "
                         "trained with (other pretrained files, or another seed for random towers)")


def load_checkpoint_module(ckpt_path: str | Path):
    """Rebuild the model from a stage checkpoint's config and load its weights strictly.

    Returns ``(module, run config, stage name, data)``; ``data()`` gives the run's datamodule, set
    up, built on first call (only evaluation, or pretraining tiny towers not cached yet, needs it).
    """
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    run_cfg = OmegaConf.create(ckpt["config"])
    L.seed_everything(run_cfg.seed, workers=True)  # random tiny towers are rebuilt as in training
    module = instantiate(run_cfg.model)
    built: list = []

    def data():
        if not built:
            built.append(instantiate(run_cfg.data, tokenizer=module.tokenizer))
            built[0].setup("test")
        return built[0]

    pretrain_configured_towers(run_cfg, module, data)
    load_stage_checkpoint(module, ckpt, ckpt_path)
    return module, run_cfg, ckpt["stage"], data


def evaluate_checkpoint(ckpt_path: str | Path, out_dir: str | Path, num_figure_images: int = 8) -> dict:
    """Rebuild the model from a stage checkpoint (:func:`load_checkpoint_module`) and evaluate
    that stage's task on the test split; writes the reports into ``out_dir``."""
    module, run_cfg, stage, data = load_checkpoint_module(ckpt_path)
    task = run_cfg.stages[stage].task
    metrics, rows, figure = evaluate_task(module, data(), task, num_figure_images)
    if _rank_world()[0] == 0:
        write_reports(Path(out_dir), metrics, rows, [figure] if figure else [])
        _log_wandb(run_cfg, Path(out_dir), stage, task, metrics, rows, figure)
    return metrics


def _log_wandb(run_cfg, out_dir: Path, stage: str, task: str, metrics: dict, rows: list[dict], figure) -> None:
    """The training run's W&B settings, a run of job type ``evaluate`` saved under ``out_dir``."""
    from medgrounder.utils.logging import flatten_metrics, log_wandb_predictions, wandb_logger

    wcfg = (run_cfg.get("logger") or {}).get("wandb")
    if not wcfg:
        return
    logger = wandb_logger(project=wcfg.project, save_dir=str(out_dir), mode=wcfg.mode, entity=wcfg.get("entity"),
                          group=wcfg.get("group"), tags=list(wcfg.get("tags") or []),
                          name=f"{run_cfg.run_name}-{stage}-evaluate", job_type="evaluate")
    if logger is None:  # WANDB_MODE=disabled
        return
    logger.log_metrics({f"test/{k}": v for k, v in flatten_metrics(metrics).items()})
    log_wandb_predictions(logger, task, rows, figure)
    logger.experiment.finish()


@hydra.main(version_base="1.3", config_path="pkg://medgrounder.conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        if torch.cuda.is_available():
            from medgrounder.models.llm import local_rank

            torch.cuda.set_device(local_rank())
    evaluate_checkpoint(cfg.ckpt_path, cfg.paths.output_dir, cfg.num_figure_images)
    if _rank_world()[0] == 0:
        print((Path(cfg.paths.output_dir) / "tables.md").read_text())


if __name__ == "__main__":
    main()
