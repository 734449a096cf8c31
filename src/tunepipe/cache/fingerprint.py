"""A fingerprint of a plugin's code: its module and the modules of its own package it imports.

ZenML hashes only a step's own function, so an edited helper goes unnoticed (zenml#1011); DVC
tracks no code unless listed. We follow imports statically (also those inside functions) within
the plugin's top-level package (and, for a plugin that lives in a project folder rather than in
site-packages, every module of that folder), and hash each module's syntax tree, so comments and
formatting do not invalidate a training run but any change in behaviour does. The plugin contract
modules of tunepipe itself are left out: they are the interface, not the plugin's behaviour.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import json
import os
import sys
import threading
import time
from pathlib import Path

CONTRACT_MODULES = frozenset({"tunepipe", "tunepipe.plugins", "tunepipe.errors"})

_lock = threading.Lock()
_by_file: dict[tuple[str, int, int], tuple[str, list[str]]] = {}
_dirty = False
RACY_SECONDS = 2.0


def load_memo(file: Path) -> None:
    """Reuse analyses of unchanged source files from earlier runs (parsing is most of the cost)."""
    try:
        stored = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    with _lock:
        for key, (digest, imports) in stored.items():
            path, size, mtime = key.rsplit("|", 2)
            _by_file.setdefault((path, int(size), int(mtime)), (digest, imports))


def save_memo(file: Path) -> None:
    """Persist the analyses of this run (only when something new was analysed)."""
    global _dirty
    with _lock:
        if not _dirty:
            return
        settled = time.time() - RACY_SECONDS  # a file edited within the same clock tick is not kept
        payload = {f"{p}|{size}|{mtime}": list(v) for (p, size, mtime), v in _by_file.items()
                   if mtime / 1e9 < settled and os.path.exists(p)}
        _dirty = False
    from tunepipe.cache.atomic import write_json

    try:
        write_json(file, payload)
    except OSError:
        pass  # only a speed-up


def _origin(module: str) -> Path | None:
    """The source file of ``module`` (None for a namespace package, an extension, a name that is
    no module), found without importing anything."""
    found = _locate(module)
    return found if isinstance(found, Path) else None


def _locate(module: str) -> Path | list[str] | None:
    """A module's source file, or a namespace package's folders.

    ``importlib.util.find_spec("a.b.c")`` imports ``a.b`` (and so numpy, torch, ... when ``a.b``
    imports them), which a cached rerun must not pay for: submodules are looked up as files in
    their parent package's folders instead (``from x import name`` also asks about ``x.name``).
    """
    parent, _, last = module.rpartition(".")
    if not parent:
        try:
            spec = importlib.util.find_spec(module)
        except Exception:  # noqa: BLE001 - a broken finder or a half-installed package
            return None
        if spec is None:
            return None
        if spec.origin and spec.origin.endswith(".py"):
            return Path(spec.origin)
        if spec.origin is None and spec.submodule_search_locations is not None:
            return list(spec.submodule_search_locations)  # a namespace package
        return None
    package = _locate(parent)
    if isinstance(package, Path):
        if package.name != "__init__.py":
            return None  # the parent is a module: ``last`` is one of its attributes
        folders = [package.parent]
    elif package:
        folders = [Path(f) for f in package]
    else:
        return None
    for folder in folders:
        for candidate in (folder / f"{last}.py", folder / last / "__init__.py"):
            if candidate.is_file():
                return candidate
    subfolders = [str(f / last) for f in folders if (f / last).is_dir()]
    return subfolders or None


def _package_of(module: str, path: Path) -> str:
    return module if path.name == "__init__.py" else module.rpartition(".")[0]


def _analyse(module: str, path: Path) -> tuple[str, list[str]]:
    """(hash of the syntax tree, names of modules this file imports), memoised by file identity."""
    st = path.stat()
    ident = (str(path), st.st_size, st.st_mtime_ns)
    with _lock:
        if ident in _by_file:
            return _by_file[ident]
    source = path.read_bytes()
    tree = ast.parse(source, filename=str(path))
    digest = hashlib.sha256(ast.dump(tree, include_attributes=False).encode()).hexdigest()
    package = _package_of(module, path)
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                try:
                    base = importlib.util.resolve_name("." * node.level + base, package) if package else base
                except ImportError:
                    continue
            if base:
                names.append(base)
                names.extend(f"{base}.{alias.name}" for alias in node.names if alias.name != "*")
    result = (digest, sorted(set(names)))
    global _dirty
    with _lock:
        _by_file[ident] = result
        _dirty = True
    return result


def _installed(path: Path) -> bool:
    """Does this path lie in an installation folder (a virtual env inside the project included)?"""
    return bool({"site-packages", "dist-packages"} & set(path.parts))


def _import_root(module: str, path: Path) -> Path:
    """The sys.path folder a module was found in (``/x`` for ``/x/a/b/c.py`` as ``a.b.c``)."""
    depth = module.count(".") + (1 if path.name == "__init__.py" else 0)
    return path.parents[depth]


def code_fingerprint(module: str) -> str:
    """The fingerprint of ``module`` and of the modules of its own code it reaches by import."""
    h = hashlib.sha256()
    for name, digest in sorted(reached(module).items()):
        h.update(f"{name} {digest}\n".encode())
    return h.hexdigest()


def reached(module: str) -> dict[str, str]:
    """``module`` and the modules of its own code it reaches by import -> the hash of each one's
    syntax tree."""
    top = module.split(".")[0]
    origin = _origin(module)
    root = _import_root(module, origin) if origin else None
    local = root is not None and not _installed(root)
    own_tops: dict[str, bool] = {top: True}

    def own(name: str) -> bool:
        """Is this module part of the plugin's own code (not the stdlib or a third-party library)?"""
        t = name.split(".")[0]
        if t not in own_tops:
            top_origin = None if (not local or t in sys.stdlib_module_names) else _origin(t)
            own_tops[t] = top_origin is not None and root in top_origin.parents and not _installed(top_origin)
        return own_tops[t]

    seen: dict[str, str] = {}
    todo = [module]
    while todo:
        name = todo.pop()
        if name in seen or name in CONTRACT_MODULES or not own(name):
            continue  # a library's version enters the key only through the plugin's `packages`
        path = _origin(name)
        if path is None:
            continue
        digest, imports = _analyse(name, path)
        seen[name] = digest
        todo.extend(i for i in imports if i not in seen)
    return seen
