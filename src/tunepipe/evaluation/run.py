"""The evaluate stage's run: replies, scores, intervals, gates, reports.

The output folder ``report`` holds ``metrics.json``, ``predictions.jsonl``, ``report.html`` and
``report.md``. When a gate fails, the stage fails (exit 1) and publishes nothing, so the same four
files are written to ``<scratch>/report/`` instead (the stage's scratch folder in the cache, kept
after a failure) and the error message names that folder.
"""

from __future__ import annotations

import json
import math
import shutil
import statistics
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunepipe.errors import StageFailed, UserError
from tunepipe.evaluation import gates as G
from tunepipe.evaluation import metrics as M
from tunepipe.evaluation.examples import Example, examples_file, load_examples
from tunepipe.evaluation.inputs import read_loss, read_model, training
from tunepipe.evaluation.store import ReplyStore, digest_json
from tunepipe.modelref import ModelRef
from tunepipe.openai_ft.chat import Endpoint
from tunepipe.plugins import Artifact, StageContext
from tunepipe.replies import Decoding, Replier, Reply

FORMAT = "tunepipe-evaluation/1"
RANK_ORDER = ("rouge_l", "token_f1", "semantic", "bleu", "exact_match")
SHARED_AREA = "evaluate"


@dataclass
class Side:
    """One model's replies and scores."""

    name: str  # base | tuned
    model: str  # what the report calls it
    replies: dict[int, Reply] = field(default_factory=dict)
    scores: dict[str, list[float | None]] = field(default_factory=dict)
    bleu_stats: list[list[int]] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)  # generation: time, tokens, latency

    def texts(self, n: int) -> list[str]:
        return [self.replies[i].text for i in range(n)]


# --- generation ------------------------------------------------------------------------------------

def _gen_stats(replies: Mapping[int, Reply], seconds: float, generated: int) -> dict[str, Any]:
    rs = list(replies.values())
    lat = sorted(r.latency_s for r in rs)
    completion = sum(r.completion_tokens for r in rs)

    def pct(q: float) -> float | None:
        return round(lat[min(len(lat) - 1, int(q * len(lat)))], 4) if lat else None

    return {"replies": len(rs), "generated": generated, "reused": len(rs) - generated, "seconds": round(seconds, 3),
            "prompt_tokens": sum(r.prompt_tokens for r in rs), "completion_tokens": completion,
            # throughput only when every reply was made now (reused ones took no time)
            "tokens_per_s": round(completion / seconds, 2) if seconds > 0 and generated == len(rs) else None,
            "latency_s": {"mean": round(statistics.fmean(lat), 4) if lat else None, "p50": pct(0.5), "p95": pct(0.95),
                          "max": round(lat[-1], 4) if lat else None},
            "retries": sum(r.retries for r in rs), "finish": dict(Counter(r.finish for r in rs)),
            "truncated_prompts": sum(r.truncated_prompt for r in rs),
            "errors": sum(r.finish == "error" for r in rs)}


class Generator:
    """Runs one side through its store (resume, reuse) with the backend's generate function."""

    def __init__(self, ctx: StageContext, examples: Sequence[Example]) -> None:
        self.ctx, self.examples = ctx, examples
        self.prompts = digest_json([[ex.prompt, ex.tools] for ex in examples])

    def run(self, side: Side, identity: Mapping[str, Any],
            produce: Callable[[list[Example], Callable[[int, Reply], None]], None]) -> None:
        store = ReplyStore(self.ctx.shared(SHARED_AREA), self.ctx.scratch, side.name,
                           {**identity, "prompts": self.prompts}, self.ctx.log)
        found = {i: r for i, r in store.load().items() if i < len(self.examples)}
        todo = [ex for ex in self.examples if ex.index not in found]
        side.replies = dict(found)

        def done(index: int, reply: Reply) -> None:
            side.replies[index] = reply
            store.add(index, reply)

        t0 = time.monotonic()
        if todo:
            self.ctx.log.info("%s (%s): generating %d replies", side.name, side.model, len(todo))
            produce(todo, done)
        seconds = time.monotonic() - t0
        missing = [ex.index for ex in self.examples if ex.index not in side.replies]
        if missing:  # pragma: no cover - a backend that skipped examples is a bug
            raise StageFailed(self.ctx.stage, f"{side.name}: no reply for {len(missing)} examples")
        store.finish(side.replies)
        side.stats = _gen_stats(side.replies, seconds, len(todo))
        side.stats["cache"] = store.key
        self.ctx.log.info("%s: %s", side.name, json.dumps(side.stats))


def generate_sides(gen: Generator, repliers: Mapping[str, Replier], sides: Sequence[Side],
                   decoding: Decoding) -> None:
    """Each side's replies from its replier (through the reply store: reused, resumed or made)."""
    for side in sides:
        replier = repliers[side.name]

        def produce(todo: list[Example], done: Callable[[int, Reply], None], replier: Replier = replier) -> None:
            try:
                replier.reply([ex.as_prompt() for ex in todo], decoding, done=lambda i, r: done(todo[i].index, r))
            finally:
                replier.close()

        gen.run(side, {**replier.identity(), "decoding": decoding.as_dict()}, produce)


# --- scoring ------------------------------------------------------------------------------------

def score_sides(sides: Sequence[Side], examples: Sequence[Example], metrics: Sequence[str], device: str,
                ctx: StageContext) -> None:
    n = len(examples)
    refs = [ex.reference for ex in examples]
    questions = [ex.last_user for ex in examples]
    for side in sides:
        ctx.progress(f"scoring {side.name}")
        texts = side.texts(n)
        scores, stats = M.score_texts(texts, refs, metrics, questions)
        side.scores.update(scores)
        side.bleu_stats = stats
    if "semantic" in metrics:
        from tunepipe.evaluation.semantic import load_embedder, similarities

        ctx.progress("semantic similarity")
        embedder = load_embedder(device)
        cache: dict[str, Any] = {}
        for side in sides:
            side.scores["semantic"] = similarities(embedder, side.texts(n), refs, cache)


def judge_sides(ctx: StageContext, spec: Any, sides: Sequence[Side], examples: Sequence[Example],
                http_client: Any = None) -> dict[str, Any]:
    from tunepipe.evaluation.judge import (
        JudgeCaller,
        judge_request,
        metric_name,
        normalized,
    )
    from tunepipe.openai_ft.chat import Caller, complete_all

    client = None
    info: dict[str, Any] = {"model": spec.model, "rubric": dict(spec.rubric), "unscored": {}, "prompt_tokens": 0,
                            "completion_tokens": 0, "errors": []}
    gen = Generator(ctx, examples)
    for side in sides:
        verdict_side = Side(f"judge-{side.name}", spec.model)

        def produce(todo: list[Example], done: Callable[[int, Reply], None], side: Side = side) -> None:
            nonlocal client
            client = client or spec.endpoint.client(http_client)
            call = JudgeCaller(Caller(client, spec.endpoint, ctx.stage, lambda: ctx.cancelled), spec)
            complete_all(call, spec.endpoint,
                         [(ex.index, judge_request(spec, ex, side.replies[ex.index].text)) for ex in todo],
                         stage=ctx.stage, doing=f"asking the judge {spec.model} about the {side.name} replies",
                         done=done, check_cancelled=ctx.check_cancelled,
                         progress=lambda n: ctx.progress(f"judge {side.name} {n}/{len(todo)}"))

        replies_digest = digest_json([side.replies[ex.index].text for ex in examples])
        gen.run(verdict_side, {**spec.identity(), "replies": replies_digest}, produce)
        side.stats["judge"] = verdict_side.stats
        unscored = 0
        for criterion in spec.rubric:
            side.scores[metric_name(criterion)] = []
        side.stats["verdicts"] = {}
        for ex in examples:
            reply = verdict_side.replies[ex.index]
            verdict = reply.extra.get("verdict")
            side.stats["verdicts"][ex.index] = verdict
            if verdict is None:
                unscored += 1
                if len(info["errors"]) < 5:
                    info["errors"].append(f"{side.name} example {ex.index} (line {ex.line}): "
                                          f"{reply.extra.get('judge_error', 'no verdict')}")
            for criterion in spec.rubric:
                score = verdict[criterion]["score"] if verdict else None
                side.scores[metric_name(criterion)].append(normalized(score))
        info["unscored"][side.name] = unscored
        info["prompt_tokens"] += verdict_side.stats["prompt_tokens"]
        info["completion_tokens"] += verdict_side.stats["completion_tokens"]
        if unscored:
            ctx.log.warning("the judge gave no usable verdict for %d %s replies; e.g. %s", unscored, side.name,
                            info["errors"][:1])
    return info


# --- the whole run ---------------------------------------------------------------------------------

def rank_metric(p: Mapping[str, Any], metrics: Sequence[str]) -> str:
    if p.get("rank_by"):
        return str(p["rank_by"])
    return next((m for m in RANK_ORDER if m in metrics), metrics[0])


def _fmt(x: float | None) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{x:.3f}"


def judge_spec_of(p: Mapping[str, Any]) -> Any:
    """The judge's settings (its endpoint defaults to ``openai``'s), or None without a judge."""
    from tunepipe.evaluation.judge import JudgeSpec

    j = p.get("judge")
    if not j:
        return None
    endpoint = {**p["openai"], **{k: j[k] for k in ("api_key_env", "base_url") if j.get(k) is not None}}
    return JudgeSpec(j["model"], dict(j["rubric"]), Endpoint.from_params(endpoint), int(p["decoding"]["seed"]))


def aggregate(sides: Sequence[Side], metrics: Sequence[str], b: Mapping[str, Any]) -> dict[str, Any]:
    """Each metric's estimates with bootstrap intervals (paired for the difference)."""
    from tunepipe.evaluation.bootstrap import Statistic, compare

    by = {s.name: s for s in sides}
    tuned, base = by["tuned"], by.get("base")
    stats: dict[str, tuple[Statistic, Statistic | None]] = {}
    for m in metrics:
        if m == "bleu":
            stats[m] = (Statistic.bleu(tuned.bleu_stats), Statistic.bleu(base.bleu_stats) if base else None)
        else:
            stats[m] = (Statistic.mean(tuned.scores[m]), Statistic.mean(base.scores[m]) if base else None)
    return compare(stats, samples=b["samples"], confidence=b["confidence"], seed=b["seed"])


def gate_lookup(results: Mapping[str, Any]) -> Callable[[G.Ref], float | None]:
    def lookup(ref: G.Ref) -> float | None:
        c = results[ref.metric]
        if ref.side == "delta" and ref.stat == "p_not_better":
            return c.p_not_better
        est = {"tuned": c.tuned, "base": c.base, "delta": c.delta}[ref.side]
        if est is None:
            return None
        return {"value": est.value, "ci_low": est.low, "ci_high": est.high}[ref.stat]

    return lookup


def example_rows(examples: Sequence[Example], sides: Sequence[Side], metrics: Sequence[str], rank_by: str,
                 judged: bool) -> list[dict[str, Any]]:
    """One row per example (prompt, reference, each side's reply, scores and costs, the differences),
    sorted worst regression first: by the difference of ``rank_by`` (tuned - base), ascending; without
    a base by tuned's score; ties (and missing values, last) in example order."""
    by = {s.name: s for s in sides}
    tuned, base = by["tuned"], by.get("base")
    rows = []
    for ex in examples:
        row: dict[str, Any] = {"index": ex.index, "line": ex.line, "prompt": ex.prompt, "reference": ex.reference}
        for s in sides:
            reply = s.replies[ex.index]
            entry: dict[str, Any] = {"reply": reply.text, "scores": {m: s.scores[m][ex.index] for m in metrics}}
            entry.update({k: v for k, v in reply.as_dict().items() if k != "text"})
            if judged:
                entry["judge"] = s.stats.get("verdicts", {}).get(ex.index)
            row[s.name] = entry
        if base is not None:
            row["delta"] = {m: (None if tuned.scores[m][ex.index] is None or base.scores[m][ex.index] is None
                                else tuned.scores[m][ex.index] - base.scores[m][ex.index]) for m in metrics}
        rows.append(row)

    def key(row: dict[str, Any]) -> tuple[float, int]:
        v = row["delta"][rank_by] if base is not None else row["tuned"]["scores"][rank_by]
        return (math.inf if v is None else v, row["index"])

    return sorted(rows, key=key)


def write_report(target: Path, doc: Mapping[str, Any], ranked: Sequence[Mapping[str, Any]],
                 loss: Sequence[Mapping[str, Any]], html_examples: int) -> None:
    from tunepipe.evaluation.report_html import render_html
    from tunepipe.evaluation.report_md import render_md

    target.mkdir(parents=True, exist_ok=True)
    (target / "metrics.json").write_text(json.dumps(doc, indent=1, ensure_ascii=False, allow_nan=False) + "\n",
                                         encoding="utf-8")
    with open(target / "predictions.jsonl", "w", encoding="utf-8") as f:
        for row in ranked:
            f.write(json.dumps(row, ensure_ascii=False, allow_nan=False) + "\n")
    (target / "report.html").write_text(render_html(doc, ranked[:html_examples], loss), encoding="utf-8")
    (target / "report.md").write_text(render_md(doc, ranked), encoding="utf-8")


def evaluate(ctx: StageContext, inputs: Mapping[str, Any], p: Mapping[str, Any], *,
             http_client: Any = None) -> dict[str, Any]:
    """The stage's run (see :class:`tunepipe.stages.evaluate.Evaluate`). ``http_client``: an
    ``openai.DefaultHttpxClient`` for every API call (tests inject faults through one)."""
    stage = ctx.stage
    text_metrics = list(p["metrics"])
    compare_base = bool(p["compare_base"])
    judge_spec = judge_spec_of(p)
    all_metrics = text_metrics + (judge_spec.metrics if judge_spec else [])
    gates = []
    for text in p["gates"]:
        try:
            gates.append(G.parse(text, all_metrics, compare_base))
        except G.GateError as e:  # validation reports these with the line; this guards direct calls
            raise UserError(f"{e.message}; {e.hint}") from None
    M.check_available(text_metrics)  # before any generation

    model_art: Artifact = inputs["model"]
    ex_art: Artifact = inputs["examples"]
    ref = read_model(model_art)
    ex_path = examples_file(ex_art)
    examples = load_examples(ex_path, p["max_examples"], label=ex_art.label(ex_path))
    if not examples:
        raise UserError(f"the examples input ({ex_art.name}) holds no examples; evaluate on a non-empty split "
                        "(e.g. give split a validation count such as validation: 50)")
    decoding = Decoding.from_params(p["decoding"])
    backend = ref.backend
    names = (["base"] if compare_base else []) + ["tuned"]
    repliers = {n: _replier(ctx, ref, n == "base", p, http_client) for n in names}
    sides = [Side(n, repliers[n].name) for n in names]
    tuned_name, base_name = repliers["tuned"].name, ref.base_model
    ctx.log.info("evaluating %s against %s on %d examples of %s", tuned_name,
                 base_name if compare_base else "nothing", len(examples), ex_art.label(ex_path))

    t0 = time.monotonic()
    generate_sides(Generator(ctx, examples), repliers, sides, decoding)
    where = repliers["tuned"].info()
    gen_seconds = time.monotonic() - t0
    score_sides(sides, examples, text_metrics, where.get("device", "cpu"), ctx)
    judge_info = judge_sides(ctx, judge_spec, sides, examples, http_client) if judge_spec else None
    ctx.progress("bootstrap")
    results = aggregate(sides, all_metrics, p["bootstrap"])
    gate_results = [G.evaluate(g, gate_lookup(results), all_metrics, compare_base) for g in gates]
    failed = [g for g in gate_results if not g.passed]
    rank_by = rank_metric(p, all_metrics)
    ranked = example_rows(examples, sides, all_metrics, rank_by, judge_spec is not None)
    deltas = [r["delta"][rank_by] for r in ranked if compare_base and r["delta"][rank_by] is not None]
    b = p["bootstrap"]
    doc: dict[str, Any] = {
        "format": FORMAT,
        "examples": len(examples),
        "examples_source": ex_art.label(ex_path),
        "backend": backend,
        "models": {"tuned": tuned_name, **({"base": base_name} if compare_base else {})},
        "model_artifact": model_art.name,
        "compare_base": compare_base,
        "decoding": decoding.as_dict(),
        "metrics": {m: {"definition": M.DEFINITIONS.get(m) or _judge_definition(judge_spec, m),
                        "higher_is_better": M.HIGHER_IS_BETTER.get(m, True),
                        "aggregate": "corpus" if m == "bleu" else "mean",
                        **results[m].as_dict()} for m in all_metrics},
        "bootstrap": {"samples": b["samples"], "confidence": b["confidence"], "seed": b["seed"],
                      "method": "percentile bootstrap over examples; paired resamples for delta (tuned - base)"},
        "gates": [g.as_dict() for g in gate_results],
        "gates_passed": not failed,
        "rank_by": rank_by,
        "regressions": ({"worse": sum(d < 0 for d in deltas), "better": sum(d > 0 for d in deltas),
                         "same": sum(d == 0 for d in deltas)} if compare_base else None),
        "generation": {**where, "seconds": round(gen_seconds, 3),
                       **{s.name: {k: v for k, v in s.stats.items() if k not in ("verdicts", "judge")}
                          for s in sides}},
        "judge": judge_info,
        "training": training(model_art.path),
    }
    # a failed stage publishes nothing: its report goes to the scratch folder, which a failure keeps
    target = ctx.scratch / "report" if failed else ctx.output("report")
    if failed and target.exists():
        shutil.rmtree(target)
    write_report(target, doc, ranked, read_loss(model_art.path), p["html_examples"])
    for g in gate_results:
        (ctx.log.info if g.passed else ctx.log.error)("%s", g.message)
    if failed:
        ctx.log.error("the report of this failed evaluation is in %s", target)
        more = f" (and {len(failed) - 1} more gate{'s' if len(failed) > 2 else ''})" if len(failed) > 1 else ""
        raise StageFailed(stage, f"{failed[0].message}{more}. The report is in {target}/report.html "
                                 "(kept in the stage's scratch folder: a failed stage publishes nothing)")
    return summary(doc)


def _replier(ctx: StageContext, ref: ModelRef, base: bool, p: Mapping[str, Any], http_client: Any) -> Replier:
    from tunepipe.backends.registry import installed

    return installed().get(ref.backend).replier(ctx, ref, base=base, settings=p, http_client=http_client)


def _judge_definition(spec: Any, metric: str) -> str:
    criterion = metric.removeprefix("judge_")
    text = spec.rubric.get(criterion, "") if spec else ""
    return (f"the judge {spec.model if spec else ''}'s score for '{criterion}' ({text}), 1-5 mapped to 0-1 as "
            "(score - 1) / 4; replies without a usable verdict are left out; aggregate: the mean.")


def summary(doc: Mapping[str, Any]) -> dict[str, Any]:
    """The run line: examples, the headline metrics base→tuned, the gates."""
    out: dict[str, Any] = {"examples": doc["examples"]}
    metrics = doc["metrics"]
    shown = [m for m in ("rouge_l", "semantic") if m in metrics] or list(metrics)[:2]
    for m in shown:
        t = metrics[m]["tuned"]["value"]
        out[m] = f"{_fmt(metrics[m]['base']['value'])}→{_fmt(t)}" if "base" in metrics[m] else (
            None if t is None else round(t, 4))
    gates = doc["gates"]
    if gates:
        out["gates"] = f"{sum(g['passed'] for g in gates)}/{len(gates)} passed"
    for m in metrics:
        if m not in shown:
            t = metrics[m]["tuned"]["value"]
            out[m] = f"{_fmt(metrics[m]['base']['value'])}→{_fmt(t)}" if "base" in metrics[m] else (
                None if t is None else round(t, 4))
    return out
