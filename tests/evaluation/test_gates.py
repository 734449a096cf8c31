"""Gates: the safe expression language, its errors, and how a gate passes or fails."""

from __future__ import annotations

import math

import pytest

from tunepipe.evaluation import gates as G
from tunepipe.evaluation.metrics import METRICS, RANGES
from tunepipe.stages.evaluate import Evaluate

MS = list(METRICS)
NUMBERS = {"tuned.rouge_l": 0.412, "base.rouge_l": 0.381, "delta.rouge_l": 0.031, "delta.rouge_l.ci_low": -0.01,
           "tuned.length_ratio": 1.3, "tuned.semantic": 0.7, "base.semantic": 0.5,
           "delta.semantic.p_not_better": 0.002, "tuned.bleu": math.nan}


def lookup(ref: G.Ref) -> float | None:
    return NUMBERS.get(ref.label)


def check(text: str, metrics: list[str] = MS, compare_base: bool = True) -> G.GateResult:
    return G.evaluate(G.parse(text, metrics, compare_base), lookup, metrics, compare_base)


@pytest.mark.parametrize(("text", "refs"), [
    ("rouge_l >= 0.2", ["tuned.rouge_l"]),
    ("tuned.rouge_l >= 0.2", ["tuned.rouge_l"]),
    ("tuned.rouge_l - base.rouge_l >= 0.05", ["tuned.rouge_l", "base.rouge_l"]),
    ("delta.semantic.ci_low > 0", ["delta.semantic.ci_low"]),
    ("0.8 <= tuned.length_ratio <= 1.2", ["tuned.length_ratio"]),
    ("abs(tuned.length_ratio - 1) < 0.25", ["tuned.length_ratio"]),
    ("max(tuned.rouge_l, tuned.token_f1) > -(0.1) * 2", ["tuned.rouge_l", "tuned.token_f1"]),
    ("delta.semantic.p_not_better < 0.05", ["delta.semantic.p_not_better"]),
])
def test_valid_gates_parse_to_their_references(text: str, refs: list[str]) -> None:
    gate = G.parse(text, MS)
    assert [r.label for r in gate.refs] == refs


@pytest.mark.parametrize(("text", "message", "hint"), [
    ("tuned.rouge >= 0.2", "unknown metric 'rouge' in 'tuned.rouge'", "did you mean 'rouge_l'?"),
    ("tuned.rouge_l => 0.2", "not a valid expression at column", "write a comparison"),
    ("tuned.rouge_l == 0.2", "the operator == is not allowed", "equality"),
    ("tuned.rouge_l", "is not a comparison", "< <= > or >="),
    ("tuned.rouge_l.ci_lo > 0", "unknown statistic 'ci_lo'", "did you mean 'ci_low'?"),
    ("base.rouge_l.p_not_better < 0.05", "unknown statistic 'p_not_better'", "p_not_better is delta's"),
    ("tuned >= 1", "names a side but no metric", "tuned.<metric>"),
    ("__import__('os').system('x') > 0", "only abs(x), min(x, y, ...) and max(x, y, ...) may be called", ""),
    ("tuned.rouge_l ** 2 > 0.1", "the operator ** is not allowed", "+ - * /"),
    ("tuned.rouge_l > 'a'", "'a' is not a number", ""),
    ("tuned.rouge_l > True", "True is not a number", ""),
    ("1 > 0", "names no metric", ""),
    ("(tuned.rouge_l > 0.1) > 0", "a comparison inside an expression", ""),
    ("[tuned.rouge_l][0] > 0", "is not allowed in a gate", ""),
    ("tuned.rouge_l.ci_low.x > 0", "too many parts", ""),
    ("", "a gate is empty", ""),
])
def test_bad_gates_say_what_is_wrong_and_how_to_fix_it(text: str, message: str, hint: str) -> None:
    with pytest.raises(G.GateError) as e:
        G.parse(text, MS)
    assert message in e.value.message
    assert hint in e.value.hint


def test_base_and_delta_need_the_base_model() -> None:
    with pytest.raises(G.GateError, match="needs the base model") as e:
        G.parse("tuned.rouge_l - base.rouge_l > 0", MS, compare_base=False)
    assert "compare_base: true" in e.value.hint
    assert G.parse("tuned.rouge_l > 0.1", MS, compare_base=False).refs


def test_judge_metrics_can_be_gated_when_the_judge_is_on() -> None:
    assert G.parse("tuned.judge_sarcastic >= 0.5", [*MS, "judge_sarcastic"]).refs[0].metric == "judge_sarcastic"
    with pytest.raises(G.GateError, match="unknown metric 'judge_sarcastic'"):
        G.parse("tuned.judge_sarcastic >= 0.5", MS)


def test_a_passing_gate() -> None:
    r = check("tuned.rouge_l - base.rouge_l >= 0.03")
    assert r.passed and r.values == {"tuned.rouge_l": 0.412, "base.rouge_l": 0.381}
    assert check("delta.semantic.p_not_better < 0.05").passed
    assert check("abs(tuned.length_ratio - 1) < 0.5").passed


def test_a_failing_gate_names_the_gate_and_both_numbers() -> None:
    r = check("tuned.rouge_l - base.rouge_l >= 0.05")
    assert not r.passed
    assert r.message == ("gate 'tuned.rouge_l - base.rouge_l >= 0.05' failed: tuned.rouge_l - base.rouge_l = 0.031, "
                         "which is not >= 0.05 (tuned.rouge_l = 0.412, base.rouge_l = 0.381)")
    r = check("tuned.rouge_l >= 0.5")
    assert r.message == "gate 'tuned.rouge_l >= 0.5' failed: tuned.rouge_l = 0.412, which is not >= 0.5"
    r = check("tuned.semantic < base.semantic")
    assert r.message == "gate 'tuned.semantic < base.semantic' failed: tuned.semantic = 0.7, which is not < base.semantic = 0.5"


def test_a_chain_fails_at_the_first_comparison_that_does_not_hold() -> None:
    r = check("0.8 <= tuned.length_ratio <= 1.2")
    assert not r.passed and "tuned.length_ratio = 1.3, which is not <= 1.2" in r.message
    assert check("0.8 <= tuned.length_ratio <= 1.4").passed


def test_a_gate_without_a_number_fails() -> None:
    r = check("tuned.bleu >= 0.1")  # NaN: e.g. no examples scored
    assert not r.passed and "has no value" in r.message
    assert r.values == {"tuned.bleu": None}


def test_division_by_zero_is_no_value_not_a_crash() -> None:
    r = check("tuned.rouge_l / (base.rouge_l - base.rouge_l) > 1")
    assert not r.passed and "no value" in r.message


def test_scale_warnings_catch_a_bleu_on_the_0_to_100_scale() -> None:
    assert G.scale_warnings(G.parse("tuned.bleu >= 20", MS), MS, RANGES) == [
        "bleu lies in 0 to 1, but the gate compares it with 20"]
    assert G.scale_warnings(G.parse("20 <= bleu", MS), MS, RANGES)
    assert G.scale_warnings(G.parse("tuned.bleu >= 0.2", MS), MS, RANGES) == []
    assert G.scale_warnings(G.parse("tuned.length_ratio <= 3", MS), MS, RANGES) == []
    assert G.scale_warnings(G.parse("delta.bleu > -2", MS), MS, RANGES) == []  # a difference: no bound checked


def test_check_params_reports_each_bad_gate_at_its_index() -> None:
    from tunepipe.spec.schema import with_defaults

    params = with_defaults(Evaluate.params_schema, {"gates": ["tuned.rouge_l >= 0.2", "tuned.rouge >= 0.2",
                                                               "bleu >= 25"], "rank_by": "rouge"})
    problems = Evaluate().check_params(params)
    assert [p.path for p in problems] == [("gates", 1), ("gates", 2), ("rank_by",)]
    assert "unknown metric 'rouge'" in problems[0].message and "rouge_l" in problems[0].hint
    assert "compares it with 25" in problems[1].message and "0-1 scale" in problems[1].hint
    judge = with_defaults(Evaluate.params_schema, {"judge": {"model": "gpt-4o-mini", "rubric": {"sarcastic": "is it?"}},
                                                   "gates": ["judge_sarcastic >= 0.5"], "metrics": ["rouge_l"]})
    assert Evaluate().check_params(judge) == []
