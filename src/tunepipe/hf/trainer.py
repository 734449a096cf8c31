"""Local training: :func:`train_local`, what the local backend calls to train.

It trains in this process with the loop of :mod:`tunepipe.hf.loop`, or with ``workers: N``
(N > 1) under the Ray executor hands the same loop to N Ray Train workers
(:mod:`tunepipe.hf.distributed`, imported only then).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from tunepipe.errors import UserError
from tunepipe.hf import artifact
from tunepipe.hf.device import cpu_threads, resolve_device
from tunepipe.hf.forward import quiet_transformers
from tunepipe.hf.loop import TrainingRun
from tunepipe.hf.settings import LocalTrainSettings, settings
from tunepipe.plugins import StageContext


def train_local(ctx: StageContext, train: Path, validation: Path | None, params: Mapping[str, Any], out: Path,
                *, stop_after_steps: int | None = None) -> dict[str, Any]:
    """Train, write the model artifact into ``out`` (an empty folder), return a small JSON-able
    summary for the run line.

    ``stop_after_steps`` (tests): raise :class:`tunepipe.hf.loop.StopRequested` once that many optimizer steps are
    done (after any checkpoint of that step), as if the process died there.
    """
    started = time.monotonic()
    s = settings(params)
    if s.workers > 1:
        return _distributed(ctx, train, validation, params, out, s)
    device = resolve_device(s.device)
    train, out = Path(train), Path(out)
    if validation is not None and Path(validation).stat().st_size == 0:
        validation = None
    quiet_transformers()
    with cpu_threads((s.threads or ctx.threads) if device == "cpu" else None) as threads, torch.enable_grad():
        run = TrainingRun(ctx, s, params, device, threads, train, validation)
        run.resume_or_start()
        run.loop(stop_after_steps)
        ctx.progress("saving the model")
        metrics = run.write(out, time.monotonic() - started)
    return artifact.summary(metrics)


def _distributed(ctx: StageContext, train: Path, validation: Path | None, params: Mapping[str, Any], out: Path,
                 s: LocalTrainSettings) -> dict[str, Any]:
    """``workers: N``: Ray Train's data-parallel workers, which only a stage running on Ray can start."""
    ray_ok = False
    if ctx.engine == "ray":
        import ray

        ray_ok = ray.is_initialized()
    if not ray_ok:
        raise UserError(f"workers: {s.workers} trains on {s.workers} Ray Train workers, which "
                        "needs a Ray cluster, but this run uses the local executor. Run it with `pipeline run "
                        "--executor ray` (a cluster named by RAY_ADDRESS, else one started on this machine), or "
                        "set workers: 1 to train in this process")
    from tunepipe.hf.distributed import train_distributed

    return train_distributed(ctx, Path(train), Path(validation) if validation is not None else None, params,
                             Path(out), s)
