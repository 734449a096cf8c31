"""The local backend's training settings: the train stage's parameters, checked, and the
fingerprint a checkpoint must match to be resumed from. No torch here."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunepipe.errors import UserError
from tunepipe.hf.models import BaseSource, file_sha256

DEFAULT_LR = {"lora": 2e-4, "full": 2e-5}
SCHEDULES = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}
FINGERPRINT_VERSION = 1
# Parameters that do not change the trained weights or the loss curve: a resume may change them.
NOT_FINGERPRINTED = frozenset({"device", "threads", "save_every", "merge"})


@dataclass(frozen=True)
class LocalTrainSettings:
    """The train stage's parameters as the local backend trains with them, checked (named apart
    from the backend contract's ``Settings``, which declares what a backend adds to ``with:``)."""

    model: str
    epochs: int
    batch_size: int
    learning_rate: float
    seed: int
    lora: dict[str, Any] | None
    max_seq_length: int
    accumulation: int
    schedule: str
    warmup: float
    weight_decay: float
    max_grad_norm: float
    eval_every: int
    save_every: int
    merge: bool
    device: str
    threads: int | None
    workers: int = 1  # data-parallel Ray Train workers (tunepipe.hf.distributed); 1: this process

    @property
    def kind(self) -> str:
        return "lora" if self.lora is not None else "full"


def _int(params: Mapping[str, Any], name: str, minimum: int, where: str = "") -> int:
    value = params.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise UserError(f"{where}{name} must be a whole number >= {minimum}, not {value!r}")
    return value


def _float(params: Mapping[str, Any], name: str, minimum: float = 0.0, where: str = "") -> float:
    value = params.get(name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= minimum or math.isinf(value):
        raise UserError(f"{where}{name} must be a number >= {minimum:g}, not {value!r}")
    return float(value)


def settings(params: Mapping[str, Any]) -> LocalTrainSettings:
    """The parameters, checked (the stage's schema already applied the defaults)."""
    lora = params.get("lora")
    if lora is False:
        lora_cfg = None
    elif isinstance(lora, Mapping):
        targets = lora.get("target_modules")
        if isinstance(targets, str):
            targets = [targets]
        lora_cfg = {"r": _int(lora, "r", 1, "lora."), "alpha": _float(lora, "alpha", 0.0, "lora."),
                    "dropout": _float(lora, "dropout", 0.0, "lora."), "target_modules": list(targets or [])}
        if lora_cfg["dropout"] >= 1:
            raise UserError(f"lora.dropout must be below 1, not {lora_cfg['dropout']}")
    else:
        raise UserError(f"lora must be a mapping (r, alpha, dropout, target_modules) or false for full "
                        f"fine-tuning, not {lora!r}")
    kind = "lora" if lora_cfg is not None else "full"
    lr = params.get("learning_rate")
    lr = DEFAULT_LR[kind] if lr is None else _float(params, "learning_rate", 0.0)
    if lr <= 0:
        raise UserError(f"learning_rate must be above 0, not {lr}")
    schedule = params.get("schedule", "linear")
    if schedule not in SCHEDULES:
        raise UserError(f"schedule must be one of {', '.join(SCHEDULES)}, not {schedule!r}")
    threads = params.get("threads")
    if threads is not None:
        threads = _int(params, "threads", 1)
    workers = _int(params, "workers", 1) if params.get("workers") is not None else 1
    return LocalTrainSettings(
        model=str(params.get("model")), epochs=_int(params, "epochs", 1), batch_size=_int(params, "batch_size", 1),
        learning_rate=lr, seed=_int(params, "seed", 0), lora=lora_cfg,
        max_seq_length=_int(params, "max_seq_length", 2), accumulation=_int(params, "gradient_accumulation", 1),
        schedule=schedule, warmup=_float(params, "warmup"), weight_decay=_float(params, "weight_decay"),
        max_grad_norm=_float(params, "max_grad_norm"), eval_every=_int(params, "eval_every", 0),
        save_every=_int(params, "save_every", 0), merge=bool(params.get("merge", False)),
        device=str(params.get("device", "auto")), threads=threads, workers=workers)


def warmup_steps(warmup: float, total: int) -> int:
    """``warmup`` below 1 is a fraction of the optimizer steps; 1 or more is a number of steps."""
    steps = math.ceil(warmup * total) if warmup < 1 else int(warmup)
    return min(steps, total)


def fingerprint(s: LocalTrainSettings, params: Mapping[str, Any], source: BaseSource, train: Path,
                validation: Path | None) -> str:
    """What a checkpoint must match to be resumed from: the parameters that shape training, the base
    model's identity and the data's bytes."""
    kept = {k: v for k, v in sorted(params.items()) if k not in NOT_FINGERPRINTED}
    payload = {"v": FINGERPRINT_VERSION, "params": kept, "learning_rate": s.learning_rate, "base": source.identity,
               "train": file_sha256(train),
               "validation": file_sha256(validation) if validation is not None else None}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()
