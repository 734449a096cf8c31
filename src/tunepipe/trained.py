"""A train stage's model out of the cache, for ``pipeline chat``, ``export`` and ``serve``.

These commands use what a run left, never run anything: :func:`find_trained` finds the model of a
train stage (the latest result, stale or not, said so), its backend, the training data it was
made from (for the default system prompt and the model card) and the evaluate stage that judged
it (for the card's metrics). Each mistake is a :class:`~tunepipe.errors.UserError` that says what
to do: no such stage, a matrix without a branch, a stage that makes no model, one that has not run.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunepipe import modelref
from tunepipe.errors import UserError
from tunepipe.modelref import ModelRef
from tunepipe.plugins import StageContext
from tunepipe.session import Session

TRAIN_PLUGIN = "train"


@dataclass
class Trained:
    """A train stage's latest model. ``stale``: why the cached model is not what the pipeline now
    asks for (empty when it is current)."""

    stage: str
    ref: ModelRef
    record: Mapping[str, Any]
    stale: list[str] = field(default_factory=list)
    data: list[Path] = field(default_factory=list)  # the training JSONL files
    report: Path | None = None  # an evaluate stage's report folder for this model
    params: Mapping[str, Any] = field(default_factory=dict)  # the stage's parameters in the pipeline now

    @property
    def backend(self) -> Any:
        from tunepipe.backends.registry import installed

        return installed().get(self.ref.backend)


def train_stages(session: Session) -> list[str]:
    return [n for n, s in session.pipeline.stages.items() if s.uses == TRAIN_PLUGIN]


def pick_stage(session: Session, stage: str | None) -> str:
    """``stage``, or the pipeline's only train stage; an error that lists the choices otherwise."""
    pipeline = session.pipeline
    trains = train_stages(session)
    if stage is None:
        if len(trains) == 1:
            return trains[0]
        if not trains:
            raise UserError(f"{pipeline.path.name} has no train stage (uses: train): name the stage that made "
                            "the model")
        raise UserError(f"{pipeline.path.name} has {len(trains)} train stages: name one of {', '.join(trains)}")
    branches = pipeline.groups().get(stage)
    if branches and stage not in pipeline.stages:
        raise UserError(f"'{stage}' is a matrix stage with {len(branches)} branches: name one of "
                        + ", ".join(branches))
    if stage not in pipeline.stages:
        raise UserError(f"{pipeline.path.name} has no stage '{stage}': its stages are {', '.join(pipeline.stages)}")
    return stage


def find_trained(session: Session, stage: str | None, info: Mapping[str, Any] | None = None) -> Trained:
    """The model of train stage ``stage`` (default: the only one) from its latest cached result;
    ``info``: what :func:`tunepipe.describe.stage_artifacts` said of it, when the caller has it."""
    from tunepipe.describe import stage_artifacts

    name = pick_stage(session, stage)
    info = info or stage_artifacts(session, name)
    output = next((o for o in info["outputs"].values() if (Path(o["path"]) / modelref.FILE).is_file()), None)
    if output is None:
        uses = session.pipeline.stages[name].uses
        trains = train_stages(session)
        hint = f"name a train stage ({', '.join(trains)})" if trains else "name a stage that trains a model"
        raise UserError(f"stage '{name}' (uses: {uses}) produces no model: {hint}")
    ref = modelref.read(Path(output["path"]), name=f"{name}.model", where=f"stage '{name}': ")
    record = session.store.record(info["key"]) or {}
    trained = Trained(name, ref, record, list(info["stale_because"]), list(_training_files(session, record)),
                      _report(session, name, output["digest"]), session.pipeline.stages[name].params)
    modelref.require(ref, getattr(trained.backend, "model_fields", {}), where=f"stage '{name}': ")
    return trained


def hosted(trained: Trained) -> None:
    """A UserError when the model lives at a service that serves it already (its backend says so
    with ``hosted``): an OpenAI fine-tuned model is called at OpenAI, not served from here."""
    backend = trained.backend
    if getattr(backend, "hosted", False):
        model = trained.ref.get("fine_tuned_model") or trained.ref.base_model
        raise UserError(f"stage '{trained.stage}' trained {model} with backend '{backend.name}', which serves it "
                        f"itself: call it there with model={model!r} (pipeline chat talks to it from here)")


def _training_files(session: Session, record: Mapping[str, Any]) -> Iterator[Path]:
    """The JSONL files of the train input the model was made from (a stage's output in the cache,
    or a file of the project)."""
    for item in (record.get("parts", {}).get("inputs", {}).get("train") or []):
        obj = session.store.object_path(item["digest"])
        where = obj if obj.is_dir() else session.pipeline.root / item["name"]
        if where.is_dir():
            yield from sorted(where.rglob("*.jsonl"))
        elif where.is_file():
            yield where


def _report(session: Session, train: str, model: str) -> Path | None:
    """The report folder of the latest evaluate run over this very model (digest ``model``) of the
    train stage, if cached: a report of an earlier model would describe another model."""
    from tunepipe.records import PipelineState

    pipeline = session.pipeline
    last = PipelineState(session.store.root, pipeline.path, pipeline.name).read()  # the stages' last keys
    for name, spec in session.pipeline.stages.items():
        refs = spec.inputs.get("model") or []
        if spec.uses != "evaluate" or not any(r.kind == "stage" and r.stage == train for r in refs):
            continue
        key = last.get(name, {}).get("key")
        record = session.store.record(key) if key else None
        judged = [i.get("digest") for i in (record or {}).get("parts", {}).get("inputs", {}).get("model") or []]
        if record and "report" in record.get("outputs", {}) and model in judged:
            return session.store.fetch(record["outputs"]["report"])
    return None


@contextlib.contextmanager
def context(session: Session, stage: str, threads: int | None = None) -> Iterator[StageContext]:
    """A context for using a model outside a run: the cache's shared folders (converted base
    models are reused), a scratch folder of its own, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="tunepipe-use-") as scratch:
        yield StageContext(stage=stage, key="", outputs={}, scratch=Path(scratch),
                           log=logging.getLogger(f"tunepipe.use.{stage}"),
                           threads=threads or max(1, os.cpu_count() or 1), _shared=session.store.shared)
