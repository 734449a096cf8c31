"""Open a pipeline with its cache: the one place that decides where the cache lives."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from tunepipe.cache.store import LocalStore
from tunepipe.registry import Registry
from tunepipe.spec import Pipeline, check_files, load_pipeline

CACHE_ENV = "TUNEPIPE_CACHE"
DEFAULT_CACHE_NAME = ".tunepipe"


def cache_root(spec_path: Path | None, cache_dir: str | None) -> Path:
    """``--cache-dir`` wins, then ``$TUNEPIPE_CACHE``, then ``.tunepipe/`` next to the pipeline file."""
    if cache_dir:
        return Path(cache_dir)
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    if spec_path is None:
        return Path.cwd() / DEFAULT_CACHE_NAME
    return spec_path.absolute().parent / DEFAULT_CACHE_NAME


@dataclass
class Session:
    pipeline: Pipeline
    store: LocalStore
    registry: Registry


def open_session(spec_file: str, overrides: tuple[str, ...] = (), cache_dir: str | None = None,
                 reuse_validated: bool = True) -> Session:
    """Load and validate a pipeline (reusing a stored validation when allowed) and open its cache."""
    path = Path(spec_file)
    store = LocalStore(cache_root(path, cache_dir))
    registry = Registry(search_paths=[path.absolute().parent])
    compiled = store.root / "compiled" if reuse_validated else None
    pipeline = load_pipeline(path, registry, tuple(overrides), compiled_dir=compiled, display=spec_file)
    check_files(pipeline)
    return Session(pipeline, store, registry)
