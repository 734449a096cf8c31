"""Confidence intervals by the percentile bootstrap over examples, paired for differences.

One set of resamples (``samples`` draws of N example indices with replacement, from a seeded
NumPy generator) serves every metric and both sides: a resample is a vector of counts (how often
each example was drawn), and a statistic is recomputed from the counts:

* a mean: ``sum(count_i * x_i) / sum(count_i)`` over the examples with a value (a NaN, e.g. a
  judge that gave no score, is left out);
* corpus BLEU: sacrebleu's formula on the count-weighted sums of the per-example statistics.

The interval is the ``(1-c)/2`` and ``(1+c)/2`` percentiles of the resampled statistic. For the
difference tuned - base, each resample's difference is taken on the *same* examples (a paired
bootstrap), so the variation between examples, which both sides share, cancels out; ``p_not_better``
is the fraction of resamples where tuned is not above base (a one-sided bootstrap p-value).

Memory: the counts are made in blocks of at most :data:`BLOCK_CELLS` cells (``block × N``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

BLOCK_CELLS = 4_000_000


@dataclass(frozen=True)
class Statistic:
    """How to compute an aggregate from per-example data, for the point value and a resample.

    ``kind``: ``mean`` (``data``: N values, NaN = missing) or ``bleu`` (``data``: N rows of
    sacrebleu statistics).
    """

    kind: str
    data: Any  # numpy array

    @classmethod
    def mean(cls, values: Sequence[float | None]) -> Statistic:
        import numpy as np

        return cls("mean", np.array([math.nan if v is None else v for v in values], dtype=np.float64))

    @classmethod
    def bleu(cls, stats: Sequence[Sequence[int]]) -> Statistic:
        import numpy as np

        return cls("bleu", np.array(stats, dtype=np.float64).reshape(len(stats), -1))

    @property
    def n(self) -> int:
        return int(self.data.shape[0])

    def point(self) -> float:
        import numpy as np

        return float(self.on(np.ones((1, self.n)))[0])

    def on(self, counts: Any) -> Any:
        """The statistic for each row of ``counts`` (resamples × N): an array of floats."""
        import numpy as np

        if self.kind == "mean":
            present = ~np.isnan(self.data)
            weights = counts @ present.astype(np.float64)
            sums = counts @ np.where(present, self.data, 0.0)
            with np.errstate(invalid="ignore", divide="ignore"):
                return np.where(weights > 0, sums / np.where(weights > 0, weights, 1), np.nan)
        from tunepipe.evaluation.metrics import bleu_from_stats

        totals = counts @ self.data
        return np.array([bleu_from_stats(row, sentence=False) for row in totals])


@dataclass(frozen=True)
class Estimate:
    value: float
    low: float
    high: float

    def as_dict(self) -> dict[str, float | None]:
        return {"value": _num(self.value), "ci_low": _num(self.low), "ci_high": _num(self.high)}


@dataclass(frozen=True)
class Comparison:
    """A metric's estimates: tuned, and with a base, base and the paired difference."""

    tuned: Estimate
    base: Estimate | None = None
    delta: Estimate | None = None
    p_not_better: float | None = None  # share of resamples with tuned <= base

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"tuned": self.tuned.as_dict()}
        if self.base is not None and self.delta is not None:
            out["base"] = self.base.as_dict()
            out["delta"] = {**self.delta.as_dict(), "p_not_better": _num(self.p_not_better)}
        return out


def _num(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def resamples(n: int, samples: int, seed: int) -> Callable[[], Any]:
    """A function yielding blocks of resample counts (rows: resamples, columns: examples)."""
    import numpy as np

    def blocks() -> Any:
        rng = np.random.default_rng(seed)
        block = max(1, BLOCK_CELLS // max(1, n))
        done = 0
        while done < samples:
            b = min(block, samples - done)
            idx = rng.integers(0, n, size=(b, n))
            flat = (idx + (np.arange(b) * n)[:, None]).ravel()
            yield np.bincount(flat, minlength=b * n).reshape(b, n).astype(np.float64)
            done += b

    return blocks


def _interval(values: Any, confidence: float) -> tuple[float, float]:
    import numpy as np

    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return math.nan, math.nan
    lo, hi = np.percentile(finite, [100 * (1 - confidence) / 2, 100 * (1 + confidence) / 2])
    return float(lo), float(hi)


def compare(stats: Mapping[str, tuple[Statistic, Statistic | None]], *, samples: int, confidence: float,
            seed: int) -> dict[str, Comparison]:
    """Estimates with intervals for each metric: ``{name: (tuned, base or None)}``.

    ``samples`` 0 gives the point values with no interval (low = high = NaN).
    """
    import numpy as np

    if not stats:
        return {}
    n = next(iter(stats.values()))[0].n
    for name, (tuned, base) in stats.items():
        if tuned.n != n or (base is not None and base.n != n):
            raise ValueError(f"metric {name}: every statistic must have the same examples ({n})")
    draws: dict[str, dict[str, list[Any]]] = {name: {"tuned": [], "base": []} for name in stats}
    if samples > 0 and n > 0:
        for counts in resamples(n, samples, seed)():
            for name, (tuned, base) in stats.items():
                draws[name]["tuned"].append(tuned.on(counts))
                if base is not None:
                    draws[name]["base"].append(base.on(counts))
    out = {}
    for name, (tuned, base) in stats.items():
        t_draws = np.concatenate(draws[name]["tuned"]) if draws[name]["tuned"] else np.array([])
        t_point = tuned.point() if n else math.nan
        t_est = Estimate(t_point, *_interval(t_draws, confidence)) if t_draws.size else Estimate(t_point, math.nan, math.nan)
        if base is None:
            out[name] = Comparison(t_est)
            continue
        b_draws = np.concatenate(draws[name]["base"]) if draws[name]["base"] else np.array([])
        b_point = base.point() if n else math.nan
        if b_draws.size:
            d_draws = t_draws - b_draws
            b_est = Estimate(b_point, *_interval(b_draws, confidence))
            d_est = Estimate(t_point - b_point, *_interval(d_draws, confidence))
            finite = d_draws[np.isfinite(d_draws)]
            p = float(np.mean(finite <= 0)) if finite.size else math.nan
        else:
            b_est = Estimate(b_point, math.nan, math.nan)
            d_est = Estimate(t_point - b_point, math.nan, math.nan)
            p = math.nan
        out[name] = Comparison(t_est, b_est, d_est, p)
    return out
