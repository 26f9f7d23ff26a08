"""Pretraining for randomly initialised tiny towers, the demo's stand-in for BiomedCLIP's and
PubMedCLIP's medical pretraining.

The papers freeze towers pretrained on medical images. A frozen *random* tower is a poor stand-in:
on the synthetic set, image-to-image variation is about 6 % of its token features' variance, and
the tiny LLM learns to ignore the image (measured: [vqa] loss identical with the images of the
batch shuffled). So before stage 1 the demo pretrains its tiny towers on the synthetic training
split with dense supervision: a linear head per tower predicts, for every patch token, the
fraction of that patch each of the 22 findings covers. The heads are then dropped and the towers
frozen, as the papers freeze theirs.

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

from medgrounder.data.collate import images_to_float
from medgrounder.data.labels import LOCAL_INDEX, LOCAL_LABELS

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


def box_targets(findings: Sequence[tuple[str, Sequence[float]]], width: float, height: float,
                side: int, classes: Sequence[str] = LOCAL_LABELS) -> np.ndarray:
    """``[(class, pixel box), ...]`` -> ``[side * side, len(classes) * 4]``: for each patch (raster
    order) whose centre lies in a box of class ``c``, that box as fractions of the image
    ``(x1, y1, x2, y2)`` in the four channels of ``c``; zeros elsewhere (the smallest box wins where
    boxes of a class overlap). Dense box regression, as one-stage detectors pretrain their
    features (e.g. FCOS), per class, so that even the mean over an image's tokens says where each
    finding is (its box times its area)."""
    index = {c: i for i, c in enumerate(classes)}
    out = np.zeros((side, side, len(classes), 4), dtype=np.float32)
    centres = (np.arange(side, dtype=np.float32) + 0.5) / side
    for name, (x1, y1, x2, y2) in sorted(findings, key=lambda f: -(f[1][2] - f[1][0]) * (f[1][3] - f[1][1])):
        fx1, fy1, fx2, fy2 = x1 / width, y1 / height, x2 / width, y2 / height
        inside = ((centres >= fy1) & (centres < fy2))[:, None] & ((centres >= fx1) & (centres < fx2))[None, :]
        out[inside, index[name]] = (fx1, fy1, fx2, fy2)
    return out.reshape(side * side, -1)


def towers_of(encoder: nn.Module) -> list[nn.Module]:
    return list(encoder.towers) if hasattr(encoder, "towers") else [encoder]


def pretrain_towers(encoder: nn.Module, images: torch.Tensor, records: Sequence, steps: int,
                    lr: float = 3e-3, warmup_steps: int = 50, weight_decay: float = 0.05,
                    batch_size: int = 32, seed: int = 0, classes: Sequence[str] = LOCAL_LABELS,
                    box_weight: float = 0.0) -> list[float]:
    """Train every tower of ``encoder`` in place on ``images`` (uint8 ``[N, S, S]``) and their
    ``records`` (``findings`` over ``classes``, ``width``, ``height``). AdamW, linear warm-up then
    cosine decay. Returns the loss of each step.

    ``box_weight > 0`` adds dense per-class box regression (:func:`box_targets`, squared error
    summed over the channels, averaged over patches, times ``box_weight``): the stand-in for towers
    that were pretrained to localise (the grounding experiments start from MiniGPT-v2, which
    already grounds objects)."""
    towers = towers_of(encoder)
    sides = [math.isqrt(t.num_tokens) for t in towers]
    targets = [torch.from_numpy(np.stack([coverage_targets(r.findings, r.width, r.height, s, classes)
                                          for r in records])) for s in sides]
    boxes = [torch.from_numpy(np.stack([box_targets(r.findings, r.width, r.height, s, classes) for r in records]))
             for s in sides] if box_weight > 0 else None
    gen = torch.Generator().manual_seed(seed)
    heads = nn.ModuleList([nn.Linear(t.width, len(classes)) for t in towers])
    box_heads = nn.ModuleList([nn.Linear(t.width, 4 * len(classes)) for t in towers])
    params = [*heads.parameters(), *encoder.parameters(), *(box_heads.parameters() if boxes else [])]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)

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
        for k, (tower, head, tgt) in enumerate(zip(towers, heads, targets, strict=True)):
            feats = tower(x)
            loss = loss + nn.functional.binary_cross_entropy_with_logits(head(feats), tgt[idx])
            if boxes is not None:  # squared error per box coordinate, summed over classes
                err = (box_heads[k](feats) - boxes[k][idx]) ** 2
                loss = loss + box_weight * err.sum(-1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
    encoder.requires_grad_(False).eval()
    return losses


def cache_key(encoder_cfg: dict, settings: dict, data_root: str, seed: int) -> str:
    blob = json.dumps({"encoder": encoder_cfg, "settings": settings, "data": str(data_root), "seed": seed},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def load_or_pretrain(encoder: nn.Module, data: Callable[[], Any], settings: dict, cache_dir: str | Path,
                     key: str, seed: int) -> Path:
    """Load the pretrained towers of ``key`` from ``cache_dir``, or pretrain them on the training
    split of ``data()`` (a set-up datamodule, asked for only then) and cache them (written to a
    temporary name, then renamed). ``settings``: :func:`pretrain_towers` keyword arguments. The
    towers keep their ``requires_grad`` flags."""
    trainable = [p.requires_grad for p in encoder.parameters()]
    path = Path(cache_dir) / f"towers-{key}.pt"
    if path.is_file():
        log.info("pretrained tiny towers: %s", path)
    else:
        datamodule = data()
        if hasattr(datamodule, "tower_pretraining_data"):  # MS-CXR (alone or in a multi-task datamodule)
            images, records, classes = datamodule.tower_pretraining_data()
        else:  # VinDr: every training image, with or without findings
            samples = datamodule.samples("train", "vqa")
            images = datamodule.images["train"][torch.tensor([s.index for s in samples])]
            records, classes = [s.record for s in samples], LOCAL_LABELS
        losses = pretrain_towers(encoder, images, records, seed=seed, classes=classes, **settings)
        log.info("tiny towers pretrained: loss %.4f -> %.4f (mean of the last 50 steps)",
                 float(np.mean(losses[:10])), float(np.mean(losses[-50:])))
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(encoder.state_dict(), tmp)
        tmp.replace(path)
        log.info("pretrained tiny towers cached: %s", path)
    encoder.load_state_dict(torch.load(path, map_location="cpu"))
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
