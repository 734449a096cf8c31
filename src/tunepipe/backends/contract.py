"""The backend contract: what a model backend is (a ``typing.Protocol``: no base class to inherit).

A backend trains a chat model (the ``train`` stage, ``backend: NAME``), replies from a trained
model or its base (the ``evaluate`` stage, and later ``pipeline chat`` and ``pipeline serve``) and
exports a trained model. Built-in: ``local`` (transformers + PEFT) and ``openai`` (the fine-tuning
API); more come from installed packages (entry-point group ``tunepipe.backends``). See
``docs/backends.md`` for a complete third backend.

Nothing here imports a library, and a backend's module must not either at import time: the train
stage reads every installed backend's settings to build its parameter schema, so loading one must
be as cheap as reading a dataclass.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol, runtime_checkable

from tunepipe.exports import EXPORT_FORMATS, Exported
from tunepipe.modelref import ModelRef
from tunepipe.plugins import Artifact, StageContext
from tunepipe.replies import Replier

# what a backend's author imports from here (the export types live below, in tunepipe.exports)
__all__ = ["EXPORT_FORMATS", "ROLES", "Backend", "Exported", "Settings", "TrainData", "code_modules", "optional", "part"]

ROLES = ("train", "reply", "export")  # what a backend's ``code`` names a module for


@dataclass(frozen=True)
class Settings:
    """The settings a backend adds to a stage's ``with:`` (the train stage's for training, the
    evaluate stage's for replying).

    ``properties``: the JSON Schema of each setting, by name, in the order ``pipeline stages``
    lists them; each needs a ``default``. ``block``: the one property that holds all of them when
    they are grouped (the OpenAI backend's ``openai:``), or None when they sit at the top of
    ``with:`` (the local backend's ``learning_rate``, ``lora``...). Two backends may share a
    property only with the same schema (a wrapper reusing another backend's settings).
    ``operational``: dotted paths among them that change how a run goes, never what it produces
    (left out of the cache key; see docs/plugins.md). ``secrets``: dotted path of a setting that
    names an environment variable holding a secret -> the variable when the setting is empty.
    """

    properties: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    block: str | None = None
    operational: tuple[str, ...] = ()
    secrets: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class TrainData:
    """What the train stage hands a backend: the training and validation JSONL files (validation
    None when absent or empty) and the optional ``base_model`` input (a folder to start from)."""

    train: Path
    validation: Path | None = None
    base_model: Artifact | None = None


@runtime_checkable
class Backend(Protocol):
    """A model backend.

    Attributes:
        name: the value of ``backend:`` (for an installed backend, its entry-point name).
        description: one line after ``NAME:`` in the train stage's ``backend`` description
            (``"transformers + PEFT on this machine (offline)"``).
        defaults: the values of the train stage's shared settings ``model``, ``epochs`` and
            ``batch_size`` when the spec leaves them out (null).
        train_settings: the settings it adds to the train stage (:class:`Settings`).
        reply_settings: the settings its replier reads from the evaluate stage (:class:`Settings`).

    Methods:
        ``train(ctx, data, params, out) -> dict``: train on ``data`` (:class:`TrainData`) with the
            stage's parameters (defaults and :meth:`resolve` applied), write the model into ``out``
            (``model.json`` through :func:`tunepipe.modelref.write`, with ``backend: NAME``, plus
            ``metrics.json`` and ``loss.csv`` when it has them), return the run line's summary.
        ``replier(ctx, model, *, base, settings, http_client=None) -> Replier``: replies from the
            trained ``model`` (a :class:`tunepipe.modelref.ModelRef` this backend wrote), or with
            ``base`` from the model it was trained from; ``settings`` is the asking stage's
            ``with:`` (it reads its ``reply_settings`` there); ``http_client`` is for remote
            backends (a proxy, tests' fault injection), others ignore it.

    Optional members (looked up with ``getattr``; a backend without them works):
        ``code`` (mapping): role (``train``, ``reply``, ``export``) -> the module that does that
            work. The backend's own module then loads it by name (:func:`part`) instead of importing
            it, so a stage's code fingerprint follows only its role's code: editing the replier
            never re-runs a (paid) training job, nor the trainer an evaluation. Without ``code``
            the backend's module and everything it imports enter every key that uses it.
        ``model_help`` (str): what ``model:`` names for it, for the train stage's description.
        ``hosted`` (bool): its trained models live at a service that serves them already (OpenAI);
            ``pipeline serve`` then says where to call them instead of serving them from here.
        ``packages`` (tuple): distributions whose versions enter the train stage's cache key.
        ``model_fields`` (mapping): fields its model.json must hold -> what to do when one is
            missing (checked before a replier is made).
        ``foreign_hint`` (str): the hint when another backend's setting is given with this one;
            ``{owner}`` is that backend's name (default ``"remove it or set backend: {owner}"``).
        ``check_params(params) -> list[ParamProblem]``: its cross-field checks, when it is the
            chosen backend (reported at their line by ``validate``).
        ``resolve(params) -> dict``: the parameters with its own defaults filled in (after the
            shared ones), e.g. ``epochs: auto`` as a number.
        ``resources(params) -> dict``: what the train stage's Ray task asks for (see the
            ``resources`` hook in docs/plugins.md).
        ``preview(train, params) -> list[str]``: lines ``run --dry-run`` shows before training
            (a cost estimate); ``train`` is the training file. Must change nothing.
        ``export(model, fmt, out, **options) -> Exported``: write the trained model in format ``fmt`` (one
            of :data:`EXPORT_FORMATS`) into the folder ``out``; a UserError for a format it cannot
            write, saying why.
    """

    name: str
    description: str
    defaults: Mapping[str, Any]
    train_settings: Settings
    reply_settings: Settings

    def train(self, ctx: StageContext, data: TrainData, params: Mapping[str, Any], out: Path) -> dict[str, Any]:
        ...

    def replier(self, ctx: StageContext, model: ModelRef, *, base: bool, settings: Mapping[str, Any],
                http_client: Any = None) -> Replier:
        ...


DEFAULT_FOREIGN_HINT = "remove it or set backend: {owner}"


def optional(backend: Backend, name: str, default: Any) -> Any:
    """An optional member of a backend, or ``default``."""
    return getattr(backend, name, default)


def part(backend: Backend, role: str) -> ModuleType:
    """The module a backend's ``code`` names for ``role``, imported now (see ``code`` above)."""
    return importlib.import_module(optional(backend, "code", {})[role])


def code_modules(backend: Backend, role: str) -> list[str]:
    """The modules whose code makes a backend's results of ``role``: the backend's own module (its
    settings and defaults) and the one its ``code`` names for the role. Their fingerprints, with
    what each imports, enter the key of a stage that uses the backend in that role."""
    named = optional(backend, "code", {}).get(role)
    return [type(backend).__module__, *([named] if named else [])]
