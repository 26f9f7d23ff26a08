"""``python -m medgrounder.train [+experiment=NAME] [overrides]``: train the configured stages
in order, each from the previous one's trainable weights (or from ``stages.<name>.init_from``: a
run directory or stage checkpoint), and evaluate each stage's task on the test split. Without an
experiment it runs the embedded demo on synthetic data with tiny models.

Outputs in the run directory: ``checkpoints/<stage>.pt`` (trainable weights and the resolved
config), ``predictions.jsonl``, ``metrics.json``, ``tables.md``, ``boxes.png``, CSV logs, one W&B
run per stage (offline when there is no key or network) and ``status.json``.

Resume: re-running the same command (same run directory) loads the stages already finished,
reuses their evaluation (``evaluation/<stage>/``), and resumes an unfinished stage from
``checkpoints/resume/<stage>/last.ckpt``: weights, optimizer, schedule, data position and RNG,
so it ends with the metrics of an uninterrupted run. Every checkpoint is written to a temporary
name and renamed.

Distributed: ``trainer=ddp`` (Lightning starts one process per device), or processes started by
torchrun / SLURM; every process runs this function, rank 0 writes the files.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import warnings
from datetime import timedelta
from pathlib import Path

import hydra
import lightning as L
import torch
from hydra.utils import instantiate
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import WandbLogger
from omegaconf import DictConfig, OmegaConf, open_dict

from medgrounder.core.io import atomic_write, atomic_write_text
from medgrounder.models.tower_pretraining import pretrain_configured_towers
from medgrounder.pipeline.checkpoints import (
    TOWERS_KEY,
    load_stage_checkpoint,
    read_stage_checkpoint,
)
from medgrounder.pipeline.evaluation import evaluate_task, score_rows
from medgrounder.pipeline.figures import draw_panels
from medgrounder.pipeline.reports import write_reports
from medgrounder.tasks import get_task
from medgrounder.tasks.base import PROTOCOLS
from medgrounder.utils.callbacks import AtomicCheckpointIO, RngState
from medgrounder.utils.logging import flatten_metrics, log_wandb_predictions, resolve_wandb_mode
from medgrounder.utils.preflight import check_generation_budgets, check_inputs, stage_budget
from medgrounder.utils.schema import check_values
from medgrounder.utils.sweep import write_status

log = logging.getLogger("medgrounder.train")

STAGE_KEYS = ("task", "max_steps", "max_epochs", "iters_per_epoch", "optim", "trainer", "init_from", "evaluate",
              "max_new_tokens")
# What a run directory's checkpoints depend on: resuming with other values is refused.
IDENTITY_KEYS = ("model", "data", "stages", "seed", "tower_pretraining")
# ... except these, which change speed or where caches live, not results.
NOT_IDENTITY = ("data.num_workers", "data.decode_workers", "tower_pretraining.cache_dir")

# Lightning warns of a mid-epoch resume unless the DataLoader itself has a state_dict; here the
# datamodule holds the training stream's position and resumes it exactly (data/base.py), for
# every dataset, so the warning would be wrong.
warnings.filterwarnings("ignore", message=".*resuming from a checkpoint that ended before the epoch ended.*")


def is_rank_zero() -> bool:
    """Rank 0 of the job (from the launcher's environment before the process group exists)."""
    return rank_zero_only.rank == 0


# ------------------------------------------------------------------ frozen-feature cache
def _processes_per_node(cfg: DictConfig) -> int:
    if os.environ.get("LOCAL_WORLD_SIZE"):
        return int(os.environ["LOCAL_WORLD_SIZE"])
    devices = cfg.trainer.get("devices", 1)
    if isinstance(devices, int) and devices > 0:
        return devices
    if isinstance(devices, str) and devices.isdigit() and int(devices) > 0:
        return int(devices)
    return len(devices) if OmegaConf.is_list(devices) else max(1, torch.cuda.device_count())


def feature_cache_fits(cfg: DictConfig, module, n_images: int) -> bool:
    """Whether ``model.cache_frozen_features`` over ``n_images`` fits this node: each process
    holds its own cache in host memory, and together they may take half of what is available
    now. Says so either way; when it does not fit, training runs the towers every step."""
    import psutil

    each = module.feature_cache_bytes(n_images)
    processes = _processes_per_node(cfg)
    available = psutil.virtual_memory().available
    sizes = (f"{n_images} images x {sum(module.tokens_per_tower)} tokens x {module.encoder.width} float32 = "
             f"{each / 2**30:.2f} GiB per process, x {processes} on this node; {available / 2**30:.1f} GiB available")
    if each * processes <= available / 2:
        log.info("frozen-feature cache: %s", sizes)
        return True
    log.warning("frozen-feature cache does not fit (%s, half of it usable): the towers run every step "
                "(model.cache_frozen_features=false says so up front)", sizes)
    return False


def _cache_device(cfg: DictConfig) -> torch.device:
    """Where the cache is computed: this process's GPU when training uses one (the model is
    still on the host before ``fit``), else the host."""
    if str(cfg.trainer.get("accelerator")) in ("gpu", "cuda", "auto") and torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def autocast_dtype(precision) -> torch.dtype | None:
    """The autocast dtype of Lightning's ``trainer.precision`` (None: full precision)."""
    precision = str(precision)
    return torch.bfloat16 if precision.startswith("bf16") else torch.float16 if precision.startswith("16") else None


# ------------------------------------------------------------------ configuration checks
def selected_stages(cfg: DictConfig) -> list[tuple[int, str, DictConfig]]:
    """``(index in stages, name, stage config)`` of the stages this command runs."""
    names = list(cfg.stages)
    wanted = list(cfg.run_stages) if cfg.get("run_stages") else names
    unknown = [s for s in wanted if s not in names]
    if unknown:
        raise ValueError(f"run_stages: unknown stage(s) {unknown}; the configured stages are {names}")
    return [(names.index(s), s, cfg.stages[s]) for s in wanted]


def resolve_init_from(ref: str | Path, key: str = "init_from") -> Path:
    """A stage checkpoint (``.pt``) or a run directory -> the checkpoint to start from: for a
    directory, its last stage (in that run's order) with a ``checkpoints/<stage>.pt``."""
    path = Path(ref).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        ckpt_dir = path / "checkpoints" if (path / "checkpoints").is_dir() else path
        found = sorted(ckpt_dir.glob("*.pt"))
        if found:
            order = list(read_stage_checkpoint(found[0], mmap=True)["config"]["stages"])
            done = [s for s in order if (ckpt_dir / f"{s}.pt").is_file()]
            if done:
                return ckpt_dir / f"{done[-1]}.pt"
        raise FileNotFoundError(f"{key}={ref}: no stage checkpoint (checkpoints/<stage>.pt) in {path.resolve()}")
    raise FileNotFoundError(f"{key}={ref}: no such file or run directory ({path.resolve()})")


def _hydra_job() -> dict:
    """Multirun facts of the running Hydra job (empty outside Hydra or in a single run)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return {}
    hc = HydraConfig.get()
    if hc.mode != RunMode.MULTIRUN:
        return {}
    return {"sweep": Path(str(hc.sweep.dir)).name, "job": hc.job.override_dirname or str(hc.job.num),
            "launcher": str(hc.launcher.get("_target_", ""))}


def validate(cfg: DictConfig) -> None:
    """Configuration mistakes that would otherwise surface hours later, each naming its key."""
    if not cfg.get("stages"):
        raise ValueError("stages is empty: choose stages with stage=[identify,vqa] or an experiment")
    check_values(cfg)  # types and ranges of the numeric settings (utils/schema.py)
    for name, scfg in cfg.stages.items():
        if not isinstance(scfg, DictConfig):
            raise ValueError(f"stages.{name} must be a mapping, got {scfg!r}")
        unknown = sorted(set(scfg) - set(STAGE_KEYS))
        if unknown:
            raise ValueError(f"stages.{name}.{unknown[0]}: unknown stage key (known: {', '.join(STAGE_KEYS)})")
        if not scfg.get("task"):
            raise ValueError(f"stages.{name}.task is missing (the stage's task, e.g. identify or vqa)")
        ipe = scfg.get("iters_per_epoch")
        if ipe is not None and (not isinstance(ipe, int) or ipe <= 0):
            raise ValueError(f"stages.{name}.iters_per_epoch must be a positive integer or null, got {ipe!r}")
        if scfg.get("max_steps", -1) in (-1, None) and scfg.get("max_epochs", -1) in (-1, None):
            raise ValueError(f"stages.{name}: set max_steps or max_epochs (both are -1)")
        budget = scfg.get("max_new_tokens")
        if budget is not None and (not isinstance(budget, int) or isinstance(budget, bool) or budget <= 0):
            raise ValueError(f"stages.{name}.max_new_tokens must be a positive integer or null, got {budget!r}")
    protocol = cfg.get("protocol", "both")
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    for _, name, scfg in selected_stages(cfg):
        if scfg.get("init_from"):  # read now (safely): a bad file fails before any work
            read_stage_checkpoint(resolve_init_from(scfg.init_from, f"stages.{name}.init_from"), mmap=True)
    # Every datamodule shards its training stream and validation over ranks itself
    # (data/base.py); Lightning's DistributedSampler would replace the resumable stream.
    if cfg.trainer.get("use_distributed_sampler"):
        raise ValueError("trainer.use_distributed_sampler must be false: the datamodule shards the training "
                         "stream over ranks itself (exact resume)")
    every = (cfg.get("checkpointing") or {}).get("every_n_train_steps")
    if every is not None and (not isinstance(every, int) or every < 1):
        raise ValueError(f"checkpointing.every_n_train_steps must be a positive integer or null, got {every!r}")
    job = _hydra_job()
    strategy = cfg.trainer.get("strategy")
    target = strategy.get("_target_", "") if isinstance(strategy, DictConfig) else str(strategy)
    launched_outside = any(k in os.environ for k in ("LOCAL_RANK", "SLURM_PROCID", "TORCHELASTIC_RUN_ID"))
    if (job and job["launcher"].endswith("BasicLauncher") and "DDP" in target.upper()
            and str(cfg.trainer.get("devices")) != "1" and not launched_outside):
        raise ValueError(f"trainer.strategy={target} in a local multirun: Lightning would re-launch the whole sweep "
                         "in each process. Run the sweep under torchrun (torchrun --nproc-per-node N -m "
                         "medgrounder.train -m ...), or on SLURM with hydra/launcher=submitit_slurm")


def _flat(d, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def run_identity(cfg: DictConfig) -> dict:
    ident = json.loads(json.dumps({k: OmegaConf.to_container(cfg[k], resolve=True) if isinstance(cfg.get(k), DictConfig)
                                   else cfg.get(k) for k in IDENTITY_KEYS}, default=str))
    return {k: v for k, v in _flat(ident).items() if k not in NOT_IDENTITY}


def trained_anything(out_dir: Path) -> bool:
    """Whether a run directory holds work to protect: a stage checkpoint, a resume checkpoint or a
    finished evaluation. A run that failed before any of these (a wrong value, a missing file) is
    not one: the corrected command may take its directory over."""
    ckpts = out_dir / "checkpoints"
    return (any(ckpts.glob("*.pt")) or any(ckpts.glob("resume/*/*.ckpt"))
            or any((out_dir / "evaluation").glob("*/metrics.json")))


def check_run_dir(cfg: DictConfig, out_dir: Path) -> None:
    """Refuse to resume a run directory that holds a run of other settings."""
    saved = out_dir / "checkpoints" / "run.json"
    if not cfg.resume or not saved.is_file() or not trained_anything(out_dir):
        return
    before, now = json.loads(saved.read_text()), run_identity(cfg)
    diff = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
    if diff:
        shown = "; ".join(f"{k}: {before.get(k)!r} -> {now.get(k)!r}" for k in diff[:8])
        raise ValueError(f"{out_dir} holds a run with other settings ({shown}{' ...' if len(diff) > 8 else ''}). "
                         "Use another run directory (hydra.run.dir=...), or resume=false to start over there")


# ------------------------------------------------------------------ checkpoints
def save_stage_checkpoint(module, cfg: DictConfig, stage: str, out_dir: Path, global_step: int = 0) -> Path:
    """Trainable weights, a digest of the frozen ones, the resolved config and the stage's
    optimizer steps; written to a temporary name then renamed, so a killed run never leaves a
    half-written checkpoint."""
    path = out_dir / "checkpoints" / f"{stage}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    ckpt = {"stage": stage, "state_dict": module.trainable_state_dict(),
            "frozen_fingerprint": module.frozen_fingerprint(),
            "config": OmegaConf.to_container(cfg, resolve=True), "global_step": global_step}
    if cfg.get("tower_pretraining"):  # tiny towers: kept, so predict needs no cache or training set
        ckpt[TOWERS_KEY] = {k: v.detach().cpu() for k, v in module.encoder.state_dict().items()}
    return atomic_write(path, lambda tmp: torch.save(ckpt, tmp))


def load_weights(module, path: Path) -> int:
    """Load a stage checkpoint's weights (strict); returns the optimizer steps it was trained for."""
    ckpt = read_stage_checkpoint(path)
    load_stage_checkpoint(module, ckpt, path)
    return int(ckpt.get("global_step", 0))


def _write_json(path: Path, payload) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(payload, indent=2, sort_keys=True) + "\n")


# ------------------------------------------------------------------ loggers
def wandb_id(out_dir: Path, stage: str) -> str:
    """The stage's W&B run id, kept in ``wandb_ids.json`` so a resumed stage continues its run."""
    import uuid

    path = out_dir / "wandb_ids.json"
    ids = json.loads(path.read_text()) if path.is_file() else {}
    if stage not in ids:
        ids[stage] = uuid.uuid4().hex[:12]
        if is_rank_zero():
            _write_json(path, ids)
    return ids[stage]


def build_loggers(cfg: DictConfig, stage: str, out_dir: Path | None = None) -> list:
    loggers = []
    job = _hydra_job()
    for name, lcfg in (cfg.get("logger") or {}).items():
        if name == "wandb":
            if resolve_wandb_mode(lcfg.get("mode", "auto")) == "disabled":
                continue
            run_name = f"{cfg.run_name}[{job['job']}]" if job else cfg.run_name
            tags = list(dict.fromkeys([*(lcfg.get("tags") or []), cfg.task_name]))
            # Called, not instantiated: instantiate would also instantiate every _target_ inside
            # run_config (the whole model and trainer).
            kwargs = OmegaConf.to_container(lcfg, resolve=True)
            factory = hydra.utils.get_method(kwargs.pop("_target_"))
            kwargs.update(name=f"{run_name}-{stage}", job_type=lcfg.get("job_type") or stage, tags=tags,
                          run_config=OmegaConf.to_container(cfg, resolve=True),
                          id=wandb_id(out_dir, stage) if out_dir is not None else None)
            logger = factory(**kwargs)
        elif "CSVLogger" in lcfg.get("_target_", ""):
            logger = instantiate(lcfg, version=stage)
        else:
            logger = instantiate(lcfg)
        if logger is not None:
            loggers.append(logger)
    return loggers


def _set_wandb_group(cfg: DictConfig) -> None:
    """``logger.wandb.group: null`` -> the sweep's name in a multirun, else ``run_name``; written
    into the config so checkpoints (and ``evaluate``) carry it."""
    wcfg = (cfg.get("logger") or {}).get("wandb")
    if wcfg is None or wcfg.get("group"):
        return
    job = _hydra_job()
    with open_dict(wcfg):
        wcfg.group = f"{cfg.task_name}:{job['sweep']}" if job else cfg.run_name


# ------------------------------------------------------------------ one stage
def train_stage(cfg: DictConfig, module, datamodule, stage: str, scfg: DictConfig, loggers: list,
                out_dir: Path, resume_from: Path | None):
    resume_dir = out_dir / "checkpoints" / "resume" / stage
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values()]
    ck = cfg.get("checkpointing") or {}
    callbacks.append(RngState())
    if ck.get("every_n_train_steps"):
        callbacks.append(ModelCheckpoint(dirpath=resume_dir, save_top_k=0, save_last=True, enable_version_counter=False,
                                         every_n_train_steps=ck.every_n_train_steps))
    if ck.get("every_n_minutes"):
        callbacks.append(ModelCheckpoint(dirpath=resume_dir, save_top_k=0, save_last=True, enable_version_counter=False,
                                         train_time_interval=timedelta(minutes=ck.every_n_minutes)))
    overrides = OmegaConf.to_container(scfg.trainer, resolve=True) if scfg.get("trainer") else {}
    plugins = [*(instantiate(cfg.trainer.get("plugins")) or []), AtomicCheckpointIO()]
    trainer = instantiate(cfg.trainer, **{**overrides, "max_steps": scfg.max_steps, "max_epochs": scfg.max_epochs,
                                          "logger": loggers or False, "callbacks": callbacks, "plugins": plugins,
                                          "enable_checkpointing": True})
    start = time.perf_counter()
    # weights_only: a resume checkpoint holds tensors and plain types (RngState, the datamodule's
    # position), so unpickling anything else is refused (AtomicCheckpointIO enforces it too).
    trainer.fit(module, datamodule=datamodule, ckpt_path=str(resume_from) if resume_from else None,
                weights_only=True)
    if trainer.interrupted:
        raise RuntimeError(f"stage {stage}: training was interrupted; re-run the command to resume")
    log.info("stage %s trained in %.1f s (%d steps)", stage, time.perf_counter() - start, trainer.global_step)
    return trainer


def _evaluate_stage(cfg, module, datamodule, stage: str, task: str, out_dir: Path, loggers: list, step: int):
    """The stage's test metrics and rows, computed once: kept in ``evaluation/<stage>/``."""
    cache = out_dir / "evaluation" / stage
    protocol = cfg.get("protocol", "both")
    if cfg.resume and (cache / "metrics.json").is_file() and (cache / "predictions.jsonl").is_file():
        rows = [json.loads(line) for line in (cache / "predictions.jsonl").read_text().splitlines()]
        # the generated answers are reused; the scores follow this command's protocol
        metrics = score_rows(rows, datamodule, task, protocol)
        figure = draw_panels(rows, get_task(task), datamodule.for_task(task), cfg.num_figure_images)
        log.info("stage %s: evaluation reused from %s", stage, cache)
        return metrics, rows, figure
    metrics, rows, figure = evaluate_task(module, datamodule, task, cfg.num_figure_images, protocol,
                                          stage_budget(cfg, stage)[0])
    if is_rank_zero():
        cache.mkdir(parents=True, exist_ok=True)
        atomic_write_text(cache / "predictions.jsonl", "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
        _write_json(cache / "metrics.json", metrics)  # last: its presence marks the evaluation done
    for lg in loggers:
        lg.log_metrics({f"test/{k}": v for k, v in flatten_metrics(metrics).items()}, step=step)
        if isinstance(lg, WandbLogger) and is_rank_zero():
            log_wandb_predictions(lg, task, rows, figure)
    return metrics, rows, figure


def _finish(loggers: list) -> None:
    for lg in loggers:
        if isinstance(lg, WandbLogger) and is_rank_zero():  # one W&B run per stage
            lg.experiment.finish()


# ------------------------------------------------------------------ the run
def run(cfg: DictConfig) -> dict:
    """Train and evaluate as configured; returns the metrics written to ``metrics.json``."""
    out_dir = Path(cfg.paths.output_dir)
    validate(cfg)
    stages = selected_stages(cfg)
    check_inputs(cfg)
    if not cfg.resume and is_rank_zero():
        for name in ("checkpoints", "evaluation"):
            shutil.rmtree(out_dir / name, ignore_errors=True)
        (out_dir / "wandb_ids.json").unlink(missing_ok=True)
    check_run_dir(cfg, out_dir)
    _set_wandb_group(cfg)
    if is_rank_zero():
        _write_json(out_dir / "checkpoints" / "run.json", run_identity(cfg))

    # What each stage needs, decided once (every rank sees the same files at its start).
    plan = {}
    for _, stage, _ in stages:
        done = out_dir / "checkpoints" / f"{stage}.pt"
        last = out_dir / "checkpoints" / "resume" / stage / "last.ckpt"
        plan[stage] = "done" if cfg.resume and done.is_file() else last if cfg.resume and last.is_file() else None

    L.seed_everything(cfg.seed, workers=True)
    module = instantiate(cfg.model)
    datamodule = instantiate(cfg.data, tokenizer=module.tokenizer)
    if is_rank_zero():
        datamodule.prepare_data()
    datamodule.setup("fit")
    if cfg.get("check_generation_budgets", True):
        for stage, stats in check_generation_budgets(cfg, module.tokenizer, datamodule, stages).items():
            log.info("stage %s: generation budget %s", stage, stats)
    pretrain_configured_towers(cfg, module, lambda: datamodule)
    fixed = datamodule.fixed_training_images() if module.cache_frozen_features else None
    if fixed is not None and any(p != "done" for p in plan.values()) and feature_cache_fits(cfg, module, len(fixed)):
        module.cache_features(fixed, device=_cache_device(cfg), autocast=autocast_dtype(cfg.trainer.precision))

    base_optim = dict(module.optim)
    metrics: dict = {}
    rows: list[dict] = []
    figures = []
    for position, (index, stage, scfg) in enumerate(stages):
        datamodule.set_task(scfg.task, scfg.get("iters_per_epoch"))
        stage_optim = scfg.get("optim")
        module.optim = {**base_optim, **(OmegaConf.to_container(stage_optim, resolve=True) if stage_optim else {})}
        ckpt = out_dir / "checkpoints" / f"{stage}.pt"
        loggers: list = []
        step = 0
        if plan[stage] == "done":
            step = load_weights(module, ckpt)
            log.info("stage %s: finished before, weights loaded from %s", stage, ckpt)
            if is_rank_zero():
                shutil.rmtree(out_dir / "checkpoints" / "resume" / stage, ignore_errors=True)
        else:
            if scfg.get("init_from"):
                source = resolve_init_from(scfg.init_from, f"stages.{stage}.init_from")
                load_weights(module, source)
                log.info("stage %s: starts from %s", stage, source)
            elif position == 0 and index > 0:
                log.warning("stage %s is not the first of stages %s and has no init_from: it starts from the "
                            "model's initial weights", stage, list(cfg.stages))
            if plan[stage] is not None:
                log.info("stage %s: resuming from %s", stage, plan[stage])
            log.info("stage %s: task [%s]", stage, scfg.task)
            L.seed_everything(cfg.seed + index, workers=True)
            loggers = build_loggers(cfg, stage, out_dir)
            trainer = train_stage(cfg, module, datamodule, stage, scfg, loggers, out_dir, plan[stage])
            step = trainer.global_step
            if is_rank_zero():
                log.info("stage %s checkpoint: %s", stage, save_stage_checkpoint(module, cfg, stage, out_dir, step))
                shutil.rmtree(out_dir / "checkpoints" / "resume" / stage, ignore_errors=True)
        if is_rank_zero() and (out_dir / "checkpoints" / "resume").is_dir() and \
                not any((out_dir / "checkpoints" / "resume").iterdir()):
            (out_dir / "checkpoints" / "resume").rmdir()
        if cfg.evaluate and scfg.get("evaluate", True):
            cached = (out_dir / "evaluation" / stage / "metrics.json").is_file() and cfg.resume
            if not loggers and not cached:  # finished before, but its evaluation was not
                loggers = build_loggers(cfg, stage, out_dir)
            task_metrics, task_rows, figure = _evaluate_stage(cfg, module, datamodule, stage, scfg.task, out_dir,
                                                              loggers, step)
            metrics.update(task_metrics)
            rows.extend(task_rows)
            if figure is not None:
                figures.append(figure)
        _finish(loggers)
    if metrics and is_rank_zero():
        write_reports(out_dir, metrics, rows, figures)
        print((out_dir / "tables.md").read_text())
        log.info("metrics: %s", out_dir / "metrics.json")
    return metrics


@hydra.main(version_base="1.3", config_path="pkg://medgrounder.conf", config_name="train")
def main(cfg: DictConfig) -> dict | None:
    """The Hydra job. Its ``status.json`` says ``running``, ``done`` or ``failed``; in a multirun a
    failing job is logged and recorded and the sweep goes on (the summary reports it)."""
    out_dir = Path(cfg.paths.output_dir)
    if is_rank_zero():
        write_status(out_dir, "running")
    try:
        metrics = run(cfg)
    except Exception as err:
        if is_rank_zero():
            write_status(out_dir, "failed", err)
        if not _hydra_job():
            raise
        log.exception("job failed; the sweep goes on")
        return None
    if is_rank_zero():
        write_status(out_dir, "done")
    return metrics


if __name__ == "__main__":
    main()
