"""Epoch order, padded batches, and a loss that padding does not change."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from tunepipe.hf.batching import collate, epoch_batches, optimizer_steps, steps_per_epoch
from tunepipe.hf.render import IGNORE, TrainingExample
from tunepipe.hf.forward import loss_sum, plain_head


def test_collate_pads_right_with_the_pad_id_and_masks_padding_out_of_the_loss() -> None:
    a = TrainingExample([5, 6, 7, 8], [IGNORE, IGNORE, 7, 8], line=1)
    b = TrainingExample([9, 10], [IGNORE, 10], line=2)
    batch = collate([a, b], pad_id=2)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8], [9, 10, 2, 2]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    assert batch["labels"].tolist() == [[IGNORE, IGNORE, 7, 8], [IGNORE, 10, IGNORE, IGNORE]]
    assert a.trained == 2 and b.trained == 1


def test_each_epoch_sees_every_example_once_in_an_order_fixed_by_seed_and_epoch() -> None:
    lengths = [(i * 37) % 101 + 1 for i in range(50)]
    for bs in (1, 3, 8):
        first = epoch_batches(lengths, bs, seed=1, epoch=0)
        assert sorted(i for b in first for i in b) == list(range(50))
        assert all(1 <= len(b) <= bs for b in first)
        assert first == epoch_batches(lengths, bs, seed=1, epoch=0)
        assert first != epoch_batches(lengths, bs, seed=1, epoch=1)
        assert first != epoch_batches(lengths, bs, seed=2, epoch=0)


def test_grouping_by_length_cuts_padding() -> None:
    lengths = [(i * 7919) % 400 + 10 for i in range(256)]

    def padded(batches: list[list[int]]) -> int:
        return sum(len(b) * max(lengths[i] for i in b) - sum(lengths[i] for i in b) for b in batches)

    grouped = epoch_batches(lengths, 8, seed=0, epoch=0)
    plain = epoch_batches(lengths, 8, seed=0, epoch=0, group_by_length=False)
    assert padded(grouped) < padded(plain) / 5


def test_optimizer_steps_group_micro_batches() -> None:
    batches = [[0], [1], [2], [3], [4]]
    assert optimizer_steps(batches, 2) == [[[0], [1]], [[2], [3]], [[4]]]
    assert steps_per_epoch(examples=5, batch_size=1, accumulation=2) == 3
    assert steps_per_epoch(examples=9, batch_size=4, accumulation=1) == 3
    assert steps_per_epoch(examples=9, batch_size=4, accumulation=4) == 1


@pytest.fixture(scope="module")
def tiny(tiny_model: Path) -> Any:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model), local_files_only=True)
    model.eval()
    return model


def _examples() -> list[TrainingExample]:
    g = torch.Generator().manual_seed(3)
    out = []
    for n, prompt in ((12, 5), (30, 9), (7, 3)):
        ids = torch.randint(10, 40000, (n,), generator=g).tolist()
        out.append(TrainingExample(ids, [IGNORE] * prompt + ids[prompt:], line=len(out) + 1))
    return out


@torch.no_grad()
def test_padding_changes_no_example_loss(tiny: Any) -> None:
    exs = _examples()
    head = plain_head(tiny)
    alone = [loss_sum(tiny, collate([e], 2), head) for e in exs]
    together, n = loss_sum(tiny, collate(exs, 2), head)
    assert n == sum(c for _, c in alone) == sum(e.trained for e in exs)
    assert float(together) == pytest.approx(sum(float(v) for v, _ in alone), rel=1e-5)


@torch.no_grad()
def test_the_fast_head_gives_the_loss_of_the_full_logits(tiny: Any) -> None:
    batch = collate(_examples(), 2)
    head = plain_head(tiny)
    assert head is not None
    fast, n1 = loss_sum(tiny, batch, head)
    full, n2 = loss_sum(tiny, batch, None)
    assert n1 == n2 and float(fast) == pytest.approx(float(full), rel=1e-6)
    # and both are the textbook loss: transformers' own (mean over labels != -100)
    out = tiny(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
    assert float(out.loss) == pytest.approx(float(full) / n2, rel=1e-5)
