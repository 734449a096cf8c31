"""What the installed backends add to a stage's parameters, and the checks across them.

The train stage's ``with:`` is its own settings plus every backend's ``train_settings``; the
evaluate stage's, its own plus every backend's ``reply_settings`` (a spec does not say which
backend a model comes from: the model reference does). From the same declarations come the stages'
operational paths, the variables that hold secrets, and the refusal of one backend's settings
given with another (so nothing is silently ignored).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from tunepipe.backends.contract import DEFAULT_FOREIGN_HINT, Backend, Settings, optional
from tunepipe.plugins import ParamProblem

TRAIN, REPLY = "train_settings", "reply_settings"  # which of a backend's Settings


def settings(backend: Backend, side: str) -> Settings:
    return getattr(backend, side)


def properties(backends: Iterable[Backend], side: str) -> dict[str, Any]:
    """The settings the backends add, in order (a property two backends share is listed once)."""
    out: dict[str, Any] = {}
    for b in backends:
        for name, schema in settings(b, side).properties.items():
            out.setdefault(name, dict(schema))
    return out


def operational(backends: Iterable[Backend], side: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys(path for b in backends for path in settings(b, side).operational))


def secret_env(backends: Iterable[Backend], side: str, params: Mapping[str, Any]) -> list[str]:
    """The environment variables the backends read secrets from, given these parameters."""
    names = []
    for b in backends:
        for path, default in settings(b, side).secrets.items():
            value = lookup(params, path)
            names.append(value if isinstance(value, str) and value else default)
    return list(dict.fromkeys(names))


def lookup(params: Mapping[str, Any], path: str) -> Any:
    node: Any = params
    for part in path.split("."):
        node = node.get(part) if isinstance(node, Mapping) else None
    return node


def per_backend(backends: Iterable[Backend], text: Callable[[Backend], str]) -> str:
    """``"local: ...; openai: ..."``: one clause per backend, for a shared setting's description."""
    return "; ".join(f"{b.name}: {text(b)}" for b in backends)


def packages(backends: Iterable[Backend]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(p for b in backends for p in optional(b, "packages", ())))


def foreign_settings(params: Mapping[str, Any], chosen: Backend, backends: Sequence[Backend],
                     defaults: Mapping[str, Any]) -> list[ParamProblem]:
    """Settings of other backends given (not at their defaults) with ``chosen``: each one a problem
    at its place. A grouped backend's settings (``openai: {suffix: x}``) are named one by one."""
    own = set(chosen.train_settings.properties)
    hint = optional(chosen, "foreign_hint", DEFAULT_FOREIGN_HINT)
    owners: dict[str, list[Backend]] = {}
    for b in backends:
        if b is not chosen:
            for name in b.train_settings.properties:
                if name not in own:
                    owners.setdefault(name, []).append(b)
    problems = []
    for name, by in owners.items():
        value, default = params.get(name, defaults.get(name)), defaults.get(name)
        message = f"only applies to backend: {' or '.join(b.name for b in by)}"
        why = hint.format(owner=by[0].name)
        if name == by[0].train_settings.block and isinstance(value, Mapping):
            inner = default if isinstance(default, Mapping) else {}
            problems += [ParamProblem((name, k), message, why) for k, v in value.items() if v != inner.get(k)]
        elif value != default:
            problems.append(ParamProblem((name,), message, why))
    return problems


class FromBackends:
    """A stage's class attribute made from the installed backends (``make(backends)``), on first
    access, on the class or an instance: ``params_schema = FromBackends(schema)``."""

    def __init__(self, make: Callable[[Any], Any]) -> None:
        self.make = make
        self.value: Any = None
        self.made = False

    def __get__(self, obj: Any, owner: Any = None) -> Any:
        if not self.made:
            from tunepipe.backends.registry import installed

            self.value, self.made = self.make(installed()), True
        return self.value
