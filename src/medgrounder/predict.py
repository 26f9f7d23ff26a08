"""``python -m medgrounder.predict ckpt_path=RUN/checkpoints/STAGE.pt image=F [phrase=...]``.

One image (DICOM, PNG or JPG) -> the model's greedy answer, its boxes in the image's pixels
and an overlay PNG. The model is rebuilt from the checkpoint's resolved config and its trainable
weights are loaded strictly (:func:`medgrounder.pipeline.checkpoints.load_checkpoint_module`). The
image is prepared as in training: DICOM windowing of the checkpoint's data config, grey 8-bit,
resized to the encoder's square input. The prompt is the checkpoint stage's task (e.g.
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
from medgrounder.data.vindr.dicom import load_dicom_uint8
from medgrounder.metrics.drawing import draw_boxes
from medgrounder.pipeline.checkpoints import load_checkpoint_module
from medgrounder.tasks import Target, get_task, phrase_task

log = logging.getLogger("medgrounder.predict")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}


def read_image(path: str | Path, windowing: str = "dicom") -> np.ndarray:
    """A DICOM (any other suffix is tried as DICOM) or PNG / JPG file -> grey ``uint8 [H, W]``."""
    path = Path(path)
    if path.suffix.lower() in IMAGE_SUFFIXES:
        with Image.open(path) as im:
            return np.asarray(im.convert("L"))
    return load_dicom_uint8(path, windowing=windowing)


@torch.no_grad()
def predict(ckpt_path: str | Path, image: str | Path, out_dir: str | Path, phrase: str | None = None,
            task: str | None = None, max_new_tokens: int | None = None) -> dict:
    """Run the model on one image; writes ``prediction.json`` and ``overlay.png`` into ``out_dir``."""
    module, run_cfg, stage, _ = load_checkpoint_module(ckpt_path)
    module.eval()
    spec = get_task(task) if task else phrase_task() if phrase else get_task(run_cfg.stages[stage].task)
    if phrase is None and spec.takes_phrase:
        raise ValueError(f"task [{spec.name}] needs a phrase")
    data_cfg = run_cfg.data
    original = read_image(image, data_cfg.get("windowing", "dicom"))
    height, width = original.shape
    size = int(run_cfg.model.image_size)
    resized = np.asarray(Image.fromarray(original).resize((size, size), Image.BILINEAR))
    # [refer] asks with the instruction pool's first phrasing, as evaluation does.
    instruction = spec.instruction(Target(text=phrase)) if spec.takes_phrase else phrase
    suffix = spec.prompt_suffix(instruction)
    ids = torch.tensor([module.tokenizer.encode(suffix, add_special_tokens=False)])
    images = images_to_float(torch.from_numpy(resized)[None]).to(module.device)
    answer = module.generate(images, ids.to(module.device), torch.ones_like(ids).to(module.device),
                             max_new_tokens=max_new_tokens)[0]
    row = {"prediction": answer, "image_width": width, "image_height": height}
    boxes = [{"label": name, "box": [round(v, 2) for v in box]} for name, box in spec.predicted_boxes(row)]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result = {"image": str(image), "task": spec.name, "prompt": spec.prompt(instruction),
              "answer": answer, "valid": spec.parse(answer).valid, "boxes": boxes, "image_width": width,
              "image_height": height}
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
