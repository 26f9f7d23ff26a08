"""Lightning pieces for long runs: throughput and GPU memory on the dashboards, RNG state in the
resume checkpoints, and checkpoint files written atomically."""

from __future__ import annotations

import pickle
import random
import time
from typing import Any

import numpy as np
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import Callback

from medgrounder.core.io import atomic_write
from medgrounder.models.checkpoints import read_checkpoint


class Throughput(Callback):
    """Every ``log_every_n_steps`` optimizer steps: ``perf/samples_per_s`` and ``perf/tokens_per_s``
    over all ranks (tokens: what the LLM reads, prompt prefix + visual tokens + text, padding
    excluded), wall clock since the previous log, data loading included; on CUDA also
    ``perf/gpu_mem_gb`` (peak allocated on this rank since the previous log) and
    ``perf/gpu_mem_reserved_gb``."""

    def __init__(self, log_every_n_steps: int = 10):
        self.every = max(1, int(log_every_n_steps))
        self._reset(None)

    def _reset(self, now: float | None) -> None:
        self._t0 = now
        self._samples = 0
        self._tokens = 0

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if self._t0 is None:
            self._reset(time.perf_counter())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        n = len(batch["images"])
        head = len(getattr(pl_module, "prefix_ids", ())) + getattr(pl_module, "num_visual_tokens", 0)
        self._samples += n
        self._tokens += int(batch["text_mask"].sum()) + n * head
        step = trainer.global_step
        if step == 0 or step % self.every or getattr(self, "_last_step", None) == step:
            return
        self._last_step = step
        counts = torch.tensor([self._samples, self._tokens], dtype=torch.float64, device=pl_module.device)
        counts = trainer.strategy.reduce(counts, reduce_op="sum")
        now = time.perf_counter()
        elapsed = max(now - (self._t0 or now), 1e-9)
        metrics = {"perf/samples_per_s": float(counts[0]) / elapsed, "perf/tokens_per_s": float(counts[1]) / elapsed}
        if torch.cuda.is_available() and pl_module.device.type == "cuda":
            metrics["perf/gpu_mem_gb"] = torch.cuda.max_memory_allocated(pl_module.device) / 2**30
            metrics["perf/gpu_mem_reserved_gb"] = torch.cuda.memory_reserved(pl_module.device) / 2**30
            torch.cuda.reset_peak_memory_stats(pl_module.device)
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=step)
        self._reset(time.perf_counter())


def rng_state() -> dict[str, Any]:
    """Plain types and tensors only, so checkpoints load with ``weights_only=True``."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(), "numpy": [kind, keys.tolist(), pos, has_gauss, gauss],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss_next = state["python"]  # torch.load gives the tuples back as tuples or lists
    random.setstate((version, tuple(internal), gauss_next))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class RngState(Callback):
    """Every rank's RNG states (python, numpy, torch, CUDA) go into the checkpoint and come back
    when training restarts, so dropout and any sampling continue as if never interrupted.

    Restored at ``on_train_start`` (after setup, before the first batch) rather than at load:
    nothing between a checkpoint at the end of a batch and the next batch draws from the global
    RNG (the data loaders draw their seeds from their own generators)."""

    def __init__(self):
        self._pending: dict[str, Any] | None = None

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        states: list = [rng_state()]
        if trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            states = [None] * trainer.world_size
            torch.distributed.all_gather_object(states, rng_state())
        checkpoint["rng_states"] = states

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        states = checkpoint.get("rng_states")
        if states:
            self._pending = states[trainer.global_rank] if trainer.global_rank < len(states) else states[0]

    def on_train_start(self, trainer, pl_module) -> None:
        if self._pending is not None:
            set_rng_state(self._pending)
            self._pending = None


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint under a temporary name and renames it over ``<name>``: a run killed
    while writing leaves the previous checkpoint intact. Reads tensors and plain containers only
    (``weights_only=True`` whatever the caller asks): unpickling anything else could run code."""

    def load_checkpoint(self, path, map_location: Any | None = None, weights_only: bool | None = None) -> dict[str, Any]:
        kwargs = {} if map_location is None else {"map_location": map_location}
        try:
            return super().load_checkpoint(path, weights_only=True, **kwargs)
        except pickle.UnpicklingError:
            read_checkpoint(path)  # raises UnsafeCheckpointError, naming the file and what it holds
            raise

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        save = super().save_checkpoint
        atomic_write(path, lambda tmp: save(checkpoint, tmp, storage_options))
