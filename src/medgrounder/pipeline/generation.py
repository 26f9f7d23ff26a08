"""Greedy generation over a test loader into ``predictions.jsonl`` rows: the only place that
gathers results across ranks."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, DistributedSampler, Subset
from tqdm.auto import tqdm

from medgrounder.models.decoding import box_scores, token_table
from medgrounder.tasks import get_task

__all__ = ["generate_rows", "rank_world"]


def rank_world() -> tuple[int, int]:
    """``(rank, world size)`` of the initialised process group, else ``(0, 1)``."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def scored_row(meta: dict, decoded, task, table, rule: str) -> dict:
    """A ``predictions.jsonl`` row: the sample's fields, its prompt and prediction and, for a
    task with boxes, ``prediction_boxes`` with their scores (and ``no_finding_score`` where the
    task has a no-finding answer; design section 7)."""
    row = {**meta, "prompt": meta.get("prompt") or task.prompt(), "prediction": decoded.text}
    if task.localizes and "image_width" in meta:
        row["prediction_boxes"] = box_scores(decoded, table, task.pairs, meta["image_width"], meta["image_height"], rule)
        if task.no_answer_node is not None:
            row["no_finding_score"] = decoded.no_answer_prob
    return row


@torch.no_grad()
def _generate(module, loader, desc: str, max_new_tokens: int | None = None, labels=None) -> list[dict]:
    was_training = module.training
    module.eval()
    rows = []
    table = token_table(module.tokenizer)
    for batch in tqdm(loader, desc=desc, disable=rank_world()[0] != 0):
        names = {meta["task"] for meta in batch["meta"]}
        if len(names) != 1:
            raise ValueError(f"a generation batch must hold one task, got {sorted(names)}")
        name = names.pop()
        decoded = module.generate_decoded(batch["images"].to(module.device), batch["prompt_ids"].to(module.device),
                                          batch["prompt_mask"].to(module.device), max_new_tokens, task=name,
                                          labels=labels)
        task = get_task(name)
        rows += [scored_row(meta, d, task, table, module.box_score) for meta, d in zip(batch["meta"], decoded, strict=True)]
    module.train(was_training)
    return rows


def length_order(dataset, collate, indices) -> list[int]:
    """``indices`` grouped by task and sorted longest prompt first within each (ties keep their
    order), so the prompts of a batch pad little; unchanged for a dataset without ``prompt_of``
    (``(task, instruction)`` of an item, read without its image) or a collator without
    ``suffix_ids``. Greedy answers do not depend on their batch (tested), only the padding does."""
    prompt_of, suffix_ids = getattr(dataset, "prompt_of", None), getattr(collate, "suffix_ids", None)
    if prompt_of is None or suffix_ids is None:
        return list(indices)
    prompts = {i: prompt_of(i) for i in indices}
    return sorted(indices, key=lambda i: (prompts[i][0], -len(suffix_ids(*prompts[i]))))


def generate_rows(module, loader: DataLoader, desc: str = "generate", max_new_tokens: int | None = None,
                  labels: tuple[str, ...] | None = None) -> list[dict]:
    """Greedy answers for every sample of ``loader`` as ``predictions.jsonl`` rows
    (:func:`scored_row`), in dataset order; ``max_new_tokens``: the generation budget (None: the
    model's); ``labels``: the labels the task's grammar may name (None: all). The samples are
    batched in :func:`length_order` (``loader``'s batch size, collator and workers).

    Under ``torch.distributed`` (initialised, world size > 1) the dataset is sharded with a
    :class:`~torch.utils.data.DistributedSampler` (no shuffle), each rank generates its shard,
    and the rows of all ranks are gathered on every rank; the samples the sampler repeats to pad
    the last shard are dropped (by sample ``id``), so each sample appears exactly once and the
    rows equal the single-process ones.
    """
    rank, world = rank_world()
    dataset = loader.dataset
    indices = list(DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=False)) if world > 1 \
        else range(len(dataset))
    order = length_order(dataset, loader.collate_fn, indices)
    batches = DataLoader(Subset(dataset, order), batch_size=loader.batch_size, collate_fn=loader.collate_fn,
                         num_workers=loader.num_workers)
    tag = f"{desc} [rank {rank}/{world}]" if world > 1 else desc
    mine = list(zip(order, _generate(module, batches, tag, max_new_tokens, labels), strict=True))
    parts: list = [mine]
    if world > 1:
        parts = [None] * world
        torch.distributed.all_gather_object(parts, mine)
    by_id: dict = {}
    for part in parts:
        for index, row in part:
            by_id.setdefault(row["id"], (index, row))
    return [row for _, row in sorted(by_id.values(), key=lambda t: t[0])]
