"""Evaluation: greedy generation on the test split, parsing, metrics, tables and box pictures.

``python -m medgrounder.evaluate ckpt_path=RUN/checkpoints/STAGE.pt [overrides]`` rebuilds the
model from the checkpoint's resolved config, loads its trainable weights strictly and evaluates
that stage's task, writing ``predictions.jsonl``, ``metrics.json``, ``tables.md`` and
``boxes.png`` into the run directory.
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
from tqdm.auto import tqdm

from medgrounder.data.dicom import load_dicom_uint8
from medgrounder.data.labels import GLOBAL_LABELS, LOCAL_LABELS
from medgrounder.data.prompts import PROMPT_PREFIX, prompt_suffix
from medgrounder.eval import tables
from medgrounder.eval.metrics import mean_box_baseline, vindr_identify_metrics, vindr_vqa_metrics
from medgrounder.eval.parse import parse_identify
from medgrounder.eval.visualize import draw_boxes, save_grid

log = logging.getLogger("medgrounder.evaluate")
TASK_KEYS = {"identify": "vindr_identify", "grounding": "vindr_identify", "vqa": "vindr_vqa"}


@torch.no_grad()
def generate_rows(module, loader, desc: str = "generate") -> list[dict]:
    """Greedy answers for every sample of ``loader`` as ``predictions.jsonl`` rows."""
    was_training = module.training
    module.eval()
    rows = []
    for batch in tqdm(loader, desc=desc):
        answers = module.generate(batch["images"].to(module.device), batch["prompt_ids"].to(module.device),
                                  batch["prompt_mask"].to(module.device))
        for meta, answer in zip(batch["meta"], answers, strict=True):
            rows.append({**meta, "prompt": f"{PROMPT_PREFIX}<ImageHere>{prompt_suffix(meta['task'])}",
                         "prediction": answer})
    module.train(was_training)
    return rows


def evaluate_task(module, datamodule, task: str, num_figure_images: int = 8):
    """Generate on the test split for ``task``; returns ``({task_key: metrics}, rows, figure)``."""
    rows = generate_rows(module, datamodule.test_dataloader(task), desc=f"generate [{task}] test")
    key = TASK_KEYS[task]
    if key == "vindr_identify":
        metrics = vindr_identify_metrics(rows)
        baseline = mean_box_baseline(datamodule.train_findings(), rows)
        metrics.update({f"baseline/{k}": v for k, v in baseline.items() if k.startswith("acc@")})
        figure = box_figure(rows, datamodule, num_figure_images)
    else:
        metrics = vindr_vqa_metrics(rows)
        figure = None
    log.info("[%s] %s", task, {k: round(v, 4) for k, v in metrics.items() if "/" not in k or k.startswith("micro")})
    return {key: metrics}, rows, figure


def box_figure(rows: list[dict], datamodule, n: int):
    """Ground truth (green) and predictions (red) on the first ``n`` abnormal test images, at the
    original resolution."""
    from medgrounder.data.boxes import from_grid

    records = {r.image_id: r for r in datamodule.records["test"]}
    panels = []
    for row in rows:
        if len(panels) >= n:
            break
        if not row["gt_boxes"]:
            continue
        rec = records[row["image_id"]]
        parsed = parse_identify(row["prediction"])
        pred = [(name, from_grid(box, rec.width, rec.height)) for name, box in parsed.findings]
        gt = [(b[0], tuple(b[1:])) for b in row["gt_boxes"]]
        panels.append(draw_boxes(load_dicom_uint8(rec.path, windowing=datamodule.windowing), gt, pred,
                                 title=rec.image_id[:12]))
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


def evaluate_checkpoint(ckpt_path: str | Path, out_dir: str | Path, num_figure_images: int = 8) -> dict:
    """Rebuild the model from a stage checkpoint's config, load its weights strictly and evaluate
    that stage's task on the test split; writes the reports into ``out_dir``."""
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    run_cfg = OmegaConf.create(ckpt["config"])
    L.seed_everything(run_cfg.seed, workers=True)  # random tiny towers are rebuilt as in training
    module = instantiate(run_cfg.model)
    load_stage_checkpoint(module, ckpt, ckpt_path)
    datamodule = instantiate(run_cfg.data, tokenizer=module.tokenizer)
    datamodule.setup("test")
    task = run_cfg.stages[ckpt["stage"]].task
    metrics, rows, figure = evaluate_task(module, datamodule, task, num_figure_images)
    write_reports(Path(out_dir), metrics, rows, [figure] if figure else [])
    return metrics


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    evaluate_checkpoint(cfg.ckpt_path, cfg.paths.output_dir, cfg.num_figure_images)
    print((Path(cfg.paths.output_dir) / "tables.md").read_text())


if __name__ == "__main__":
    main()
