"""Pipeline specs: load YAML with positions, validate, resolve, and reuse validated specs.

A validated spec is stored under the cache's ``compiled/`` folder, keyed by the spec's bytes,
its path, the ``-S`` overrides and a stamp of the validation code itself. A rerun of an
unchanged spec reuses it after checking that each plugin's identity, version and parameter
schema are unchanged and that every included file still has the content it was validated
with (by size and mtime, else by its SHA-256), so it imports neither yaml, jsonschema nor
networkx (together ~0.35 s here).
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

from tunepipe import __version__
from tunepipe.registry import Registry
from tunepipe.spec.model import InputRef, Pipeline, StageSpec

__all__ = ["InputRef", "Pipeline", "StageSpec", "load_pipeline", "check_files"]

_FORMAT = 3


def check_files(pipeline: Pipeline) -> None:
    """Every file input must still resolve (files can vanish between runs)."""
    from tunepipe.spec.files import check_files as _check

    _check(pipeline)


def _code_stamp() -> str:
    """Identity of the validation code and schema: a change to them invalidates stored specs."""
    here = Path(__file__).resolve().parent
    from tunepipe.spec.schema import pipeline_schema_path

    files = sorted(here.glob("*.py")) + [here.parent / "graph.py", here.parent / "registry.py",
                                         pipeline_schema_path()]
    parts = [__version__]
    for f in files:
        st = f.stat()
        parts.append(f"{f.name}:{st.st_size}:{st.st_mtime_ns}")
    return "|".join(parts)


def _plugin_stamp(registry: Registry, uses: str) -> list[str]:
    loaded = registry.load(uses)
    p = loaded.plugin
    schema = json.dumps(p.params_schema, sort_keys=True)
    ports = json.dumps({"in": {k: [v.optional, v.multiple] for k, v in p.inputs.items()},
                        "out": sorted(p.outputs)}, sort_keys=True)
    return [loaded.identity, p.version, hashlib.sha256((schema + ports).encode()).hexdigest()]


def load_pipeline(path: Path, registry: Registry, overrides: tuple[str, ...] = (),
                  compiled_dir: Path | None = None, display: str | None = None) -> Pipeline:
    """Load, validate and resolve a pipeline file; raises SpecError with every problem."""
    path = path.absolute()
    raw: bytes | None = None
    fingerprint = ""
    if compiled_dir is not None:
        from tunepipe.spec.limits import Refused, read_spec

        try:
            raw = read_spec(path)  # not a device, a pipe or a huge file
        except (OSError, Refused):
            raw = None  # load_file below says why
        if raw is not None:
            h = hashlib.sha256()
            for part in (str(_FORMAT), _code_stamp(), str(path), display or "", json.dumps(list(overrides)), ""):
                h.update(part.encode() + b"\0")
            h.update(raw)
            fingerprint = h.hexdigest()
            reused = _reuse(compiled_dir / f"{fingerprint}.json", registry)
            if reused is not None:
                return reused

    from tunepipe.spec.compile import compile_document
    from tunepipe.spec.yamlpos import decode, load_file, load_text

    doc = load_text(decode(raw, display or str(path)), display or str(path)) if raw is not None else \
        load_file(path, display)
    pipeline = compile_document(doc, path, registry, overrides)
    if compiled_dir is not None and fingerprint and pipeline.sources is not None:
        stamps = {s.uses: _plugin_stamp(registry, s.uses) for s in pipeline.stages.values()}
        _store(compiled_dir / f"{fingerprint}.json", {"pipeline": pipeline.to_json(), "plugins": stamps})
    return pipeline


def _reuse(file: Path, registry: Registry) -> Pipeline | None:
    try:
        stored = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    try:
        if stored["pipeline"].get("sources", []) is None or not _sources_unchanged(stored["pipeline"]["sources"]):
            return None
        for uses, stamp in stored["plugins"].items():
            if _plugin_stamp(registry, uses) != stamp:
                return None
        return Pipeline.from_json(stored["pipeline"])
    except Exception:  # a plugin that no longer loads, an old format: validate from scratch
        return None


def _sources_unchanged(sources: list[list]) -> bool:
    """Whether every included file still holds what it held at validation (stat first, then bytes)."""
    for path, size, mtime_ns, digest in sources:
        try:
            st = os.stat(path)
        except OSError:
            return False
        if not stat.S_ISREG(st.st_mode):  # now a device or a pipe: validation refuses it, never read it here
            return False
        if st.st_size == size and st.st_mtime_ns == mtime_ns:
            continue
        try:
            with open(path, "rb") as f:
                if hashlib.sha256(f.read()).hexdigest() != digest:
                    return False
        except OSError:
            return False
    return True


def _store(file: Path, payload: dict) -> None:
    from tunepipe.cache.atomic import write_json

    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        write_json(file, payload)
    except OSError:
        pass  # a read-only cache only costs the next run a re-validation
