"""Stage-run keys: a hash of the canonical JSON of everything that decides a stage's outputs.

The parts are kept next to the key, so ``--explain`` and ``status`` can say *what* changed.
Upstream outputs enter by their content digest: an upstream rerun that produces the same bytes
leaves downstream keys, and so their cached results, untouched.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from tunepipe.cache.atomic import canonical_json

KEY_FORMAT = 1


def key_parts(*, plugin: str, identity: str, version: str, code: str, params: Mapping[str, Any],
              inputs: Mapping[str, list[str]], outputs: list[str], env: Mapping[str, str]) -> dict[str, Any]:
    """The key's parts. ``inputs`` maps each input name to its artifacts' digests, in order."""
    return {
        "format": KEY_FORMAT,
        "plugin": {"name": plugin, "identity": identity, "version": version},
        "code": code,
        "params": dict(params),
        "inputs": {k: list(v) for k, v in inputs.items()},
        "outputs": sorted(outputs),
        "env": dict(env),
    }


def stage_key(parts: Mapping[str, Any]) -> str:
    return hashlib.sha256(canonical_json(parts).encode()).hexdigest()


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


def _name(path: tuple[str, ...]) -> str:
    return ".".join(path)


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
    oldp, newp = _flatten(old.get("params", {})), _flatten(new.get("params", {}))
    for k in sorted(set(oldp) | set(newp)):
        if k not in oldp:
            reasons.append(f"parameter {_name(k)} added ({_short(newp[k])})")
        elif k not in newp:
            reasons.append(f"parameter {_name(k)} removed (was {_short(oldp[k])})")
        elif canonical_json(oldp[k]) != canonical_json(newp[k]):
            reasons.append(f"parameter {_name(k)}: {_short(oldp[k])} -> {_short(newp[k])}")
    oi, ni = old.get("inputs", {}), new.get("inputs", {})
    for k in sorted(set(oi) | set(ni)):
        if k not in oi:
            reasons.append(f"input {k} added")
        elif k not in ni:
            reasons.append(f"input {k} removed")
        elif oi[k] != ni[k]:
            was = ",".join(d[:8] for d in oi[k])
            now = ",".join(d[:8] for d in ni[k])
            reasons.append(f"input {k} changed ({was} -> {now})")
    if old.get("outputs") != new.get("outputs"):
        reasons.append(f"outputs changed: {old.get('outputs')} -> {new.get('outputs')}")
    oe, ne = old.get("env", {}), new.get("env", {})
    for k in sorted(set(oe) | set(ne)):
        if oe.get(k) != ne.get(k):
            reasons.append(f"package {k}: {oe.get(k, 'absent')} -> {ne.get(k, 'absent')}")
    return reasons
