"""Pretraining for randomly initialised tiny towers, the demo's stand-in for BiomedCLIP's and
PubMedCLIP's medical pretraining.

The papers freeze towers pretrained on medical images. A frozen *random* tower is a poor stand-in:
on the synthetic set, image-to-image variation is about 6 % of its token features' variance, and
the tiny LLM learns to ignore the image (measured: [vqa] loss identical with the images of the
batch shuffled). So before stage 1 the demo pretrains its tiny towers on the synthetic training
split with dense supervision, as a detector's backbone is trained: linear heads on the patch
tokens name the finding each token lies in, regress that finding's box, and name each finding
from the mean of its tokens (:func:`pretrain_towers`). The heads are then dropped and the towers
frozen, as the papers freeze theirs. What the LLM can learn is bounded by these towers: a class
the towers cannot tell apart at a finding's location, the LLM cannot name.

The result is cached by a digest of everything it depends on (tower config, data, seed,
settings), so evaluation rebuilds the same towers and the stage checkpoints' frozen-weight
fingerprint holds.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from medgrounder.core.io import atomic_write
from medgrounder.core.labels import LOCAL_INDEX, LOCAL_LABELS
from medgrounder.data.collate import images_to_float
from medgrounder.models.checkpoints import read_checkpoint
from medgrounder.models.vlm import fused_adamw_ok

log = logging.getLogger(__name__)


def coverage_targets(findings: Sequence[tuple[str, Sequence[float]]], width: float, height: float,
                     side: int, classes: Sequence[str] = LOCAL_LABELS) -> np.ndarray:
    """``[(class, pixel box), ...]`` -> ``[side * side, len(classes)]`` (default the 22 VinDr
    local labels): the fraction of each patch (raster order, as the towers emit tokens) that each
    class's boxes cover (the largest box wins)."""
    index = LOCAL_INDEX if classes is LOCAL_LABELS else {c: i for i, c in enumerate(classes)}
    out = np.zeros((side, side, len(classes)), dtype=np.float32)
    cells = np.arange(side, dtype=np.float32)
    for name, (x1, y1, x2, y2) in findings:
        gx1, gx2 = x1 / width * side, x2 / width * side
        gy1, gy2 = y1 / height * side, y2 / height * side
        ox = np.clip(np.minimum(cells + 1, gx2) - np.maximum(cells, gx1), 0, 1)
        oy = np.clip(np.minimum(cells + 1, gy2) - np.maximum(cells, gy1), 0, 1)
        c = index[name]
        out[:, :, c] = np.maximum(out[:, :, c], oy[:, None] * ox[None, :])
    return out.reshape(side * side, -1)


def _centres_inside(box: Sequence[float], width: float, height: float, side: int) -> np.ndarray:
    """``[side, side]`` bool: the patches (raster order) whose centre lies in the pixel ``box``."""
    x1, y1, x2, y2 = box
    centres = (np.arange(side, dtype=np.float32) + 0.5) / side
    rows = (centres >= y1 / height) & (centres < y2 / height)
    cols = (centres >= x1 / width) & (centres < x2 / width)
    return rows[:, None] & cols[None, :]


def box_targets(findings: Sequence[tuple[str, Sequence[float]]], width: float, height: float,
                side: int) -> np.ndarray:
    """``[(class, pixel box), ...]`` -> ``[side * side, 4]``: for each patch (raster order) whose
    centre lies in a box, that box as fractions of the image ``(x1, y1, x2, y2)``; zeros elsewhere
    (the smallest box wins where boxes overlap). Dense box regression, as one-stage detectors
    (FCOS) train their features: every token of a finding then says where the whole finding is."""
    out = np.zeros((side, side, 4), dtype=np.float32)
    for _, (x1, y1, x2, y2) in sorted(findings, key=lambda f: -(f[1][2] - f[1][0]) * (f[1][3] - f[1][1])):
        out[_centres_inside((x1, y1, x2, y2), width, height, side)] = (x1 / width, y1 / height, x2 / width, y2 / height)
    return out.reshape(side * side, 4)


def finding_masks(findings: Sequence[tuple[str, Sequence[float]]], width: float, height: float,
                  side: int, classes: Sequence[str] = LOCAL_LABELS) -> tuple[np.ndarray, np.ndarray]:
    """``[(class, pixel box), ...]`` -> class indices ``[F]`` and patch masks ``[F, side * side]``
    (raster order): the patches whose centre lies in each box, or the one holding its centre when
    the box is smaller than a patch."""
    index = {c: i for i, c in enumerate(classes)}
    masks = np.zeros((len(findings), side, side), dtype=bool)
    for f, (_, (x1, y1, x2, y2)) in enumerate(findings):
        masks[f] = _centres_inside((x1, y1, x2, y2), width, height, side)
        if not masks[f].any():
            row, col = int((y1 / height + y2 / height) / 2 * side), int((x1 / width + x2 / width) / 2 * side)
            masks[f, min(row, side - 1), min(col, side - 1)] = True
    return np.array([index[c] for c, _ in findings], dtype=np.int64), masks.reshape(len(findings), side * side)


def finding_loss(feats: torch.Tensor, masks: torch.Tensor, labels: torch.Tensor, head: nn.Module) -> torch.Tensor:
    """Each finding's tokens averaged, then classified: ``feats`` ``[B, P, C]``, ``masks``
    ``[B, F, P]`` (:func:`finding_masks`, padded), ``labels`` ``[B, F]`` (-1 for padding); the
    cross-entropy of ``head`` over the findings. It makes the mean of a finding's tokens, which is
    what the LLM's attention reads, name the finding."""
    weights = masks.to(feats.dtype)
    pooled = weights @ feats / weights.sum(-1, keepdim=True).clamp(min=1)
    valid = labels >= 0
    if not valid.any():
        return feats.new_zeros(())
    return nn.functional.cross_entropy(head(pooled[valid]), labels[valid])


def _padded_findings(records: Sequence, side: int, classes: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    per = [finding_masks(r.findings, r.width, r.height, side, classes) for r in records]
    most = max([len(lab) for lab, _ in per] + [1])
    labels = torch.full((len(per), most), -1, dtype=torch.long)
    masks = torch.zeros((len(per), most, side * side), dtype=torch.bool)
    for i, (lab, m) in enumerate(per):
        labels[i, : len(lab)] = torch.from_numpy(lab)
        masks[i, : len(lab)] = torch.from_numpy(m)
    return labels, masks


def dense_loss(class_logits: torch.Tensor, coverage: torch.Tensor, box_pred: torch.Tensor | None = None,
               boxes: torch.Tensor | None = None, box_weight: float = 1.0) -> torch.Tensor:
    """Per-patch loss of :func:`pretrain_towers`. ``class_logits`` ``[B, P, C + 1]`` (the last is
    background), ``coverage`` ``[B, P, C]`` (:func:`coverage_targets`): cross-entropy against the
    coverage as soft targets, background taking what the findings leave. Plus, with ``box_pred``
    (logits) and ``boxes`` ``[B, P, 4]`` (:func:`box_targets`): ``box_weight`` times the L1 error
    of ``sigmoid(box_pred)``, coordinates summed, averaged over the patches inside a box.

    A softmax over classes and background, unlike one sigmoid per class, is not swamped by the
    empty patches (a finding covers about 2 % of an image)."""
    background = (1 - coverage.sum(-1, keepdim=True)).clamp(min=0)
    target = torch.cat([coverage, background], dim=-1)
    target = target / target.sum(-1, keepdim=True)
    loss = -(target * class_logits.log_softmax(-1)).sum(-1).mean()
    if box_pred is not None:
        inside = (boxes[..., 2] > 0).to(box_pred.dtype)
        err = (box_pred.sigmoid() - boxes).abs().sum(-1)
        loss = loss + box_weight * (err * inside).sum() / inside.sum().clamp(min=1)
    return loss


def pretrain_towers(encoder: nn.Module, images: torch.Tensor, records: Sequence, steps: int,
                    lr: float = 6e-3, warmup_steps: int = 50, weight_decay: float = 0.05,
                    batch_size: int = 32, seed: int = 0, classes: Sequence[str] = LOCAL_LABELS,
                    box_weight: float = 1.0, finding_weight: float = 1.0) -> list[float]:
    """Train every tower of ``encoder`` in place on ``images`` (uint8 ``[N, S, S]``) and their
    ``records`` (``findings`` over ``classes``, ``width``, ``height``). Per tower, linear heads on
    the patch tokens: one classifies each token (:func:`dense_loss`); with ``box_weight > 0`` one
    regresses the box of the finding the token lies in; with ``finding_weight > 0`` one classifies
    each finding from the mean of its tokens (:func:`finding_loss`), each term times its weight.
    AdamW, linear warm-up then cosine decay. Returns the loss of each step."""
    towers = list(encoder.towers)
    sides = [math.isqrt(t.num_tokens) for t in towers]
    coverage = [torch.from_numpy(np.stack([coverage_targets(r.findings, r.width, r.height, s, classes)
                                           for r in records])) for s in sides]
    boxes = [torch.from_numpy(np.stack([box_targets(r.findings, r.width, r.height, s) for r in records]))
             for s in sides]
    found = [_padded_findings(records, s, classes) for s in sides]
    gen = torch.Generator().manual_seed(seed)
    heads = nn.ModuleList([nn.Linear(t.width, len(classes) + 1) for t in towers])
    box_heads = nn.ModuleList([nn.Linear(t.width, 4) for t in towers]) if box_weight > 0 else None
    finding_heads = nn.ModuleList([nn.Linear(t.width, len(classes)) for t in towers]) if finding_weight > 0 else None
    params = [*heads.parameters(), *encoder.parameters(),
              *(box_heads.parameters() if box_heads else []), *(finding_heads.parameters() if finding_heads else [])]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=fused_adamw_ok(params))

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return 0.5 * (1 + math.cos(math.pi * (step - warmup_steps) / max(1, steps - warmup_steps)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    encoder.train().requires_grad_(True)
    losses: list[float] = []
    order = torch.randperm(len(images), generator=gen)
    pos = 0
    bar = tqdm(range(steps), desc="pretrain tiny towers")
    for _ in bar:
        if pos + batch_size > len(order):
            order, pos = torch.randperm(len(images), generator=gen), 0
        idx = order[pos : pos + batch_size]
        pos += batch_size
        x = images_to_float(images[idx])
        loss = 0.0
        for k, tower in enumerate(towers):
            feats = tower(x)
            box_pred = box_heads[k](feats) if box_heads is not None else None
            loss = loss + dense_loss(heads[k](feats), coverage[k][idx], box_pred, boxes[k][idx], box_weight)
            if finding_heads is not None:
                labels, masks = found[k]
                loss = loss + finding_weight * finding_loss(feats, masks[idx], labels[idx], finding_heads[k])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
    encoder.requires_grad_(False).eval()
    return losses


#: Part of the cache key: bump it when :func:`pretrain_towers` changes what it learns, so towers
#: cached by an older version are not reused under the same settings.
PRETRAINING_VERSION = 2


def cache_key(encoder_cfg: dict, settings: dict, data_root: str, seed: int) -> str:
    blob = json.dumps({"encoder": encoder_cfg, "settings": settings, "data": str(data_root), "seed": seed,
                       "version": PRETRAINING_VERSION}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def load_or_pretrain(encoder: nn.Module, data: Callable[[], Any], settings: dict, cache_dir: str | Path,
                     key: str, seed: int) -> Path:
    """Load the pretrained towers of ``key`` from ``cache_dir``, or pretrain them on the boxed
    training images of ``data()`` (a set-up datamodule, asked for only then,
    :meth:`~medgrounder.data.base.GroundingDataModule.boxed_training_images`) and cache them (written to a
    temporary name, then renamed). ``settings``: :func:`pretrain_towers` keyword arguments. The
    towers keep their ``requires_grad`` flags."""
    trainable = [p.requires_grad for p in encoder.parameters()]
    path = Path(cache_dir) / f"towers-{key}.pt"
    if path.is_file():
        log.info("pretrained tiny towers: %s", path)
    else:
        boxed = data().boxed_training_images()
        if boxed is None:
            raise ValueError("tower pretraining needs training images with boxes; this data has none")
        losses = pretrain_towers(encoder, boxed.images, boxed.records, seed=seed, classes=boxed.classes, **settings)
        log.info("tiny towers pretrained: loss %.4f -> %.4f (mean of the last 50 steps)",
                 float(np.mean(losses[:10])), float(np.mean(losses[-50:])))
        path.parent.mkdir(parents=True, exist_ok=True)
        state = encoder.state_dict()
        atomic_write(path, lambda tmp: torch.save(state, tmp))
        log.info("pretrained tiny towers cached: %s", path)
    encoder.load_state_dict(read_checkpoint(path))
    for p, flag in zip(encoder.parameters(), trainable, strict=True):
        p.requires_grad_(flag)
    return path


def pretrain_configured_towers(cfg, module, data: Callable[[], Any]) -> Path | None:
    """Apply ``cfg.tower_pretraining`` (null: nothing) to ``module.encoder``; training and every
    rebuild from a checkpoint call it, so they get the same towers. ``data()`` gives the set-up
    datamodule, needed only when the towers are not cached yet."""
    from omegaconf import OmegaConf

    if not cfg.get("tower_pretraining"):
        return None
    settings = OmegaConf.to_container(cfg.tower_pretraining, resolve=True)
    cache_dir = settings.pop("cache_dir")
    key = cache_key(OmegaConf.to_container(cfg.model.encoder, resolve=True), settings, cfg.data.root, cfg.seed)
    return load_or_pretrain(module.encoder, data, settings, cache_dir, key, cfg.seed)
