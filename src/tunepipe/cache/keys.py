"""Stage-run keys: a hash of the canonical JSON of everything that decides a stage's outputs.

The parts are kept next to the key, so ``--explain`` and ``status`` can say *what* changed.
Upstream outputs enter by their content digest: an upstream rerun that produces the same bytes
leaves downstream keys, and so their cached results, untouched. Each input also enters by the name
the pipeline gives it (``data/x.jsonl``, ``ingest.records``) and its position: plugins write that
name into provenance and match ``sources:`` patterns against it, so the same bytes under another
name are another result.

A plugin's *operational* parameters (see :class:`tunepipe.plugins.StagePlugin`) never enter a key:
:func:`split_operational` takes them out before the parts are built.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Iterable, Mapping
from typing import Any

from tunepipe.cache.atomic import canonical_json

KEY_FORMAT = 2  # 2: inputs carry their names; operational parameters left out


def key_parts(*, plugin: str, identity: str, version: str, code: str, params: Mapping[str, Any],
              inputs: Mapping[str, list[tuple[str, str]]], outputs: list[str], env: Mapping[str, str]) -> dict[str, Any]:
    """The key's parts. ``inputs`` maps each input to its artifacts' ``(name, digest)``, in order."""
    return {
        "format": KEY_FORMAT,
        "plugin": {"name": plugin, "identity": identity, "version": version},
        "code": code,
        "params": dict(params),
        "inputs": {k: [{"name": n, "digest": d} for n, d in v] for k, v in inputs.items()},
        "outputs": sorted(outputs),
        "env": dict(env),
    }


def stage_key(parts: Mapping[str, Any]) -> str:
    return hashlib.sha256(canonical_json(parts).encode()).hexdigest()


def split_operational(params: Mapping[str, Any], paths: Iterable[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``params`` without the operational ``paths`` (dotted), and those values by path.

    A path whose parent is not a mapping (``judge.api_key_env`` with ``judge: null``) is absent.
    """
    kept: dict[str, Any] = copy.deepcopy(dict(params))
    taken: dict[str, Any] = {}
    for path in paths:
        *parents, leaf = path.split(".")
        node: Any = kept
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and leaf in node:
            taken[path] = node.pop(leaf)
    return kept, taken


def operational_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Reasons-style lines for operational values that differ (they do not change the key)."""
    out = []
    for path in sorted(set(old) | set(new)):
        if canonical_json(old.get(path)) != canonical_json(new.get(path)):
            out.append(f"operational setting {path}: {_short(old.get(path))} -> {_short(new.get(path))} "
                       "(operational, not in the key)")
    return out


def input_digests(entries: Iterable[Any]) -> list[str]:
    """The digests of one input's entries, whatever the key format (1: digests, 2: name and digest)."""
    return [e["digest"] if isinstance(e, Mapping) else str(e) for e in entries]


def _short(value: Any) -> str:
    text = canonical_json(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _flatten(value: Any, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    """Leaf values by their path; an empty mapping below the top is a leaf of its own."""
    if isinstance(value, dict) and (value or not prefix):
        out: dict[tuple[str, ...], Any] = {}
        for k, v in value.items():
            out.update(_flatten(v, prefix + (str(k),)))
        return out
    return {prefix: value}


def _names(entries: Iterable[Any]) -> str:
    return ", ".join(str(e.get("name")) if isinstance(e, Mapping) else "?" for e in entries)


def _name(path: tuple[str, ...]) -> str:
    return ".".join(path)


def _param_reasons(old: Mapping[tuple[str, ...], Any], new: Mapping[tuple[str, ...], Any]) -> list[str]:
    """Each parameter (flattened) added, removed or changed."""
    out = []
    for k in sorted(set(old) | set(new)):
        if k not in old:
            out.append(f"parameter {_name(k)} added ({_short(new[k])})")
        elif k not in new:
            out.append(f"parameter {_name(k)} removed (was {_short(old[k])})")
        elif canonical_json(old[k]) != canonical_json(new[k]):
            out.append(f"parameter {_name(k)}: {_short(old[k])} -> {_short(new[k])}")
    return out


def _input_reasons(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Each input added, removed, changed (its digests) or renamed."""
    out = []
    for k in sorted(set(old) | set(new)):
        was, now = (input_digests(side[k]) if k in side else None for side in (old, new))
        if was is None or now is None:
            out.append(f"input {k} {'added' if was is None else 'removed'}")
        elif was != now:
            out.append(f"input {k} changed ({','.join(d[:8] for d in was)} -> {','.join(d[:8] for d in now)})")
        elif old[k] != new[k]:
            out.append(f"input {k} renamed ({_names(old[k])} -> {_names(new[k])}): plugins may write "
                       "or match an input's name")
    return out


def diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Human reasons why ``new`` differs from ``old`` (both key parts); empty if equal."""
    reasons: list[str] = []
    if old.get("format") != new.get("format"):
        reasons.append(f"the cache key format changed ({old.get('format')} -> {new.get('format')})")
    op, np_ = old.get("plugin", {}), new.get("plugin", {})
    if op.get("identity") != np_.get("identity"):
        reasons.append(f"plugin changed: {op.get('identity')} -> {np_.get('identity')}")
    elif op.get("version") != np_.get("version"):
        reasons.append(f"plugin version {op.get('version')} -> {np_.get('version')}")
    if old.get("code") != new.get("code") and op.get("identity") == np_.get("identity"):
        reasons.append("plugin code changed")
    reasons += _param_reasons(_flatten(old.get("params", {})), _flatten(new.get("params", {})))
    reasons += _input_reasons(old.get("inputs", {}), new.get("inputs", {}))
    if old.get("outputs") != new.get("outputs"):
        reasons.append(f"outputs changed: {old.get('outputs')} -> {new.get('outputs')}")
    oe, ne = old.get("env", {}), new.get("env", {})
    for k in sorted(set(oe) | set(ne)):
        if oe.get(k) != ne.get(k):
            reasons.append(f"package {k}: {oe.get(k, 'absent')} -> {ne.get(k, 'absent')}")
    return reasons
