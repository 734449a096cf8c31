"""Exporting a trained model, for the export stage and ``pipeline export``.

:func:`export_model` gathers what the model card and the Modelfile say (:mod:`tunepipe.cardfacts`)
and hands the work to the backend that trained the model (its ``export``: the local backend writes
the adapter, merged weights or GGUF; OpenAI's writes the model reference). :func:`export_to` is
the command: a stage's results out of the cache into a normal folder, written beside it first and
moved into place whole, so an interrupted or failed export never leaves half a folder.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from tunepipe import cardfacts, modelref
from tunepipe.backends.registry import installed
from tunepipe.errors import UserError
from tunepipe.exports import Exported


def export_model(model_dir: Path, out: Path, fmt: str, *, quantize: str | None = None, system: str | None = None,
                 examples: Iterable[Path] = (), data_digest: str | None = None, report: Path | None = None,
                 shared: Path | None = None, source: str = "", pipeline: str | None = None,
                 where: str = "") -> Exported:
    """Export the model in ``model_dir`` (a train stage's output, ``source``: its name such as
    ``train.model``) as ``fmt`` into ``out``."""
    ref = modelref.read(model_dir, name=source, where=where)
    backend = installed().get(ref.backend)
    examples = list(examples)
    if system is None and fmt == "gguf":
        system = cardfacts.usual_system(examples)[0]
    card = cardfacts.facts(ref, fmt, stage=source.partition(".")[0], pipeline=pipeline, files=examples,
                           data_digest=data_digest, report=report)
    options: dict[str, Any] = {"shared": shared, "card": card}
    options.update({k: v for k, v in (("quantize", quantize), ("system", system)) if v is not None})
    export = getattr(backend, "export", None)
    if export is None:
        raise UserError(f"{where}backend '{ref.backend}' cannot export models (it has no export method)")
    return export(ref, fmt, out, **options)


def export_to(session: Any, stage: str | None, to: Path, *, fmt: str | None, force: bool,
              quantize: str | None = None, system: str | None = None) -> tuple[Exported | None, list[str]]:
    """Write ``stage``'s results into ``to``: a train stage's model as ``fmt`` (default
    hf-adapter), any other stage's outputs as they are. Returns the export (None for a copy) and
    the files written."""
    from tunepipe.describe import stage_artifacts
    from tunepipe.trained import find_trained, pick_stage

    _check_target(to, force)
    name = pick_stage(session, stage)
    info = stage_artifacts(session, name)
    outputs = {o: Path(v["path"]) for o, v in info["outputs"].items()}
    is_model = any((p / modelref.FILE).is_file() for p in outputs.values())
    if not is_model and (fmt or quantize):
        raise UserError(f"stage '{name}' produces no model, so --format and --quantize do not apply: drop them "
                        "to copy its outputs")
    with _staged(to, force) as tmp:
        if not is_model:
            return None, _copy_outputs(outputs, tmp)
        trained = find_trained(session, name, info)  # the plan is made once
        digest = ((trained.record.get("parts", {}).get("inputs", {}).get("train") or [{}])[0]).get("digest")
        done = export_model(trained.ref.folder, tmp, fmt or "hf-adapter", quantize=quantize, system=system,
                            examples=trained.data, data_digest=digest, report=trained.report,
                            shared=session.store.shared("models"), source=f"{name}.model",
                            pipeline=session.pipeline.name, where=f"stage '{name}': ")
        return Exported(done.format, to, done.files, done.note), list(done.files)


def _check_target(to: Path, force: bool) -> None:
    if to.exists() and not to.is_dir():
        raise UserError(f"--to {to} is a file: give a folder (it is created when missing)")
    if to.is_dir() and any(to.iterdir()) and not force:
        raise UserError(f"--to {to} is not empty: choose an empty or new folder, or add --force to replace "
                        "its content")
    parent = to.absolute().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"--to {to}: cannot create the folder {parent} ({e.strerror}); choose a folder you can "
                        "write") from None


class _staged:
    """A folder beside ``to`` that becomes ``to`` when the block succeeds (and is removed when it
    does not): ``to`` is never half written."""

    def __init__(self, to: Path, force: bool) -> None:
        self.to, self.force = to, force

    def __enter__(self) -> Path:
        parent = self.to.absolute().parent
        try:
            self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.to.name}.export-", dir=parent))
        except OSError as e:
            raise UserError(f"--to {self.to}: cannot write in {parent} ({e.strerror}); choose a folder you can "
                            "write") from None
        return self.tmp

    def __exit__(self, kind: object, *_: object) -> None:
        if kind is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        os.chmod(self.tmp, 0o777 & ~_umask())
        if self.to.exists():
            old = self.tmp.with_name(self.tmp.name + ".old")
            os.replace(self.to, old)
            os.replace(self.tmp, self.to)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(self.tmp, self.to)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _copy_outputs(outputs: Mapping[str, Path], into: Path) -> list[str]:
    """Each output's files, writable copies (the cache's are read-only): into the folder itself for
    a stage with one output, else into a subfolder per output."""
    names = []
    for name, folder in outputs.items():
        dest = into if len(outputs) == 1 else into / name
        for f in sorted(p for p in folder.rglob("*") if p.is_file()):
            target = dest / f.relative_to(folder)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, target)
            names.append(target.relative_to(into).as_posix())
    return names
