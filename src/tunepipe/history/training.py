"""What a train stage's model folder says about its training: the losses of ``metrics.json`` (local:
``train_loss.last``, ``val_loss.last`` / ``best``; OpenAI: ``final_train_loss``, ``final_valid_loss``,
``min_valid_loss``) and the curve of ``loss.csv``. Found by content, like the evaluation reports:
any output folder holding these files counts as a trained model."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

SOURCE = "training"  # what `pipeline compare` names the source of these columns
LOSSES = ("train_loss", "val_loss", "val_loss_best")  # the names `pipeline compare --sort` takes
LOWER_IS_BETTER = frozenset(LOSSES)


def is_model(folder: Path) -> bool:
    """A trained model's folder: it has a loss curve, or training losses in its metrics.json."""
    return (folder / "loss.csv").is_file() or bool(_doc(folder).keys() & {"train_loss", "final_train_loss"})


def losses(folder: Path) -> dict[str, float | None]:
    """The last training loss and the last and best validation loss (None where not recorded)."""
    doc = _doc(folder)
    train, val = _mapping(doc.get("train_loss")), _mapping(doc.get("val_loss"))
    return {"train_loss": _first(train.get("last"), doc.get("final_train_loss")),
            "val_loss": _first(val.get("last"), doc.get("final_valid_loss")),
            "val_loss_best": _first(val.get("best"), doc.get("min_valid_loss"))}


def curve(folder: Path) -> list[dict[str, float | None]]:
    """loss.csv as rows of step, train_loss, val_loss (the evaluate report's reader; [] if none)."""
    import csv

    from tunepipe.evaluation.inputs import read_loss

    try:
        return read_loss(folder)
    except (OSError, ValueError, csv.Error):  # a torn or foreign file: no curve rather than no page
        return []


def _doc(folder: Path) -> Mapping[str, Any]:
    try:
        doc = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) and not str(doc.get("format", "")).startswith("tunepipe-evaluation/") else {}


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _first(*values: Any) -> float | None:
    for v in values:
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            return float(v)
    return None
