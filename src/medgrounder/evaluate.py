"""Evaluation: greedy generation on the test split, parsing, metrics, tables and box pictures.

``python -m medgrounder.evaluate ckpt_path=RUN/checkpoints/STAGE.pt [overrides]`` rebuilds the
model from the checkpoint's resolved config, loads its trainable weights strictly and evaluates
that stage's task, writing ``predictions.jsonl``, ``metrics.json``, ``tables.md`` and
``boxes.png`` into the run directory.

Distributed: launched under ``torch.distributed`` (e.g. ``torchrun --nproc-per-node 2 -m
medgrounder.evaluate ...``, which this entry point initialises: NCCL on GPUs, gloo on CPU), each
rank generates a shard of the test set, the rows are gathered once per sample
(:func:`~medgrounder.pipeline.generation.generate_rows`) and every rank computes the same
metrics; rank 0 writes the reports.
"""

from __future__ import annotations

import os
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig

from medgrounder.pipeline.checkpoints import load_checkpoint_module
from medgrounder.pipeline.evaluation import evaluate_task
from medgrounder.pipeline.generation import rank_world
from medgrounder.pipeline.reports import write_reports
from medgrounder.utils.logging import flatten_metrics, log_wandb_predictions, wandb_logger


def evaluate_checkpoint(ckpt_path: str | Path, out_dir: str | Path, num_figure_images: int = 8,
                        protocol: str = "both") -> dict:
    """Rebuild the model from a stage checkpoint (:func:`load_checkpoint_module`) and evaluate
    that stage's task on the test split in ``protocol`` (``clean | paper | both``), with the
    stage's generation budget (``stages.<stage>.max_new_tokens``, else ``model.max_new_tokens``);
    writes the reports into ``out_dir``."""
    module, run_cfg, stage, data = load_checkpoint_module(ckpt_path)
    task = run_cfg.stages[stage].task
    budget = run_cfg.stages[stage].get("max_new_tokens") or run_cfg.model.get("max_new_tokens")
    metrics, rows, figure = evaluate_task(module, data(), task, num_figure_images, protocol, budget)
    if rank_world()[0] == 0:
        write_reports(Path(out_dir), metrics, rows, [figure] if figure else [])
        _log_wandb(run_cfg, Path(out_dir), stage, task, metrics, rows, figure)
    return metrics


def _log_wandb(run_cfg, out_dir: Path, stage: str, task: str, metrics: dict, rows: list[dict], figure) -> None:
    """The training run's W&B settings, a run of job type ``evaluate`` saved under ``out_dir``."""
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
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        if torch.cuda.is_available():
            from medgrounder.models.llm import local_rank

            torch.cuda.set_device(local_rank())
    evaluate_checkpoint(cfg.ckpt_path, cfg.paths.output_dir, cfg.num_figure_images, cfg.get("protocol", "both"))
    if rank_world()[0] == 0:
        print((Path(cfg.paths.output_dir) / "tables.md").read_text())


if __name__ == "__main__":
    main()
