"""torchmetrics wrappers of the plain metric functions, synchronised across DDP ranks.

Each metric accumulates ``predictions.jsonl`` rows (dicts; design section 6) with
``update(rows)``, or ``update(predictions, metas)`` where each ``meta`` is a batch's ``meta``
entry (``id``, ``reference``, sizes, ``gt_boxes`` ...). The rows travel between ranks as UTF-8
JSON in ``uint8`` tensor states (``dist_reduce_fx="cat"``), so ``compute()`` on every rank sees
all rows; rows whose ``id`` repeats (a ``DistributedSampler`` pads the last shard with samples
of the first ones) are kept once, and rows are ordered by ``id`` before scoring, so the result
does not depend on the number of ranks. ``compute()`` returns the same dict as the plain
function (:mod:`medgrounder.eval.metrics`, :mod:`medgrounder.eval.text_metrics`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

import torch
from torchmetrics import Metric

from medgrounder.eval.metrics import mscxr_refer_metrics, vindr_identify_metrics, vindr_vqa_metrics
from medgrounder.eval.text_metrics import text_metrics

__all__ = ["IdentifyMetric", "ReferMetric", "RowMetric", "TextMetric", "VqaMetric", "unique_rows"]


def unique_rows(rows: Sequence[Mapping]) -> list[dict]:
    """Rows with distinct ``id`` (first kept; rows without one are all kept), sorted by ``id``."""
    seen: dict = {}
    anonymous = []
    for r in rows:
        if r.get("id") is None:
            anonymous.append(dict(r))
        else:
            seen.setdefault(str(r["id"]), dict(r))
    return [seen[k] for k in sorted(seen)] + anonymous


class RowMetric(Metric):
    """Base class: accumulate rows, compute :meth:`score` on the de-duplicated rows of all ranks."""

    full_state_update = False
    higher_is_better = True

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_state("data", default=[], dist_reduce_fx="cat")
        self.add_state("lengths", default=[], dist_reduce_fx="cat")

    def update(self, rows: Sequence[Mapping] | Sequence[str], metas: Sequence[Mapping] | None = None) -> None:
        if metas is not None:
            rows = [{**m, "prediction": p} for p, m in zip(rows, metas, strict=True)]
        blobs = [json.dumps(dict(r), sort_keys=True).encode("utf-8") for r in rows]
        if not blobs:
            return
        self.data.append(torch.tensor(list(b"".join(blobs)), dtype=torch.uint8, device=self.device))
        self.lengths.append(torch.tensor([len(b) for b in blobs], dtype=torch.long, device=self.device))

    def rows(self) -> list[dict]:
        """The accumulated rows (after a sync: of all ranks), de-duplicated by ``id``."""
        data, lengths = self.data, self.lengths
        if isinstance(data, list):  # not synced, or nothing accumulated
            if not data:
                return []
            data, lengths = torch.cat(data), torch.cat(lengths)
        raw = bytes(data.cpu().tolist())
        out, pos = [], 0
        for n in lengths.cpu().tolist():
            out.append(json.loads(raw[pos : pos + n].decode("utf-8")))
            pos += n
        return unique_rows(out)

    def compute(self) -> dict:
        return self.score(self.rows())

    def score(self, rows: list[dict]) -> dict:  # pragma: no cover - abstract
        raise NotImplementedError


class IdentifyMetric(RowMetric):
    """:func:`~medgrounder.eval.metrics.vindr_identify_metrics` (``plus_one``: LiteGPT's IoU)."""

    def __init__(self, plus_one: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.plus_one = plus_one

    def score(self, rows):
        return vindr_identify_metrics(rows, plus_one=self.plus_one)


class VqaMetric(RowMetric):
    """:func:`~medgrounder.eval.metrics.vindr_vqa_metrics`."""

    def score(self, rows):
        return vindr_vqa_metrics(rows)


class ReferMetric(RowMetric):
    """:func:`~medgrounder.eval.metrics.mscxr_refer_metrics`."""

    def score(self, rows):
        return mscxr_refer_metrics(rows)


class TextMetric(RowMetric):
    """:func:`~medgrounder.eval.text_metrics.text_metrics` of ``prediction`` vs ``reference``."""

    def __init__(self, keep_tags: bool = False, meteor_backend: str | None = "nltk", **kwargs):
        super().__init__(**kwargs)
        self.keep_tags = keep_tags
        self.meteor_backend = meteor_backend

    def score(self, rows):
        return text_metrics([r.get("prediction") for r in rows], [r["reference"] for r in rows],
                            keep_tags=self.keep_tags, meteor_backend=self.meteor_backend)
