"""The seeded order of each epoch, and padded batches.

Each epoch's order depends only on (seed, epoch): a resumed run recomputes it and skips the
batches already done. With ``batch_size > 1`` the examples are grouped by length to cut padding:
the shuffled examples are cut into windows of :data:`GROUP_WINDOW` batches, each window is sorted
by length and cut into batches, and the batches are shuffled (like ``group_by_length`` in
transformers' Trainer). Every example is still seen once per epoch.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from tunepipe.hf.render import IGNORE, TrainingExample

GROUP_WINDOW = 16  # batches per length-sorted window


def epoch_batches(lengths: Sequence[int], batch_size: int, seed: int, epoch: int,
                  group_by_length: bool = True) -> list[list[int]]:
    """The batches (lists of example indices) of epoch ``epoch`` (0-based)."""
    rng = random.Random(f"tunepipe-epoch:{seed}:{epoch}")
    order = list(range(len(lengths)))
    rng.shuffle(order)
    if batch_size <= 1 or not group_by_length:
        return [order[i:i + batch_size] for i in range(0, len(order), max(1, batch_size))]
    window = batch_size * GROUP_WINDOW
    batches: list[list[int]] = []
    for w in range(0, len(order), window):
        chunk = sorted(order[w:w + window], key=lambda j: -lengths[j])  # stable: ties keep the shuffle
        batches.extend(chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return batches


def optimizer_steps(batches: list[list[int]], accumulation: int) -> list[list[list[int]]]:
    """The batches grouped into optimizer steps (the last step of an epoch may have fewer)."""
    n = max(1, accumulation)
    return [batches[i:i + n] for i in range(0, len(batches), n)]


def steps_per_epoch(examples: int, batch_size: int, accumulation: int) -> int:
    batches = -(-examples // max(1, batch_size))
    return -(-batches // max(1, accumulation))


def collate(examples: Sequence[TrainingExample], pad_id: int, device: Any = "cpu") -> dict[str, Any]:
    """Right-padded ``input_ids``, ``attention_mask`` and ``labels`` (IGNORE on padding)."""
    import torch

    width = max(len(e.ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, e in enumerate(examples):
        n = len(e.ids)
        ids[row, :n] = torch.tensor(e.ids, dtype=torch.long)
        labels[row, :n] = torch.tensor(e.labels, dtype=torch.long)
        mask[row, :n] = 1
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "labels": labels.to(device)}
