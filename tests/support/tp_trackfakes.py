"""Stand-ins for the tracker tests: stages that write what the real train and evaluate stages write
(``loss.csv`` through the local backend's own writer, an evaluation's ``metrics.json`` with the
bootstrap's own estimates, ``report.html`` and ``report.md``) in milliseconds, a stage that leaks a
secret, and an in-memory tracker that records the calls it receives."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tunepipe.plugins import Port, StageContext
from tunepipe.tracking.contract import Metric, RunStart

LOSS = [(1, 2.5, None), (2, 2.0, 2.2), (3, 1.5, None), (4, 1.25, 1.75)]  # step, train_loss, val_loss


class Train:
    """A train stage's model folder: model.json and loss.csv (4 steps, validation at 2 and 4)."""

    name = "fake-train"
    version = "1"
    description = "writes a model folder with a loss curve"
    params_schema: Mapping[str, Any] = {
        "type": "object", "additionalProperties": False,
        "properties": {"learning_rate": {"type": "number", "default": 0.0002},
                       "lora": {"type": "object", "default": {"r": 8, "alpha": 16}},
                       "notes": {"type": "array", "items": {"type": "string"}, "default": []}},
    }
    inputs: Mapping[str, Port] = {}
    outputs = {"model": Port("model.json, loss.csv")}
    packages: tuple[str, ...] = ()

    def run(self, ctx: StageContext, inputs: Mapping[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
        from tunepipe.hf.artifact import write_loss_csv

        out = ctx.output("model")
        (out / "model.json").write_text(json.dumps({"backend": "local", "base_model": "tiny"}), encoding="utf-8")
        write_loss_csv(out / "loss.csv", [{"step": s, "epoch": 1, "train_loss": t, "val_loss": v,
                                           "learning_rate": params["learning_rate"], "tokens": 100 * s}
                                          for s, t, v in LOSS])
        return {"steps": len(LOSS)}


class Evaluate:
    """An evaluate stage's report folder: rouge_l tuned 0.5 [0.4, 0.6], base 0.25, delta 0.25."""

    name = "fake-evaluate"
    version = "1"
    description = "writes an evaluation report"
    params_schema: Mapping[str, Any] = {"type": "object", "additionalProperties": False,
                                        "properties": {"samples": {"type": "integer", "default": 100}}}
    inputs = {"model": Port("a model folder")}
    outputs = {"report": Port("metrics.json, report.html, report.md")}
    packages: tuple[str, ...] = ()

    def run(self, ctx: StageContext, inputs: Mapping[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
        from tunepipe.evaluation.bootstrap import Comparison, Estimate
        from tunepipe.evaluation.run import FORMAT

        rouge = Comparison(Estimate(0.5, 0.4, 0.6), Estimate(0.25, 0.2, 0.3), Estimate(0.25, 0.1, 0.4), 0.01)
        doc = {"format": FORMAT, "examples": 4, "metrics": {"rouge_l": {"definition": "ROUGE-L F1",
                                                                         **rouge.as_dict()}}}
        out = ctx.output("report")
        (out / "metrics.json").write_text(json.dumps(doc), encoding="utf-8")
        (out / "report.html").write_text("<html><body>rouge_l 0.25 → 0.5</body></html>", encoding="utf-8")
        (out / "report.md").write_text("# Evaluation\n\n| rouge_l | 0.25 | 0.5 |\n", encoding="utf-8")
        return {"examples": 4}


class Leak:
    """Puts the value of $TP_TRACK_TOKEN into its summary and log: both reach the run redacted."""

    name = "leak"
    version = "1"
    description = "leaks a token"
    params_schema: Mapping[str, Any] = {"type": "object"}
    inputs: Mapping[str, Port] = {}
    outputs = {"out": Port("x")}
    packages: tuple[str, ...] = ()

    def run(self, ctx: StageContext, inputs: Mapping[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
        token = os.environ["TP_TRACK_TOKEN"]
        ctx.log.info("token %s", token)
        (ctx.output("out") / "x").write_text("x", encoding="utf-8")
        return {"note": f"used {token}", "score": 1.0}


CALLS: list[tuple[str, Any]] = []


class MemoryTracker:
    """A tracker that keeps what it receives in :data:`CALLS` (``fail: start`` raises there)."""

    name = "memory"
    settings_schema: Mapping[str, Any] = {"type": "object", "additionalProperties": False,
                                          "properties": {"fail": {"enum": ["start"]}}}

    def start(self, run: RunStart) -> None:
        CALLS.append(("start", run))
        if run.settings.get("fail") == "start":
            raise ConnectionError("the tracking server at http://tracker.invalid refused the connection")

    def log_metrics(self, metrics: Sequence[Metric]) -> None:
        CALLS.append(("log_metrics", list(metrics)))

    def log_artifact(self, path: Path, folder: str) -> None:
        CALLS.append(("log_artifact", (path.name, folder)))

    def end(self, status: str) -> None:
        CALLS.append(("end", status))
