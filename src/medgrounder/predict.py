"""``python -m medgrounder.predict ckpt_path=RUN/checkpoints/STAGE.pt image=F [phrase=...]``.

One image (DICOM, PNG or JPG) -> the model's greedy answer, its boxes in the image's pixels
and an overlay PNG. The model is rebuilt from the checkpoint's resolved config and its trainable
weights are loaded strictly (:func:`medgrounder.pipeline.checkpoints.load_checkpoint_module`). The
checkpoint is self-contained: it needs neither the training set nor the tower cache (pretrained
tiny towers are kept in it). The image is read and checked before the model is built, and
prepared as in training: DICOM windowing of the checkpoint's data config, grey 8-bit, resized to
the encoder's square input. A 16-bit PNG (or any integer greyscale) is scaled by its bit depth
(:func:`grey_uint8`), never clipped; a file that cannot be decoded is refused, naming it. The prompt is the checkpoint stage's task (e.g.
``[identify]``), or with a phrase ``[refer]`` and the phrase in the instruction pool's first phrasing.

Writes into the run directory (``paths.output_dir``): ``prediction.json`` (``image``, ``task``,
``prompt``, ``answer``, ``valid``, ``boxes`` = ``[{label, box}]`` with ``box`` in pixels,
``image_width``, ``image_height``) and ``overlay.png`` (predicted boxes in red). Prints the JSON.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import hydra
import numpy as np
import torch
from omegaconf import DictConfig
from PIL import Image

from medgrounder.core.io import atomic_write, atomic_write_text
from medgrounder.data.collate import images_to_float
from medgrounder.data.vindr.dicom import DicomReadError, load_dicom_uint8
from medgrounder.metrics.drawing import draw_boxes
from medgrounder.models.decoding import token_table
from medgrounder.pipeline.checkpoints import load_checkpoint_module, read_stage_checkpoint
from medgrounder.pipeline.generation import scored_row
from medgrounder.tasks import Target, get_task, phrase_task

log = logging.getLogger("medgrounder.predict")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}


class ImageReadError(ValueError):
    """An input image that cannot be read: the message names the file and the reason."""


def grey_uint8(im: Image.Image) -> np.ndarray:
    """A decoded image -> grey ``uint8 [H, W]``. Integer greyscale wider than 8 bits (16-bit PNG:
    Pillow's ``I;16`` / ``I``) is scaled by its bit depth, the fewest bits that hold its largest
    value (12 for values up to 4095, as X-ray detectors store them; 16 up to 65535), so
    ``value / (2**bits - 1) * 255`` rounded; Pillow's ``convert("L")`` would clip it to white."""
    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        arr = np.asarray(im).astype(np.int64)
        if arr.size and arr.min() < 0:
            raise ValueError(f"negative pixel values (mode {im.mode}): not a greyscale image this command reads")
        bits = max(8, int(arr.max(initial=0)).bit_length())
        return np.rint(arr * (255.0 / (2**bits - 1))).astype(np.uint8)
    if im.mode == "F":
        raise ValueError("floating-point pixels (mode F): save the image as 8- or 16-bit integers")
    return np.asarray(im.convert("L"))


def read_image(path: str | Path, windowing: str = "dicom") -> np.ndarray:
    """A DICOM (any other suffix is tried as DICOM) or PNG / JPG file -> grey ``uint8 [H, W]``;
    :class:`ImageReadError` naming the file when it is missing, truncated or not an image."""
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"image {path}: no such file")
    try:
        if path.suffix.lower() in IMAGE_SUFFIXES:
            with Image.open(path) as im:
                im.load()  # decodes every byte now: a truncated file fails here, not later
                pixels = grey_uint8(im)
        else:
            pixels = load_dicom_uint8(path, windowing=windowing)
    except DicomReadError as e:
        raise ImageReadError(f"image {path}: cannot read it as DICOM: {e.reason}") from e
    except (OSError, SyntaxError, ValueError) as e:  # Pillow: truncated / unidentified files
        raise ImageReadError(f"image {path}: cannot read it: {e}") from e
    if pixels.ndim != 2 or min(pixels.shape) < 1:
        raise ImageReadError(f"image {path}: expected a 2-D image, got shape {pixels.shape}")
    return pixels


@torch.no_grad()
def predict(ckpt_path: str | Path, image: str | Path, out_dir: str | Path, phrase: str | None = None,
            task: str | None = None, max_new_tokens: int | None = None) -> dict:
    """Run the model on one image; writes ``prediction.json`` and ``overlay.png`` into ``out_dir``.
    The checkpoint's config, the task and the image are checked before the model is built."""
    stored = read_stage_checkpoint(ckpt_path, mmap=True)
    stage_task = stored["config"]["stages"][stored["stage"]]["task"]
    spec = get_task(task) if task else phrase_task() if phrase else get_task(stage_task)
    if phrase is None and spec.takes_phrase:
        raise ValueError(f"task [{spec.name}] needs a phrase")
    original = read_image(image, (stored["config"].get("data") or {}).get("windowing", "dicom"))
    height, width = original.shape
    del stored
    module, run_cfg, _, _ = load_checkpoint_module(ckpt_path)
    module.eval()
    size = int(run_cfg.model.image_size)
    resized = np.asarray(Image.fromarray(original).resize((size, size), Image.BILINEAR))
    # [refer] asks with the instruction pool's first phrasing, as evaluation does.
    instruction = spec.instruction(Target(text=phrase)) if spec.takes_phrase else phrase
    suffix = spec.prompt_suffix(instruction)
    ids = torch.tensor([module.tokenizer.encode(suffix, add_special_tokens=False)])
    images = images_to_float(torch.from_numpy(resized)[None]).to(module.device)
    decoded = module.generate_decoded(images, ids.to(module.device), torch.ones_like(ids).to(module.device),
                                      max_new_tokens=max_new_tokens, task=spec.name)[0]
    row = scored_row({"image_width": width, "image_height": height, "prompt": spec.prompt(instruction)}, decoded, spec,
                     token_table(module.tokenizer), module.box_score)
    answer = decoded.text
    boxes = [{k: b[k] for k in ("label", "box", "score")} for b in row.get("prediction_boxes", [])]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result = {"image": str(image), "task": spec.name, "prompt": spec.prompt(instruction),
              "answer": answer, "valid": spec.parse(answer).valid, "boxes": boxes, "image_width": width,
              "image_height": height, **({"no_finding_score": row["no_finding_score"]} if "no_finding_score" in row else {})}
    atomic_write_text(out / "prediction.json", json.dumps(result, indent=2) + "\n")
    overlay = draw_boxes(original, [], [(b["label"], b["box"]) for b in boxes], title=Path(image).name[:24])
    atomic_write(out / "overlay.png", lambda tmp: overlay.save(tmp, format="PNG"))
    return result


@hydra.main(version_base="1.3", config_path="pkg://medgrounder.conf", config_name="predict")
def main(cfg: DictConfig) -> None:
    result = predict(cfg.ckpt_path, cfg.image, cfg.paths.output_dir, cfg.phrase, cfg.task, cfg.max_new_tokens)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
