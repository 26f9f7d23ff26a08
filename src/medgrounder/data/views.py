"""Image views for training and evaluation: random crops that move boxes with the image, their
inverse for evaluation, image decoding into a square cache, and the seeded generator of each item.

A *view* is a region ``(x1, y1, x2, y2)`` of the original image in original pixels, resized to
the model's ``S x S`` input (PFMVG section 3.1 trains on random 448 crops; evaluation views the
whole image). Boxes follow the same affine map, so the answer's 0-100 grid is relative to what
the model sees, and :func:`view_grid_to_pixels` maps a predicted grid box back to original
pixels. Coordinates are continuous with pixel edges at integers (``0`` is the left edge, ``W`` the
right one), the convention of PIL's ``resize(box=...)`` that draws the pixels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from medgrounder.core.boxes import Box

__all__ = [
    "CropSettings",
    "View",
    "boxes_into_view",
    "item_rng",
    "load_square_gray",
    "read_square_gray",
    "render_view",
    "sample_crop",
    "view_grid",
    "view_grid_to_pixels",
]


@dataclass(frozen=True)
class View:
    """A region of the original image, in original pixels."""

    x1: float
    y1: float
    x2: float
    y2: float

    @classmethod
    def full(cls, width: float, height: float) -> View:
        return cls(0.0, 0.0, float(width), float(height))

    @property
    def width(self) -> float:
        return self.x2 - self.x1

    @property
    def height(self) -> float:
        return self.y2 - self.y1


@dataclass(frozen=True)
class CropSettings:
    """Random crop: area fraction in ``scale``, aspect ratio (width / height, log-uniform) in
    ``ratio``; a box keeps at least ``min_visible`` of its area or is dropped; ``max_tries`` crops
    are drawn before the whole image is used."""

    scale: tuple[float, float] = (0.6, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    min_visible: float = 0.3
    max_tries: int = 10

    def __post_init__(self):
        if not 0 < self.scale[0] <= self.scale[1] <= 1:
            raise ValueError(f"crop scale must satisfy 0 < lo <= hi <= 1, got {self.scale}")
        if not 0 < self.ratio[0] <= self.ratio[1]:
            raise ValueError(f"crop ratio must satisfy 0 < lo <= hi, got {self.ratio}")
        if not 0 <= self.min_visible <= 1:
            raise ValueError(f"crop min_visible must be in [0, 1], got {self.min_visible}")


def sample_crop(rng: np.random.Generator, width: float, height: float, settings: CropSettings) -> View:
    """A random region of a ``width x height`` image (area and aspect ratio as ``settings`` says,
    sides clipped to the image), uniformly placed inside it."""
    area = rng.uniform(*settings.scale) * width * height
    ratio = math.exp(rng.uniform(math.log(settings.ratio[0]), math.log(settings.ratio[1])))
    cw = min(float(width), math.sqrt(area * ratio))
    ch = min(float(height), math.sqrt(area / ratio))
    x1 = rng.uniform(0.0, width - cw)
    y1 = rng.uniform(0.0, height - ch)
    return View(x1, y1, x1 + cw, y1 + ch)


def boxes_into_view(boxes: Sequence[Sequence[float]], view: View, min_visible: float = 0.0) -> list[Box | None]:
    """Original-pixel boxes -> boxes in view pixels (origin at the view's corner), clipped to it.

    A box whose visible part is empty, or smaller than ``min_visible`` of its own area, becomes
    ``None`` (cropped away). The output is aligned with the input."""
    out: list[Box | None] = []
    for x1, y1, x2, y2 in boxes:
        cx1, cy1 = max(x1, view.x1), max(y1, view.y1)
        cx2, cy2 = min(x2, view.x2), min(y2, view.y2)
        visible = max(cx2 - cx1, 0.0) * max(cy2 - cy1, 0.0)
        area = (x2 - x1) * (y2 - y1)
        if visible <= 0 or visible < min_visible * area:
            out.append(None)
        else:
            out.append((cx1 - view.x1, cy1 - view.y1, cx2 - view.x1, cy2 - view.y1))
    return out


def view_grid(box: Sequence[float], view: View) -> tuple[int, int, int, int]:
    """A box in view pixels -> the 0-100 grid of the view (round half up, clamped)."""
    x1, y1, x2, y2 = box
    vals = (x1 / view.width, y1 / view.height, x2 / view.width, y2 / view.height)
    return tuple(min(100, max(0, math.floor(v * 100 + 0.5))) for v in vals)  # type: ignore[return-value]


def view_grid_to_pixels(grid: Sequence[float], view: View) -> Box:
    """A 0-100 grid box of the view -> original pixels (for the full view this is
    :func:`medgrounder.core.boxes.from_grid`)."""
    g1, g2, g3, g4 = grid
    return (view.x1 + g1 / 100 * view.width, view.y1 + g2 / 100 * view.height,
            view.x1 + g3 / 100 * view.width, view.y1 + g4 / 100 * view.height)


def render_view(cache: np.ndarray, width: float, height: float, view: View, size: int) -> np.ndarray:
    """The view's pixels at ``size x size``, read from ``cache`` (``uint8 [C, C]``: the whole
    original ``width x height`` image resized to a square), bilinear."""
    c = cache.shape[0]
    if view == View.full(width, height) and c == size:
        return cache
    box = (view.x1 * c / width, view.y1 * c / height, view.x2 * c / width, view.y2 * c / height)
    return np.asarray(Image.fromarray(cache).resize((size, size), Image.BILINEAR, box=box))


def read_square_gray(path: str | Path, size: int) -> tuple[np.ndarray, int, int]:
    """An image file (JPG / PNG) -> ``(uint8 [size, size] grey, original width, height)``, aspect
    ratio not kept (the datasets' boxes are relative to the original width and height). Large
    JPEGs are decoded at a reduced scale first (``draft``), much faster and nothing lost at
    ``size``."""
    with Image.open(path) as im:
        width, height = im.size
        im.draft("L", (size, size))
        img = im.convert("L")
        arr = np.asarray(img.resize((size, size), Image.BILINEAR) if img.size != (size, size) else img)
    return arr, width, height


def load_square_gray(path: str | Path, size: int) -> np.ndarray:
    """:func:`read_square_gray` without the original size."""
    return read_square_gray(path, size)[0]


def item_rng(seed: int, epoch: int, index: int, salt: int = 0) -> np.random.Generator:
    """The generator of one item in one pass of the training stream (``epoch``: the pass), so a
    run is reproducible whatever ``num_workers`` is."""
    return np.random.default_rng([seed, epoch, index, salt])


def to_tensor(img: np.ndarray) -> torch.Tensor:
    """A copy as a tensor (cache rows and PIL buffers are shared or read-only)."""
    return torch.from_numpy(np.array(img, dtype=np.uint8, copy=True))
