"""Find backends: the built-ins, then installed entry points of the group ``tunepipe.backends``.

Each is loaded on first use (a built-in's module, an installed package's entry point) and checked
against :class:`tunepipe.backends.contract.Backend`; a backend that cannot be loaded is a
PluginError that names it, its package and the line that raised. An installed package registers
one the way stage plugins are registered::

    [project.entry-points."tunepipe.backends"]
    wrapped = "tp_example.backend:Wrapped"

The entry-point name is the value of ``backend:``; it must be the backend's ``name`` and may not
take a built-in's.
"""

from __future__ import annotations

import importlib
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from tunepipe.backends.contract import Backend, Settings, code_modules
from tunepipe.errors import PluginError, TunepipeError, UserError

GROUP = "tunepipe.backends"
DEFAULT = "local"  # the train stage's default backend


def _builtin(where: str) -> Callable[[], Backend]:
    """A built-in backend named by ``module:Class``: loaded by name, not imported here, so the code
    fingerprint of a stage that reaches this registry does not take in every backend's module (a
    stage's key follows only the backend it uses: :func:`tunepipe.backends.contract.code_modules`)."""
    module, _, cls = where.partition(":")
    return lambda: getattr(importlib.import_module(module), cls)()


BUILTIN: Mapping[str, Callable[[], Backend]] = {"local": _builtin("tunepipe.backends.local:LocalBackend"),
                                                "openai": _builtin("tunepipe.backends.openai:OpenAIBackend")}


class Backends:
    """The backends of this installation, each loaded once."""

    def __init__(self, builtin: Mapping[str, Callable[[], Backend]] = BUILTIN, group: str = GROUP) -> None:
        self.builtin, self.group = dict(builtin), group
        self._eps: dict[str, Any] | None = None
        self._loaded: dict[str, Backend] = {}

    def names(self) -> list[str]:
        """The built-ins in their order, then the installed ones by name."""
        return [*self.builtin, *sorted(self._entry_points())]

    def all(self) -> list[Backend]:
        return [self.get(n) for n in self.names()]

    def get(self, name: str) -> Backend:
        """The backend named ``name``: a UserError listing the installed ones when there is none."""
        if name not in self._loaded:
            self._loaded[name] = self._load(name)
        return self._loaded[name]

    def distribution(self, name: str) -> str | None:
        """The installed distribution that provides backend ``name`` (None for a built-in)."""
        ep = None if name in self.builtin else self._entry_points().get(name)
        return ep.dist.name if ep is not None and ep.dist is not None else None

    def _entry_points(self) -> dict[str, Any]:
        if self._eps is None:
            from importlib.metadata import entry_points

            found = {ep.name: ep for ep in entry_points(group=self.group)}
            taken = sorted(set(found) & set(self.builtin))
            if taken:
                ep = found[taken[0]]
                raise PluginError(f"the installed package {ep.dist.name if ep.dist is not None else ep.value} "
                                  f"registers a backend named '{ep.name}', the name of a built-in backend: rename "
                                  f"its entry point (group {self.group}) or uninstall the package")
            self._eps = found
        return self._eps

    def _load(self, name: str) -> Backend:
        if name in self.builtin:
            return check_backend(name, self.builtin[name](), "tunepipe")
        ep = self._entry_points().get(name)
        if ep is None:
            raise UserError(f"unknown backend {name!r}: the installed backends are {', '.join(self.names())}; a "
                            f"package adds one with an entry point in the group '{self.group}' (docs/backends.md)")
        where = f"{ep.value} of {ep.dist.name if ep.dist is not None else 'an installed package'}"
        try:
            obj = ep.load()
            backend = obj() if isinstance(obj, type) else obj
        except (Exception, SystemExit) as e:  # a backend's own bug must not look like ours
            raise PluginError(f"backend '{name}' ({where}) could not be loaded: {type(e).__name__}: {e}"
                              f"{_raised_at(e)}. Fix or uninstall that package") from None
        return check_backend(name, backend, where)


def check_backend(name: str, backend: Any, where: str) -> Backend:
    """``backend``, or a PluginError saying which part of the contract it misses."""
    wrong = []
    if getattr(backend, "name", None) != name:
        wrong.append(f"'name' must be {name!r} (its entry-point name), not {getattr(backend, 'name', None)!r}")
    if not isinstance(getattr(backend, "description", None), str):
        wrong.append("'description' must be a string")
    if not isinstance(getattr(backend, "defaults", None), Mapping):
        wrong.append("'defaults' must map model, epochs and batch_size to their values")
    for attr in ("train_settings", "reply_settings"):
        if not isinstance(getattr(backend, attr, None), Settings):
            wrong.append(f"'{attr}' must be a tunepipe.backends.contract.Settings")
    for method in ("train", "replier"):
        if not callable(getattr(backend, method, None)):
            wrong.append(f"'{method}' must be a method")
    if wrong:
        raise PluginError(f"backend '{name}' ({where}) does not follow the backend contract: {'; '.join(wrong)} "
                          "(see docs/backends.md)")
    return backend


def _raised_at(e: BaseException) -> str:
    frames = [f for f in traceback.extract_tb(e.__traceback__) if not f.filename.startswith("<frozen")]
    return f" (at {frames[-1].filename}:{frames[-1].lineno})" if frames else ""


_installed: Backends | None = None


def installed() -> Backends:
    """The backends of this installation (read once per process)."""
    global _installed
    if _installed is None:
        _installed = Backends()
    return _installed


def model_code(model_folder: Path, role: str) -> list[str]:
    """The modules whose code makes results of ``role`` from a trained model (the backend that
    trained it, read from its model.json; see :func:`~tunepipe.backends.contract.code_modules`), for
    the key of a stage that uses the model: not its training code, nor another backend's. Nothing
    when model.json cannot be read: the stage then fails on it, with the reason."""
    from tunepipe import modelref

    try:
        backend = installed().get(modelref.read(model_folder).backend)
    except (TunepipeError, KeyError, OSError, ValueError):
        return []
    return code_modules(backend, role)
