"""Who trains one model together, as the training loop of :mod:`tunepipe.hf.loop` sees it.

The loop asks a :class:`World` what to train on, how to sum and where to keep checkpoints, so one
loop serves both the ordinary one-process run (:data:`SOLO`) and Ray Train's data-parallel workers
(:class:`tunepipe.hf.distributed.RayWorld`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tunepipe.hf import checkpoint
from tunepipe.hf.forward import loss_sum
from tunepipe.plugins import StageContext


class World:
    """The processes that train one model together, as the loop sees them.

    This base class is the ordinary run: one process, every batch its own, checkpoints in the
    stage's scratch folder. :class:`tunepipe.hf.distributed.RayWorld` overrides each hook for Ray
    Train's data-parallel workers; the loop itself is the same code for both.
    """

    rank = 0
    size = 1

    def prepare(self, model: Any, head: tuple[Any, Any] | None, device: str) -> None:
        """Called once before training (the distributed world wraps the model in DDP here)."""

    def loss(self, model: Any, batch: Mapping[str, Any], head: tuple[Any, Any] | None) -> tuple[Any, int]:
        """A training micro-batch's summed loss (:func:`loss_sum`; through DDP when distributed)."""
        return loss_sum(model, batch, head)

    def share(self, micro: list[list[Any]]) -> list[tuple[list[Any], bool]]:
        """This process's micro-batches of an optimizer step, each with whether its loss counts
        (a worker left without one trains on a stand-in whose loss counts for nothing)."""
        return [(b, True) for b in micro]

    def accumulating(self, more: bool) -> Any:
        """The context of one micro-batch's forward and backward; ``more``: others of this step follow."""
        return contextlib.nullcontext()

    def scaled(self, value: Any, n_trained: int) -> Any:
        """What ``backward`` runs on: this micro-batch's share of the step's mean loss."""
        return value / n_trained

    def total(self, values: list[float]) -> list[float]:
        """The sums of ``values`` over all processes."""
        return values

    def owns(self, index: int) -> bool:
        """Whether this process evaluates validation batch ``index``."""
        return True

    def before_step(self, ctx: StageContext, step: int) -> None:
        """Called by every process at the start of each optimizer step (where they agree on a stop)."""

    def save(self, scratch: Path, step: int, state: dict[str, Any], weights: dict[str, Any],
             trainer: dict[str, Any]) -> None:
        checkpoint.save(scratch, step, state, weights, trainer)

    def latest(self, scratch: Path, fingerprint: str, log: Any) -> checkpoint.Checkpoint | None:
        """The checkpoint to resume from; stale checkpoints (other parameters or data) are removed."""
        ck = checkpoint.latest(scratch, fingerprint, log)
        if ck is None:
            checkpoint.clear(scratch)
        return ck

    def metrics(self) -> dict[str, Any]:
        """What metrics.json says about the workers."""
        return {"workers": 1}


SOLO = World()
