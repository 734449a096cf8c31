"""Is a metric's change between two runs more than the noise of which examples were drawn?

* Both runs scored the *same* examples: a paired bootstrap of the per-example differences (new -
  old) over the examples both scored, with the evaluate stage's own seeded NumPy resampler
  (:mod:`tunepipe.evaluation.bootstrap`), so what the examples share cancels out. The change is
  outside the noise when the interval of the difference excludes zero.
* Different examples (another split, another examples file): nothing pairs them, so the two runs'
  own intervals are compared instead; the change is outside the noise when they do not overlap,
  which is conservative (an overlap does not prove there is no difference).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

DEFAULT_SAMPLES, DEFAULT_CONFIDENCE, DEFAULT_SEED = 1000, 0.95, 0


@dataclass(frozen=True)
class Paired:
    """The paired difference new - old over ``n`` examples, with its bootstrap interval."""

    delta: float | None
    low: float | None
    high: float | None
    n: int
    p_not_better: float | None  # share of resamples where new is not above old

    @property
    def excludes_zero(self) -> bool | None:
        if self.low is None or self.high is None:
            return None
        return self.low > 0 or self.high < 0


def settings(doc: Mapping[str, Any]) -> tuple[int, float, int]:
    """(samples, confidence, seed) of a report's own bootstrap, else the evaluate stage's defaults."""
    b = doc.get("bootstrap") if isinstance(doc.get("bootstrap"), Mapping) else {}
    samples, confidence, seed = b.get("samples"), b.get("confidence"), b.get("seed")
    return (samples if isinstance(samples, int) and samples > 0 else DEFAULT_SAMPLES,
            confidence if isinstance(confidence, float) and 0 < confidence < 1 else DEFAULT_CONFIDENCE,
            seed if isinstance(seed, int) else DEFAULT_SEED)


def pairing(old_rows: Sequence[Mapping[str, Any]] | None,
            new_rows: Sequence[Mapping[str, Any]] | None) -> tuple[list[int], list[int]] | str:
    """Positions of the same examples in both runs' rows (the rows are ranked, not in example
    order), or why the examples cannot be paired."""
    if old_rows is None or new_rows is None:
        return "a run's per-example scores (predictions.jsonl) are missing"
    old_at, new_at = _positions(old_rows), _positions(new_rows)
    if old_at is None or new_at is None:
        return "a run's per-example rows do not say which example they score"
    if set(old_at) != set(new_at):
        return (f"the runs evaluated different examples ({len(old_at)} and {len(new_at)}, "
                f"{len(set(old_at) & set(new_at))} shared)")
    order = sorted(old_at)
    return [old_at[k] for k in order], [new_at[k] for k in order]


def scores(rows: Sequence[Mapping[str, Any]], positions: Sequence[int], metric: str,
           side: str = "tuned") -> list[float | None]:
    out: list[float | None] = []
    for i in positions:
        entry = rows[i].get(side)
        v = entry.get("scores", {}).get(metric) if isinstance(entry, Mapping) else None
        out.append(float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None)
    return out


def paired(old: Sequence[float | None], new: Sequence[float | None], *, samples: int, confidence: float,
           seed: int) -> Paired:
    """The paired bootstrap of new - old over the examples both sides scored."""
    from tunepipe.evaluation.bootstrap import Statistic, compare

    both = [(a, b) for a, b in zip(old, new) if a is not None and b is not None]
    if not both:
        return Paired(None, None, None, 0, None)
    stats = {"m": (Statistic.mean([b for _, b in both]), Statistic.mean([a for a, _ in both]))}
    c = compare(stats, samples=samples, confidence=confidence, seed=seed)["m"]
    d = c.delta
    return Paired(_finite(d.value if d else None), _finite(d.low if d else None), _finite(d.high if d else None),
                  len(both), _finite(c.p_not_better))


def overlap(old: tuple[float | None, float | None], new: tuple[float | None, float | None]) -> bool | None:
    """Whether two intervals (low, high) overlap; None when either is unknown."""
    if None in old or None in new:
        return None
    return not (new[0] > old[1] or new[1] < old[0])  # type: ignore[operator]


def _positions(rows: Sequence[Mapping[str, Any]]) -> dict[str, int] | None:
    """example identity (its index, prompt and reference) -> the row's position."""
    out = {}
    for pos, row in enumerate(rows):
        if "index" not in row:
            return None
        ident = json.dumps([row.get("index"), row.get("prompt"), row.get("reference")], sort_keys=True)
        out[ident] = pos
    return out if len(out) == len(rows) else None


def _finite(x: float | None) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None
