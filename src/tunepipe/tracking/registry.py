"""Find trackers by name: the built-in ``mlflow``, then installed entry points (``tunepipe.trackers``).

A tracker's module is imported only when its name is used (validation checks its settings, a run
logs to it), and the tracker imports its client library (mlflow, wandb) only when a run starts.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Mapping
from typing import Any

from tunepipe.errors import PluginError, UserError
from tunepipe.tracking.contract import Tracker

GROUP = "tunepipe.trackers"
BUILTIN = {"mlflow": "tunepipe.tracking.mlflow_tracker:MlflowTracker"}
NONE = "none"  # ``--track none``: this run logs nowhere, whatever the file says
_CALLS = ("start", "log_metrics", "log_artifact", "end")


def available() -> dict[str, str]:
    """Tracker name -> ``module:Class``; a built-in name is not taken over by a package."""
    from importlib.metadata import entry_points

    return {**{ep.name: ep.value for ep in entry_points(group=GROUP)}, **BUILTIN}


def names() -> list[str]:
    return sorted(available())


def unknown_hint(name: str) -> str:
    """What to write instead of an unknown tracker name."""
    known = names()
    close = difflib.get_close_matches(name, known, n=1)
    return ((f"did you mean '{close[0]}'? " if close else "") + f"installed trackers: {', '.join(known)} "
            f"(another registers under the entry-point group '{GROUP}', e.g. W&B or TensorBoard)")


def load(name: str) -> type:
    """The tracker class called ``name``, checked against the contract; PluginError says what is wrong."""
    target = available().get(name)
    if target is None:
        raise PluginError(f"unknown tracker '{name}': {unknown_hint(name)}")
    module, _, attr = target.partition(":")
    try:
        cls: Any = getattr(importlib.import_module(module.strip()), attr.strip())
    except Exception as e:  # noqa: BLE001 - a broken tracker package must not look like our bug
        raise PluginError(f"tracker '{name}' ({target}) failed to load: {type(e).__name__}: {e}") from None
    missing = [c for c in _CALLS if not callable(getattr(cls, c, None))]
    if not isinstance(getattr(cls, "settings_schema", None), Mapping):
        missing.append("settings_schema")
    if missing:
        raise PluginError(f"tracker '{name}' ({target}) lacks {', '.join(missing)} of the tracker contract "
                          "(tunepipe.tracking.contract.Tracker): report it to its authors")
    return cls


def make(name: str) -> Tracker:
    """A fresh tracker for one run."""
    tracker: Tracker = load(name)()
    return tracker


def chosen(tracking: Mapping[str, Mapping[str, Any]], override: str = "") -> dict[str, Mapping[str, Any]]:
    """The trackers of one run and their settings: the file's ``tracking:``; with ``--track NAME``
    only that one (with the file's settings for it, else its defaults); with ``--track none`` none.
    An unknown NAME is a user error before anything runs."""
    if not override:
        return dict(tracking)
    if override == NONE:
        return {}
    if override not in available():
        raise UserError(f"--track {override}: unknown tracker. {unknown_hint(override)}; "
                        f"'--track {NONE}' logs nowhere")
    return {override: tracking.get(override) or {}}
