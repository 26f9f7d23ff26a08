"""Box overlays as in LiteGPT figure 3: ground truth in green, predictions in red."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = ["GT_COLOR", "PRED_COLOR", "draw_boxes", "save_grid"]

GT_COLOR = (0, 200, 0)
PRED_COLOR = (230, 0, 0)


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has no sized default font
        return ImageFont.load_default()


def draw_boxes(
    image: np.ndarray | Image.Image,
    gt: Sequence[tuple[str, Sequence[float]]],
    pred: Sequence[tuple[str, Sequence[float]]],
    title: str | None = None,
) -> Image.Image:
    """Draw ``(class, pixel box)`` lists on a grayscale uint8 image (2-D array; RGB or PIL also
    accepted). Ground truth is green with its label above the box, predictions red with the
    label below; ``title`` is written in the top-left corner. Returns a new RGB image."""
    if isinstance(image, Image.Image):
        img = image.convert("RGB")
    else:
        arr = np.asarray(image)
        if arr.dtype != np.uint8:
            arr = np.clip(arr, 0, 255).astype(np.uint8)
        img = Image.fromarray(arr).convert("RGB")
    draw = ImageDraw.Draw(img)
    w, h = img.size
    width = max(1, round(min(w, h) / 200))
    font = _font(max(10, round(min(w, h) / 40)))
    for boxes, color, above in ((gt, GT_COLOR, True), (pred, PRED_COLOR, False)):
        for name, box in boxes:
            x1, y1, x2, y2 = (float(v) for v in box)
            draw.rectangle(
                (min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)), outline=color, width=width
            )
            if name:
                _, top, _, bottom = draw.textbbox((0, 0), name, font=font)
                ty = min(y1, y2) - (bottom - top) - 2 * width if above else max(y1, y2) + width
                ty = min(max(ty, 0), h - (bottom - top))
                draw.text((max(min(x1, x2), 0), ty - top), name, fill=color, font=font)
    if title:
        draw.text((4, 4), title, fill=(255, 255, 0), font=font)
    return img


def save_grid(panels: Sequence[Image.Image], out_png: str | Path, cols: int = 4) -> Path:
    """Tile ``panels`` row-major into ``cols`` columns (cells sized to the largest panel, black
    background) and save a PNG, creating parent folders. Returns the path."""
    if not panels:
        raise ValueError("save_grid needs at least one panel")
    cols = max(1, min(cols, len(panels)))
    rows = -(-len(panels) // cols)
    cw = max(p.width for p in panels)
    ch = max(p.height for p in panels)
    grid = Image.new("RGB", (cols * cw, rows * ch))
    for i, panel in enumerate(panels):
        grid.paste(panel.convert("RGB"), ((i % cols) * cw, (i // cols) * ch))
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    grid.save(out, format="PNG")
    return out
