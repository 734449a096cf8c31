"""Open a pipeline with its cache: the one place that decides where the cache lives."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from tunepipe.cache.store import LocalStore, Store
from tunepipe.registry import Registry
from tunepipe.spec import Pipeline, check_files, load_pipeline

CACHE_ENV = "TUNEPIPE_CACHE"
DEFAULT_CACHE_NAME = ".tunepipe"


def cache_location(spec_path: Path | None, cache_dir: str | None) -> str:
    """``--cache-dir`` wins, then ``$TUNEPIPE_CACHE``, then ``.tunepipe/`` next to the pipeline file.
    A folder, or a URL of object storage (``s3://bucket/prefix``)."""
    if cache_dir:
        return cache_dir
    if os.environ.get(CACHE_ENV):
        return os.environ[CACHE_ENV]
    if spec_path is None:
        return str(Path.cwd() / DEFAULT_CACHE_NAME)
    return str(spec_path.absolute().parent / DEFAULT_CACHE_NAME)


def cache_root(spec_path: Path | None, cache_dir: str | None) -> Path:
    return Path(cache_location(spec_path, cache_dir))


def open_store(location: str) -> Store:
    """The cache at ``location`` (a folder, or ``scheme://...`` object storage through fsspec).
    Executors pass ``store.location()`` to workers, which open the same cache with this."""
    if "://" in location:
        from tunepipe.cache.remote import RemoteStore

        return RemoteStore(location)
    return LocalStore(Path(location))


@dataclass
class Session:
    pipeline: Pipeline
    store: Store
    registry: Registry


def open_session(spec_file: str, overrides: tuple[str, ...] = (), cache_dir: str | None = None,
                 reuse_validated: bool = True) -> Session:
    """Load and validate a pipeline (reusing a stored validation when allowed) and open its cache."""
    path = Path(spec_file)
    store = open_store(cache_location(path, cache_dir))
    registry = Registry(search_paths=[path.absolute().parent])
    compiled = store.root / "compiled" if reuse_validated else None
    pipeline = load_pipeline(path, registry, tuple(overrides), compiled_dir=compiled, display=spec_file)
    check_files(pipeline)
    return Session(pipeline, store, registry)
