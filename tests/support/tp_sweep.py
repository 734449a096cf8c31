"""Train- and evaluate-like test plugins for ``pipeline compare``'s tests: a model folder with the
local train stage's ``metrics.json`` and ``loss.csv`` (a curve set by the learning rate), and an
evaluation report (:mod:`tp_evalreport`'s real format) of the per-example scores the model carries.
Milliseconds, no model."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from tp_evalreport import EvalReport
from tp_testplugins import spy

from tunepipe.plugins import Port, StageContext


class SweepTrain:
    """Losses fall faster with a larger ``learning_rate``; ``fail_at``: the learning rate that
    diverges (the stage fails). ``scores``: learning rate as text (``"0.0001"``) -> the per-example
    scores its model gets in :class:`SweepEval`."""

    name = "sweeptrain"
    version = "1"
    description = "a model folder whose losses follow the learning rate"
    params_schema: Mapping[str, Any] = {
        "type": "object", "additionalProperties": False,
        "properties": {"learning_rate": {"type": "number"}, "epochs": {"type": "integer", "default": 1},
                       "steps": {"type": "integer", "default": 6}, "fail_at": {"type": "number", "default": -1},
                       "scores": {"type": "object", "default": {}}},
        "required": ["learning_rate"],
    }
    inputs: Mapping[str, Port] = {"data": Port("anything", optional=True)}
    outputs = {"model": Port("metrics.json, loss.csv, scores.json")}
    packages: tuple[str, ...] = ()

    def run(self, ctx: StageContext, inputs: Mapping[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
        spy(ctx)
        lr, steps = params["learning_rate"], params["steps"]
        if lr == params["fail_at"]:
            raise RuntimeError(f"loss diverged at learning rate {lr}")
        train = [round(2.0 / (1 + lr * 2000 * params["epochs"] * s), 4) for s in range(1, steps + 1)]
        val = [round(t + 0.1, 4) if s % 2 == 0 else None for s, t in enumerate(train, 1)]
        out = ctx.output("model")
        lines = ["step,epoch,train_loss,val_loss,learning_rate,tokens"]
        lines += [f"{s},1,{t},{'' if v is None else v},{lr},100" for s, (t, v) in enumerate(zip(train, val), 1)]
        (out / "loss.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
        kept = [v for v in val if v is not None]
        (out / "metrics.json").write_text(json.dumps({"train_loss": {"first": train[0], "last": train[-1]},
                                                      "val_loss": {"last": kept[-1], "best": min(kept)}}))
        (out / "scores.json").write_text(json.dumps(params["scores"].get(str(lr))))
        return {"steps": steps, "train_loss": train[-1]}


class SweepEval(EvalReport):
    """tp_evalreport's report of the scores the model folder carries (the base scores 0.1)."""

    name = "sweepeval"
    params_schema: Mapping[str, Any] = {"type": "object", "additionalProperties": False, "properties": {}}
    inputs = {"model": Port("a sweeptrain model")}

    def run(self, ctx: StageContext, inputs: Mapping[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
        tuned = json.loads((inputs["model"].path / "scores.json").read_text(encoding="utf-8"))
        if not tuned:
            raise RuntimeError("the model has no scores for its learning rate")
        return super().run(ctx, inputs, {"tuned": tuned, "base": [0.1] * len(tuned), "first": 0, "gate": 0})
