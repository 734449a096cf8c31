"""What changed in a stage's key parts between two runs, as data: parameters (dotted paths),
input contents, plugin code and version, package versions.

The same comparison as :func:`tunepipe.cache.keys.diff` (which words reasons for ``--explain``),
kept as values so that ``pipeline runs`` can abbreviate it and ``pipeline diff`` can tabulate it.
Parts of any key format are read: format 1 lists an input's digests without names.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tunepipe.cache.keys import input_digests

if TYPE_CHECKING:
    from tunepipe.history.runs import Run

ABSENT: Any = type("Absent", (), {"__repr__": lambda self: "ABSENT"})()

# kinds, in the order people read them
PARAM, INPUT, CODE, PLUGIN, PACKAGE, ADDED, REMOVED = "param", "input", "code", "plugin", "package", "added", "removed"


@dataclass(frozen=True)
class Change:
    """One difference of one stage. ``old``/``new`` are :data:`ABSENT` where a side has none.
    ``upstream``: an input that is another stage's output (its change follows from that stage's)."""

    stage: str
    kind: str
    what: str = ""
    old: Any = ABSENT
    new: Any = ABSENT
    upstream: bool = False

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"stage": self.stage, "kind": self.kind, "what": self.what}
        out.update({k: v for k, v in (("old", self.old), ("new", self.new)) if v is not ABSENT})
        if self.kind == INPUT:
            out["upstream"] = self.upstream
        return out


def stage_changes(stage: str, old: Mapping[str, Any], new: Mapping[str, Any],
                  producers: Mapping[str, Sequence[str]] | None = None) -> list[Change]:
    """How ``new`` key parts differ from ``old`` ones. ``producers``: stage -> its output names, to
    tell an upstream output (``ingest.records``) from a file input."""
    out: list[Change] = []
    op, np_ = _mapping(old.get("plugin")), _mapping(new.get("plugin"))
    if op.get("identity") != np_.get("identity"):
        out.append(Change(stage, PLUGIN, "identity", op.get("identity", ABSENT), np_.get("identity", ABSENT)))
    elif op.get("version") != np_.get("version"):
        out.append(Change(stage, PLUGIN, "version", op.get("version", ABSENT), np_.get("version", ABSENT)))
    if old.get("code") != new.get("code") and op.get("identity") == np_.get("identity"):
        out.append(Change(stage, CODE, "code", old.get("code", ABSENT), new.get("code", ABSENT)))
    out.extend(_param_changes(stage, _mapping(old.get("params")), _mapping(new.get("params"))))
    out.extend(_input_changes(stage, _mapping(old.get("inputs")), _mapping(new.get("inputs")), producers or {}))
    oe, ne = _mapping(old.get("env")), _mapping(new.get("env"))
    out.extend(Change(stage, PACKAGE, k, oe.get(k, ABSENT), ne.get(k, ABSENT))
               for k in sorted(set(oe) | set(ne)) if oe.get(k) != ne.get(k))
    return out


def run_changes(old: Run, new: Run) -> list[Change]:
    """Every stage's changes from run ``old`` to run ``new``; a stage only one of them has is
    ``added`` or ``removed`` (one that both have, but one without key parts, e.g. skipped after a
    failure, shows no change: nothing is known to compare)."""
    out: list[Change] = []
    producers = _producers(new, old)
    for stage in _stage_order(old, new):
        a, b = old.parts(stage), new.parts(stage)
        if a is not None and b is not None:
            out.extend(stage_changes(stage, a, b, producers))
        elif b is not None and stage not in old.stages:
            out.append(Change(stage, ADDED))
        elif a is not None and stage not in new.stages:
            out.append(Change(stage, REMOVED))
    return out


def since_previous(runs_newest_first: Sequence[Run], wanted: set[str]) -> dict[str, list[Change] | None]:
    """For each wanted run id, each stage's changes since that stage's last earlier run with key
    parts (a failed or partial run in between does not hide a change); None for the first run."""
    last: dict[str, Mapping[str, Any]] = {}
    out: dict[str, list[Change] | None] = {}
    for i, run in enumerate(reversed(runs_newest_first)):
        stages = {name: parts for name in run.stages if (parts := run.parts(name)) is not None}
        if run.run_id in wanted:
            producers = _producers(run)
            changes: list[Change] = []
            for name, parts in stages.items():
                if name in last:
                    changes.extend(stage_changes(name, last[name], parts, producers))
                elif i:
                    changes.append(Change(name, ADDED))
            out[run.run_id] = changes if i else None
        last.update(stages)
    return out


def _param_changes(stage: str, old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> Iterator[Change]:
    """Changed leaves by dotted path, as :func:`_flatten` names them; equal subtrees are skipped whole."""
    for k in list(new) + [k for k in old if k not in new]:
        a, b = old.get(k, ABSENT), new.get(k, ABSENT)
        if _same(a, b):
            continue
        path = f"{prefix}.{k}" if prefix else str(k)
        if type(a) is dict and type(b) is dict and a and b:
            yield from _param_changes(stage, a, b, path)
            continue
        fa = _flatten(a, path) if a is not ABSENT else {}
        fb = _flatten(b, path) if b is not ABSENT else {}
        for leaf in list(fb) + [p for p in fa if p not in fb]:
            if not _same(fa.get(leaf, ABSENT), fb.get(leaf, ABSENT)):
                yield Change(stage, PARAM, leaf, fa.get(leaf, ABSENT), fb.get(leaf, ABSENT))


def _input_changes(stage: str, old: Mapping[str, Any], new: Mapping[str, Any],
                   producers: Mapping[str, Sequence[str]]) -> Iterator[Change]:
    for port in list(new) + [p for p in old if p not in new]:
        a, b = _entries(old.get(port, [])), _entries(new.get(port, []))
        if not (_named(a) and _named(b)):  # key format 1 named no input: match them by position
            a, b = _by_position(a, b), _by_position(b, a)
        for name in list(b) + [n for n in a if n not in b]:
            if a.get(name, ABSENT) != b.get(name, ABSENT):
                label = f"{port}{name}" if name.startswith("#") else name
                yield Change(stage, INPUT, label, a.get(name, ABSENT), b.get(name, ABSENT),
                             upstream=_is_output(name, producers))


def _entries(entries: Any) -> dict[str, str]:
    """name -> digest of one input's entries, in order (format 1 had no names: ``#1``, ``#2``...)."""
    if not isinstance(entries, list):
        return {}
    digests = input_digests(entries)
    return {str(e.get("name")) if isinstance(e, Mapping) and e.get("name") else f"#{i + 1}": d
            for i, (e, d) in enumerate(zip(entries, digests))}


def _named(entries: Mapping[str, str]) -> bool:
    return not any(name.startswith("#") for name in entries)


def _by_position(entries: Mapping[str, str], other: Mapping[str, str]) -> dict[str, str]:
    """``entries`` under the names ``other`` gives the same positions (where it names them)."""
    names = [n if not n.startswith("#") else None for n in other] + [None] * len(entries)
    mine = list(entries.items())
    return {(names[i] or (n if not n.startswith("#") else f"#{i + 1}")): d for i, (n, d) in enumerate(mine)}


def _is_output(name: str, producers: Mapping[str, Sequence[str]]) -> bool:
    stage, _, output = name.rpartition(".")
    return bool(stage) and output in producers.get(stage, ())


def _producers(*runs: Run) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for run in runs:
        for name, stage in run.stages.items():
            parts = run.parts(name) or {}
            names = list(_mapping(stage.get("outputs"))) + [str(o) for o in parts.get("outputs", []) or []]
            out.setdefault(name, []).extend(names)
    return out


def _stage_order(old: Run, new: Run) -> list[str]:
    names = list(new.stages)
    return names + [n for n in old.stages if n not in names]


def _flatten(value: Any, prefix: str) -> dict[str, Any]:
    """Leaf values by dotted path; lists are values, and so is an empty mapping."""
    if type(value) is dict and value:
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}.{k}"))
        return out
    return {prefix: value}


def _same(a: Any, b: Any) -> bool:
    """Equal as a cache key sees them (canonical JSON: 1, 1.0 and true differ), without encoding:
    thousands of records are compared."""
    if type(a) is not type(b) or a != b:
        return False
    if type(a) is dict:
        return all(_same(v, b[k]) for k, v in a.items())
    if type(a) is list:
        return all(_same(x, y) for x, y in zip(a, b))
    return True


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if type(value) is dict else {}
