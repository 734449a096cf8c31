"""Regression gates: comparisons of the evaluation's numbers that must hold, or the stage fails.

A gate is a comparison in a small, safe expression language (parsed with :mod:`ast` and checked
against a whitelist; nothing is ever ``eval``-ed)::

    rouge_l >= 0.2                                  # a bare metric is the tuned model's
    tuned.rouge_l - base.rouge_l >= 0.05
    delta.semantic.ci_low > 0                       # tuned better than base beyond the interval
    0.8 <= tuned.length_ratio <= 1.2                # chains are allowed
    abs(tuned.length_ratio - 1) < 0.25
    tuned.judge_sarcastic >= base.judge_sarcastic

A reference is ``[side.]metric[.stat]``: side ``tuned`` (default), ``base`` or ``delta``
(tuned - base); stat ``value`` (default), ``ci_low`` or ``ci_high`` (the bootstrap interval), and
for ``delta`` also ``p_not_better`` (the share of resamples where tuned is not above base). Numbers,
``+ - * /``, parentheses, unary minus and ``abs``/``min``/``max`` may be used; the comparison
operators are ``< <= > >=``, and ``==``/``!=`` are refused on purpose (floats).
"""

from __future__ import annotations

import ast
import difflib
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

SIDES = ("tuned", "base", "delta")
STATS = ("value", "ci_low", "ci_high")
DELTA_STATS = (*STATS, "p_not_better")
FUNCTIONS: dict[str, Callable[..., float]] = {"abs": abs, "min": min, "max": max}
_COMPARE = {ast.Gt: ">", ast.GtE: ">=", ast.Lt: "<", ast.LtE: "<="}
_COMPARE_FN: dict[str, Callable[[float, float], bool]] = {
    ">": lambda a, b: a > b, ">=": lambda a, b: a >= b, "<": lambda a, b: a < b, "<=": lambda a, b: a <= b}
_BINARY = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}


class GateError(ValueError):
    """A gate that cannot be parsed or names something unknown; ``hint`` says how to fix it."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message, self.hint = message, hint


@dataclass(frozen=True)
class Ref:
    side: str
    metric: str
    stat: str = "value"

    @property
    def label(self) -> str:
        return f"{self.side}.{self.metric}" + ("" if self.stat == "value" else f".{self.stat}")


@dataclass(frozen=True)
class Gate:
    text: str
    tree: ast.expr = field(repr=False, compare=False)
    refs: tuple[Ref, ...] = ()


@dataclass(frozen=True)
class GateResult:
    text: str
    passed: bool
    message: str  # for a failed gate: which comparison failed, with both numbers and the references
    values: Mapping[str, float | None]  # each reference's value

    def as_dict(self) -> dict[str, object]:
        return {"gate": self.text, "passed": self.passed, "message": self.message, "values": dict(self.values)}


def _suggest(word: str, options: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'? " if close else ""


def _dotted(node: ast.expr) -> list[str] | None:
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return parts[::-1]
    return None


def parse_ref(parts: Sequence[str], metrics: Sequence[str], compare_base: bool) -> Ref:
    """A reference from its dotted parts, checked against the metrics the stage computes."""
    known = ", ".join(metrics)
    text = ".".join(parts)
    if parts[0] in SIDES:
        side, rest = parts[0], list(parts[1:])
        if not rest:
            raise GateError(f"'{text}' names a side but no metric", f"write {side}.<metric>, e.g. {side}.{metrics[0]}; "
                                                                   f"metrics: {known}")
    else:
        side, rest = "tuned", list(parts)
    metric = rest[0]
    if metric not in metrics:
        if metric in SIDES or metric in DELTA_STATS:
            hint = f"a reference is [side.]metric[.stat], e.g. tuned.{metrics[0]}.ci_low; metrics: {known}"
        else:
            hint = f"{_suggest(metric, metrics)}the stage computes: {known}"
        raise GateError(f"unknown metric '{metric}' in '{text}'", hint)
    stat = "value"
    if len(rest) == 2:
        stat = rest[1]
        allowed = DELTA_STATS if side == "delta" else STATS
        if stat not in allowed:
            raise GateError(f"unknown statistic '{stat}' in '{text}'",
                            f"{_suggest(stat, allowed)}use one of {', '.join(allowed)}"
                            + ("" if side == "delta" or stat != "p_not_better" else " (p_not_better is delta's)"))
    elif len(rest) > 2:
        raise GateError(f"'{text}' has too many parts", "a reference is [side.]metric[.stat], e.g. delta.rouge_l.ci_low")
    if side != "tuned" and not compare_base:
        raise GateError(f"'{text}' needs the base model, but compare_base is false",
                        "set compare_base: true, or gate on tuned numbers only")
    return Ref(side, metric, stat)


def parse(text: str, metrics: Sequence[str], compare_base: bool = True) -> Gate:
    """Parse and check one gate; raises :class:`GateError`."""
    if not isinstance(text, str) or not text.strip():
        raise GateError("a gate is empty", "write a comparison, e.g. tuned.rouge_l >= 0.2")
    try:
        tree = ast.parse(text.strip(), mode="eval").body
    except SyntaxError as e:
        col = f" at column {e.offset}" if e.offset else ""
        raise GateError(f"gate '{text}' is not a valid expression{col} ({e.msg})",
                        "write a comparison such as tuned.rouge_l - base.rouge_l >= 0.05") from None
    if not isinstance(tree, ast.Compare):
        raise GateError(f"gate '{text}' is not a comparison",
                        "a gate compares with < <= > or >=, e.g. tuned.rouge_l >= 0.2")
    refs: list[Ref] = []

    def check(node: ast.expr) -> None:
        if isinstance(node, ast.Compare):
            if node is not tree:
                raise GateError(f"gate '{text}': a comparison inside an expression", "compare once (chains such "
                                "as 0.8 <= tuned.length_ratio <= 1.2 are fine)")
            for op in node.ops:
                if type(op) not in _COMPARE:
                    raise GateError(f"gate '{text}': the operator {_op_text(op)} is not allowed",
                                    "use < <= > or >= (equality of measured numbers is never reliable)")
            for sub in [node.left, *node.comparators]:
                check(sub)
        elif isinstance(node, ast.BinOp):
            if type(node.op) not in _BINARY:
                raise GateError(f"gate '{text}': the operator {_op_text(node.op)} is not allowed", "use + - * /")
            check(node.left)
            check(node.right)
        elif isinstance(node, ast.UnaryOp):
            if not isinstance(node.op, (ast.USub, ast.UAdd)):
                raise GateError(f"gate '{text}': the operator {_op_text(node.op)} is not allowed", "use + - * /")
            check(node.operand)
        elif isinstance(node, ast.Constant):
            if isinstance(node.value, bool) or not isinstance(node.value, (int, float)):
                raise GateError(f"gate '{text}': {node.value!r} is not a number", "compare with numbers")
        elif isinstance(node, ast.Call):
            name = node.func.id if isinstance(node.func, ast.Name) else None
            if name not in FUNCTIONS or node.keywords or not node.args or (name == "abs" and len(node.args) != 1):
                raise GateError(f"gate '{text}': only abs(x), min(x, y, ...) and max(x, y, ...) may be called",
                                "e.g. abs(tuned.length_ratio - 1) < 0.25")
            for a in node.args:
                check(a)
        elif isinstance(node, (ast.Name, ast.Attribute)):
            parts = _dotted(node)
            if parts is None:
                raise GateError(f"gate '{text}': cannot read '{ast.unparse(node)}'", "write [side.]metric[.stat]")
            try:
                refs.append(parse_ref(parts, metrics, compare_base))
            except GateError as e:
                raise GateError(f"gate '{text}': {e.message}", e.hint) from None
        else:
            raise GateError(f"gate '{text}': '{ast.unparse(node)}' is not allowed in a gate",
                            "use metrics, numbers, + - * /, parentheses, abs/min/max and one comparison")

    check(tree)
    if not refs:
        raise GateError(f"gate '{text}' names no metric", f"e.g. tuned.{metrics[0]} >= 0.2")
    return Gate(text.strip(), tree, tuple(dict.fromkeys(refs)))


def _op_text(op: ast.AST) -> str:
    return {ast.Eq: "==", ast.NotEq: "!=", ast.Pow: "**", ast.Mod: "%", ast.FloorDiv: "//", ast.Not: "not",
            ast.Invert: "~", ast.Is: "is", ast.IsNot: "is not", ast.In: "in", ast.NotIn: "not in",
            ast.MatMult: "@", ast.BitAnd: "&", ast.BitOr: "|", ast.BitXor: "^", ast.LShift: "<<",
            ast.RShift: ">>"}.get(type(op), type(op).__name__)


def scale_warnings(gate: Gate, metrics: Sequence[str], ranges: Mapping[str, tuple[float, float | None]],
                   compare_base: bool = True) -> list[str]:
    """Comparisons of a metric with a number outside the metric's range (e.g. ``bleu >= 20`` where
    BLEU is 0-1): almost surely a mistake of scale."""
    out = []
    tree = gate.tree
    assert isinstance(tree, ast.Compare)
    operands = [tree.left, *tree.comparators]
    for a, b in zip(operands, operands[1:]):
        for ref_node, num_node in ((a, b), (b, a)):
            parts = _dotted(ref_node) if isinstance(ref_node, (ast.Name, ast.Attribute)) else None
            number = _number(num_node)
            if parts is None or number is None:
                continue
            ref = parse_ref(parts, metrics, compare_base)
            if ref.side == "delta" or ref.stat == "p_not_better" or ref.metric not in ranges:
                continue
            low, high = ranges[ref.metric]
            if (high is not None and number > high) or number < low:
                span = f"{low:g} to {high:g}" if high is not None else f"at least {low:g}"
                out.append(f"{ref.metric} lies in {span}, but the gate compares it with {number:g}")
    return out


def _number(node: ast.expr) -> float | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        return float(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        inner = _number(node.operand)
        return None if inner is None else -inner
    return None


def _fmt(x: float) -> str:
    return "no value" if x is None or not math.isfinite(x) else f"{x:.4g}"


def evaluate(gate: Gate, lookup: Callable[[Ref], float | None], metrics: Sequence[str],
             compare_base: bool = True) -> GateResult:
    """Check a gate against the numbers ``lookup`` gives (None or NaN: no value, the gate fails)."""
    values: dict[str, float | None] = {}

    def value(node: ast.expr) -> float:
        if isinstance(node, ast.Constant):
            return float(node.value)
        if isinstance(node, (ast.Name, ast.Attribute)):
            ref = parse_ref(_dotted(node) or [], metrics, compare_base)
            v = lookup(ref)
            values[ref.label] = None if v is None or not math.isfinite(v) else float(v)
            return math.nan if v is None else float(v)
        if isinstance(node, ast.UnaryOp):
            x = value(node.operand)
            return -x if isinstance(node.op, ast.USub) else x
        if isinstance(node, ast.BinOp):
            a, b = value(node.left), value(node.right)
            op = _BINARY[type(node.op)]
            if op == "/":
                return a / b if b != 0 else math.nan
            return a + b if op == "+" else a - b if op == "-" else a * b
        if isinstance(node, ast.Call):
            assert isinstance(node.func, ast.Name)
            args = [value(a) for a in node.args]
            if any(math.isnan(a) for a in args):
                return math.nan
            return float(FUNCTIONS[node.func.id](*args))
        raise GateError(f"gate '{gate.text}': cannot evaluate '{ast.unparse(node)}'")

    tree = gate.tree
    assert isinstance(tree, ast.Compare)
    operands = [tree.left, *tree.comparators]
    numbers = [value(o) for o in operands]
    failed = ""
    for (a, b), op, (x, y) in zip(zip(operands, operands[1:]), tree.ops, zip(numbers, numbers[1:])):
        sym = _COMPARE[type(op)]
        if math.isnan(x) or math.isnan(y):
            failed = f"{ast.unparse(a)} {sym} {ast.unparse(b)} has no value ({_fmt(x)} {sym} {_fmt(y)})"
            break
        if not _COMPARE_FN[sym](x, y):
            left = ast.unparse(a) if not isinstance(a, ast.Constant) else None
            right = ast.unparse(b) if not isinstance(b, ast.Constant) else None
            left_text = f"{left} = {_fmt(x)}" if left else _fmt(x)
            right_text = f"{right} = {_fmt(y)}" if right else _fmt(y)
            failed = f"{left_text}, which is not {sym} {right_text}"
            break
    detail = ", ".join(f"{k} = {_fmt(v)}" for k, v in values.items())
    if failed:
        simple = all(isinstance(o, (ast.Constant, ast.Name, ast.Attribute)) for o in operands)
        message = f"gate '{gate.text}' failed: {failed}" + ("" if simple else f" ({detail})")
        return GateResult(gate.text, False, message, values)
    return GateResult(gate.text, True, f"gate '{gate.text}' passed ({detail})", values)
