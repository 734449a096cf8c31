"""An evaluate-like test plugin for the history commands: writes ``metrics.json`` and
``predictions.jsonl`` in the evaluate stage's format from per-example scores given as parameters,
with the evaluate stage's own bootstrap, in milliseconds and without a model."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from tp_testplugins import spy

from tunepipe.errors import StageFailed
from tunepipe.plugins import Port, StageContext

FORMAT = "tunepipe-evaluation/1"


class EvalReport:
    """Scores ``tuned`` (and ``base``) per example for rouge_l; length_ratio (no better direction)
    and a corpus-level bleu follow from them. ``first``: the first example's number (another value
    evaluates other examples). ``gate``: the least tuned rouge_l that passes; below it the stage
    fails and keeps its report in its scratch folder, as the evaluate stage does."""

    name = "evalreport"
    version = "1"
    description = "an evaluate-like report from given scores"
    params_schema: Mapping[str, Any] = {
        "type": "object", "additionalProperties": False,
        "properties": {"tuned": {"type": "array", "items": {"type": "number"}},
                       "base": {"type": "array", "items": {"type": "number"}},
                       "first": {"type": "integer", "default": 0},
                       "gate": {"type": "number", "default": 0}},
        "required": ["tuned"],
    }
    inputs = {"model": Port("anything", optional=True)}
    outputs = {"report": Port("metrics.json, predictions.jsonl")}
    packages: tuple[str, ...] = ()

    def run(self, ctx: StageContext, inputs: Mapping[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
        from tunepipe.evaluation.bootstrap import Statistic, compare

        spy(ctx)
        tuned, base = list(params["tuned"]), list(params.get("base") or [])
        sides = {"tuned": tuned, **({"base": base} if base else {})}
        scores = {side: {"rouge_l": v, "length_ratio": [1 + x for x in v], "bleu": [x / 2 for x in v]}
                  for side, v in sides.items()}
        stats = {m: (Statistic.mean(scores["tuned"][m]), Statistic.mean(scores["base"][m]) if base else None)
                 for m in ("rouge_l", "length_ratio", "bleu")}
        results = compare(stats, samples=200, confidence=0.95, seed=0)
        metrics = {m: {"higher_is_better": None if m == "length_ratio" else True,
                       "aggregate": "corpus" if m == "bleu" else "mean", **results[m].as_dict()} for m in results}
        doc = {"format": FORMAT, "examples": len(tuned), "rank_by": "rouge_l", "metrics": metrics,
               "bootstrap": {"samples": 200, "confidence": 0.95, "seed": 0},
               "gates": [{"gate": f"tuned.rouge_l >= {params['gate']}", "values": {"tuned.rouge_l": metrics[
                   "rouge_l"]["tuned"]["value"]}}]}
        failed = metrics["rouge_l"]["tuned"]["value"] < params["gate"]
        target = ctx.scratch / "report" if failed else ctx.output("report")
        target.mkdir(parents=True, exist_ok=True)
        (target / "metrics.json").write_text(json.dumps(doc), encoding="utf-8")
        with open(target / "predictions.jsonl", "w", encoding="utf-8") as f:
            for i in reversed(range(len(tuned))):  # ranked, not in example order, like the real report
                n = params["first"] + i
                row = {"index": n, "prompt": [{"role": "user", "content": f"question {n}"}], "reference": f"answer {n}"}
                row.update({side: {"reply": "...", "scores": {m: s[m][i] for m in s}} for side, s in scores.items()})
                f.write(json.dumps(row) + "\n")
        ctx.log.info("scored %d examples", len(tuned))
        if failed:
            raise StageFailed(ctx.stage, f"gate tuned.rouge_l >= {params['gate']} failed; the report is in {target}")
        return {"examples": len(tuned)}
