"""Resumable checkpoints in the stage's scratch folder.

A checkpoint is a folder ``<scratch>/checkpoints/step-<8 digits>/`` with:

* ``weights.safetensors``: the trainable weights (the LoRA weights, or the whole model);
* ``trainer.pt``: the optimizer's and scheduler's state and the random number generators';
* ``state.json``: the params fingerprint, the epoch, the position in that epoch's order, the loss
  history and counters.

It is written in a temporary folder beside, each file synced, then renamed into place, so a crash
at any moment leaves either the previous checkpoints or the new one complete. The newest
:data:`KEEP` are kept. Loading takes the newest checkpoint whose fingerprint matches and whose
files read back; an unreadable one is skipped (with a log line) for the one before.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

KEEP = 2
FOLDER = "checkpoints"
STATE = "state.json"
WEIGHTS = "weights.safetensors"
TRAINER = "trainer.pt"


@dataclass
class Checkpoint:
    path: Path
    state: dict[str, Any]
    weights: dict[str, Any]  # name -> tensor
    trainer: dict[str, Any]  # optimizer, scheduler, rng


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def save(scratch: Path, step: int, state: dict[str, Any], weights: dict[str, Any], trainer: dict[str, Any],
         keep: int = KEEP) -> Path:
    """Write a checkpoint atomically; returns its folder."""
    import torch
    from safetensors.torch import save_file

    root = scratch / FOLDER
    root.mkdir(parents=True, exist_ok=True)
    dest = root / f"step-{step:08d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=root))
    try:
        save_file({k: v.detach().to("cpu").contiguous() for k, v in weights.items()}, str(tmp / WEIGHTS))
        torch.save(trainer, tmp / TRAINER)
        (tmp / STATE).write_text(json.dumps({**state, "step": step}, indent=1) + "\n", encoding="utf-8")
        for name in (WEIGHTS, TRAINER, STATE):
            _fsync_file(tmp / name)
        if dest.exists():  # a checkpoint of the same step from a run that died after writing it
            shutil.rmtree(dest)
        os.rename(tmp, dest)
        _fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in sorted(root.glob("step-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return dest


def latest(scratch: Path, fingerprint: str, log: logging.Logger | None = None) -> Checkpoint | None:
    """The newest readable checkpoint made with ``fingerprint``, or None."""
    import torch
    from safetensors.torch import load_file

    root = scratch / FOLDER
    if not root.is_dir():
        return None
    for leftover in root.glob(".step-*"):  # a save cut short by a crash
        shutil.rmtree(leftover, ignore_errors=True)
    for path in sorted(root.glob("step-*"), reverse=True):
        try:
            state = json.loads((path / STATE).read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            if log:
                log.warning("skipping checkpoint %s: %s", path.name, e)
            continue
        if state.get("fingerprint") != fingerprint:
            if log:
                log.info("ignoring checkpoint %s: made with other parameters or data", path.name)
            continue
        try:
            weights = load_file(str(path / WEIGHTS))
            trainer = torch.load(path / TRAINER, weights_only=True, map_location="cpu")
        except Exception as e:  # a truncated or corrupted file
            if log:
                log.warning("skipping unreadable checkpoint %s: %s", path.name, e)
            continue
        return Checkpoint(path, state, weights, trainer)
    return None


def clear(scratch: Path) -> None:
    shutil.rmtree(scratch / FOLDER, ignore_errors=True)
