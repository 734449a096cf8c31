"""Open a pipeline with its cache: the one place that decides where the cache lives."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunepipe.cache.store import LocalStore, Store
from tunepipe.errors import PluginError, UserError
from tunepipe.redact import add_secret_names, redact, secret_values
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
    refuse_secrets(pipeline, registry, compiled)
    check_files(pipeline)
    return Session(pipeline, store, registry)


# ---------------------------------------------------------------------------------------------
# secrets the stages declare

def declare_secrets(pipeline: Pipeline, registry: Registry) -> list[str]:
    """Make the environment variables the stages read secrets from (their plugins' optional
    ``secret_env(params)``, e.g. ``openai.api_key_env: MYCREDS``) secrets of this run, for refusal
    and redaction here and in the processes the run starts. Returns their names."""
    names: list[str] = []
    for spec in pipeline.stages.values():
        hook = getattr(registry.load(spec.uses).plugin, "secret_env", None)
        if hook is None:
            continue
        try:
            found = list(hook(spec.params))
        except Exception as e:  # noqa: BLE001 - a broken plugin must not crash the run with a traceback
            raise PluginError(f"plugin '{spec.uses}' failed to name the environment variables it reads secrets "
                              f"from (secret_env): {type(e).__name__}: {e}. This is a bug in the plugin: report "
                              "it to its authors") from None
        names.extend(n for n in found if isinstance(n, str) and n)
    add_secret_names(names)
    return names


def refuse_secrets(pipeline: Pipeline, registry: Registry, compiled_dir: Path | None = None) -> None:
    """UserError when a parameter, a ``-S`` value or a name of the pipeline holds a secret's value.

    Validation already refuses the values of variables whose names say they are secret; a variable
    only a stage names (``api_key_env: MYCREDS``) is known once the parameters are resolved, which
    is after ``load_pipeline`` stored the validated spec: that stored copy is deleted again."""
    declare_secrets(pipeline, registry)
    secrets = secret_values()
    if not secrets:
        return
    for where, text in _texts(pipeline):
        name = next((n for n, v in secrets.items() if v in text), None)
        if name is None:
            continue
        if compiled_dir is not None:
            _forget_validations(compiled_dir, secrets[name])
        raise UserError(f"{redact(where)} holds the value of ${name}, a secret: remove it. Secrets must not be in a "
                        "pipeline file or --set (they would reach cache keys, run records and the requests a stage "
                        "sends); plugins read them from the environment")


def _texts(pipeline: Pipeline) -> Iterator[tuple[str, str]]:
    """(where, text) for every text of the pipeline that a cache key, a record or a request may hold."""
    for override in pipeline.overrides:
        yield f"--set {override}", override
    yield "the pipeline's name", pipeline.name
    for spec in pipeline.stages.values():
        yield f"stage name '{spec.name}'", spec.name
        for path, text in _strings(spec.params):
            yield f"stage '{spec.name}' parameter '{path}'" if path else f"stage '{spec.name}'", text
        for port, refs in spec.inputs.items():
            for ref in refs:
                yield f"stage '{spec.name}' input '{port}'", ref.text


def _strings(value: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """Every string in a JSON value (keys too), with its dotted path."""
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, Mapping):
        for k, v in value.items():
            yield path, str(k)
            yield from _strings(v, f"{path}.{k}" if path else str(k))
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            yield from _strings(v, f"{path}.{i}" if path else str(i))


def _forget_validations(compiled_dir: Path, value: str) -> None:
    """Delete the stored validated specs that hold ``value`` (as written, or escaped in JSON)."""
    needles = {value.encode(), json.dumps(value)[1:-1].encode(), json.dumps(value, ensure_ascii=False)[1:-1].encode()}
    for file in compiled_dir.glob("*.json"):
        try:
            if any(n in file.read_bytes() for n in needles):
                file.unlink()
        except OSError:
            pass
