"""What the evaluate stage reads from its ``model`` input besides the model: the model reference
(checked by the backend that wrote it), the training loss curve (loss.csv) and the training
numbers (metrics.json). Apart from the run because the pipeline history reads the same files.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tunepipe import modelref
from tunepipe.backends.contract import optional
from tunepipe.errors import UserError
from tunepipe.modelref import ModelRef
from tunepipe.plugins import Artifact


def read_model(art: Artifact) -> ModelRef:
    """The model reference of the ``model`` input, checked by the backend that wrote it (which must
    be installed here)."""
    from tunepipe.backends.registry import installed

    ref = modelref.read(art.path, name=art.name, digest=art.digest, where="input 'model': ")
    backends = installed()
    if ref.backend not in backends.names():
        raise UserError(f"{art.name}/model.json names backend {ref.backend!r}, which is not installed here "
                        f"(installed: {', '.join(backends.names())}): install the package that provides it")
    modelref.require(ref, optional(backends.get(ref.backend), "model_fields", {}))
    return ref


def read_loss(model_dir: Path) -> list[dict[str, float | None]]:
    """The training loss curve: loss.csv (local: step,train_loss,val_loss,...; OpenAI:
    step,train_loss,valid_loss), as rows of step, train_loss, val_loss."""
    path = model_dir / "loss.csv"
    if not path.is_file():
        return []
    rows = []
    with open(path, newline="", encoding="utf-8") as f:
        for r in csv.DictReader(f):
            step = _cell(r, "step")
            if step is None:
                continue
            rows.append({"step": step, "train_loss": _cell(r, "train_loss"),
                         "val_loss": _cell(r, "val_loss", "valid_loss")})
    return rows


def _cell(row: Mapping[str, Any], *names: str) -> float | None:
    """The first of the named columns that holds a finite number (blank: none)."""
    for n in names:
        v = (row.get(n) or "").strip()
        if v:
            try:
                x = float(v)
            except ValueError:
                return None
            return x if math.isfinite(x) else None
    return None

def training(model_dir: Path) -> dict[str, Any] | None:
    """The train artifact's metrics.json (NaN and infinities as null: metrics.json is strict JSON)."""
    path = model_dir / "metrics.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return _finite(data) if isinstance(data, dict) else None


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value
