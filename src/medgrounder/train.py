"""``python -m medgrounder.train [+experiment=NAME] [overrides]``: train the configured stages
in order, each from the previous one's trainable weights, and evaluate each stage's task on the
test split. Without an experiment it runs the embedded demo on synthetic data with tiny models.

Outputs in the run directory: ``checkpoints/<stage>.pt`` (trainable weights and the resolved
config), ``predictions.jsonl``, ``metrics.json``, ``tables.md``, ``boxes.png``, CSV logs and
one W&B run per stage (offline when there is no key or network).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import hydra
import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.loggers import WandbLogger
from omegaconf import DictConfig, OmegaConf

from medgrounder.evaluate import evaluate_task, write_reports
from medgrounder.models.tower_pretraining import pretrain_configured_towers
from medgrounder.utils.logging import flatten_metrics, log_wandb_predictions
from medgrounder.utils.preflight import check_inputs

log = logging.getLogger("medgrounder.train")


def build_loggers(cfg: DictConfig, stage: str) -> list:
    loggers = []
    for name, lcfg in (cfg.get("logger") or {}).items():
        if name == "wandb":
            logger = instantiate(lcfg, name=f"{cfg.run_name}-{stage}", job_type=stage,
                                 run_config=OmegaConf.to_container(cfg, resolve=True))
        elif "CSVLogger" in lcfg.get("_target_", ""):
            logger = instantiate(lcfg, version=stage)
        else:
            logger = instantiate(lcfg)
        if logger is not None:
            loggers.append(logger)
    return loggers


def save_stage_checkpoint(module, cfg: DictConfig, stage: str, out_dir: Path) -> Path:
    """Trainable weights, a digest of the frozen ones and the resolved config; written to a
    temporary name then renamed, so a killed run never leaves a half-written checkpoint."""
    path = out_dir / "checkpoints" / f"{stage}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"stage": stage, "state_dict": module.trainable_state_dict(),
                "frozen_fingerprint": module.frozen_fingerprint(),
                "config": OmegaConf.to_container(cfg, resolve=True)}, tmp)
    tmp.replace(path)
    return path


def run(cfg: DictConfig) -> dict:
    """Train and evaluate as configured; returns the metrics written to ``metrics.json``."""
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    check_inputs(cfg)
    L.seed_everything(cfg.seed, workers=True)
    module = instantiate(cfg.model)
    datamodule = instantiate(cfg.data, tokenizer=module.tokenizer)
    datamodule.prepare_data()
    datamodule.setup("fit")
    pretrain_configured_towers(cfg, module, lambda: datamodule)

    base_optim = dict(module.optim)
    metrics: dict = {}
    rows: list[dict] = []
    figures = []
    for i, (stage, scfg) in enumerate(cfg.stages.items()):
        log.info("stage %s: task [%s]", stage, scfg.task)
        L.seed_everything(cfg.seed + i, workers=True)
        datamodule.set_task(scfg.task)
        stage_optim = scfg.get("optim")
        module.optim = {**base_optim, **(OmegaConf.to_container(stage_optim, resolve=True) if stage_optim else {})}
        callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values()]
        loggers = build_loggers(cfg, stage)
        trainer = instantiate(cfg.trainer, max_steps=scfg.max_steps, max_epochs=scfg.max_epochs,
                              logger=loggers or False, callbacks=callbacks)
        start = time.perf_counter()
        trainer.fit(module, datamodule=datamodule)
        log.info("stage %s trained in %.1f s", stage, time.perf_counter() - start)
        ckpt = save_stage_checkpoint(module, cfg, stage, out_dir)
        log.info("stage %s checkpoint: %s", stage, ckpt)
        if cfg.evaluate and scfg.get("evaluate", True):
            task_metrics, task_rows, figure = evaluate_task(module, datamodule, scfg.task, cfg.num_figure_images)
            metrics.update(task_metrics)
            rows.extend(task_rows)
            if figure is not None:
                figures.append(figure)
            for lg in loggers:
                lg.log_metrics({f"test/{k}": v for k, v in flatten_metrics(task_metrics).items()}, step=trainer.global_step)
                if isinstance(lg, WandbLogger):
                    log_wandb_predictions(lg, scfg.task, task_rows, figure)
        for lg in loggers:
            if isinstance(lg, WandbLogger):  # one W&B run per stage
                lg.experiment.finish()
    if metrics:
        write_reports(out_dir, metrics, rows, figures)
        print((out_dir / "tables.md").read_text())
        log.info("metrics: %s", out_dir / "metrics.json")
    return metrics


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
