"""A fingerprint of a plugin's code: its module and the modules of its own package it imports.

ZenML hashes only a step's own function, so an edited helper goes unnoticed (zenml#1011); DVC
tracks no code unless listed. We follow imports statically (also those inside functions) within
the plugin's top-level package, and hash each module's syntax tree, so comments and formatting
do not invalidate a training run but any change in behaviour does. The plugin contract modules
of tunepipe itself are left out: they are the interface, not the plugin's behaviour.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import threading
from pathlib import Path

CONTRACT_MODULES = frozenset({"tunepipe", "tunepipe.plugins", "tunepipe.errors"})

_lock = threading.Lock()
_by_file: dict[tuple[str, int, int], tuple[str, list[str]]] = {}


def _origin(module: str) -> Path | None:
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError, AttributeError):
        return None
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return None
    return Path(spec.origin)


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
    with _lock:
        _by_file[ident] = result
    return result


def code_fingerprint(module: str) -> str:
    """The fingerprint of ``module`` and of every module of its own package it reaches by import."""
    top = module.split(".")[0]
    seen: dict[str, str] = {}
    todo = [module]
    while todo:
        name = todo.pop()
        if name in seen or name in CONTRACT_MODULES:
            continue
        path = _origin(name)
        if path is None:
            continue
        digest, imports = _analyse(name, path)
        seen[name] = digest
        todo.extend(i for i in imports if i.split(".")[0] == top and i not in seen)
    h = hashlib.sha256()
    for name in sorted(seen):
        h.update(f"{name} {seen[name]}\n".encode())
    return h.hexdigest()
