"""An example model backend from outside tunepipe: ``wrapped`` trains, replies and exports like the
built-in local backend, and adds one setting of its own (``wrapped: {tag: ...}``), which it writes
into the model reference. Registered in the ``tunepipe.backends`` entry-point group, so that
``backend: wrapped`` works in a train stage wherever this package is installed.

It follows the backend contract (``tunepipe.backends.contract.Backend``) by delegating to the
local backend; a real one would call its own library in ``train`` and ``replier``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tunepipe import modelref
from tunepipe.backends.contract import Exported, Settings, TrainData
from tunepipe.backends.local import LocalBackend
from tunepipe.modelref import ModelRef
from tunepipe.plugins import ParamProblem, StageContext
from tunepipe.replies import Decoding, Done, Prompt, Reply

LOCAL = LocalBackend()

TAGGED = {"type": "object", "additionalProperties": False, "default": {},
          "description": "wrapped backend settings.",
          "properties": {"tag": {"type": "string", "default": "",
                                 "description": "Written into model.json and the model's name in reports."}}}


class Wrapped:
    name = "wrapped"
    description = "the local backend, wrapped by tp-example"
    model_help = "as for local"
    defaults: Mapping[str, Any] = LOCAL.defaults
    # the local settings (the same schemas: shared with local) plus its own block
    train_settings = Settings(properties={**LOCAL.train_settings.properties, "wrapped": TAGGED}, block="wrapped",
                              operational=LOCAL.train_settings.operational)
    reply_settings = LOCAL.reply_settings
    packages: tuple[str, ...] = LOCAL.packages

    def check_params(self, params: Mapping[str, Any]) -> list[ParamProblem]:
        return LOCAL.check_params(params)

    def resolve(self, params: Mapping[str, Any]) -> dict[str, Any]:
        return LOCAL.resolve(params)

    def resources(self, params: Mapping[str, Any]) -> dict[str, Any]:
        return LOCAL.resources(params)

    def train(self, ctx: StageContext, data: TrainData, params: Mapping[str, Any], out: Path) -> dict[str, Any]:
        summary = LOCAL.train(ctx, data, params, out)
        ref = modelref.read(out)
        modelref.write(out, {**ref.info, "backend": self.name, "tag": params["wrapped"]["tag"]})
        return {**summary, "tag": params["wrapped"]["tag"]}

    def replier(self, ctx: StageContext, model: ModelRef, *, base: bool, settings: Mapping[str, Any],
                http_client: Any = None) -> Any:
        return Tagged(LOCAL.replier(ctx, model, base=base, settings=settings), "" if base else model.get("tag", ""))

    def export(self, model: ModelRef, fmt: str, out: Path) -> Exported:
        return LOCAL.export(model, fmt, out)


class Tagged:
    """A replier that is the local one under another name."""

    def __init__(self, inner: Any, tag: str) -> None:
        self.inner = inner
        self.name = f"{inner.name} [{tag}]" if tag else inner.name

    def identity(self) -> dict[str, Any]:
        return self.inner.identity()

    def info(self) -> dict[str, Any]:
        return self.inner.info()

    def reply(self, prompts: Sequence[Prompt], decoding: Decoding, *, done: Done | None = None) -> list[Reply]:
        return self.inner.reply(prompts, decoding, done=done)

    def close(self) -> None:
        self.inner.close()
