"""The percentile bootstrap: seeded and deterministic, sane coverage, paired differences."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tunepipe.evaluation import bootstrap as B
from tunepipe.evaluation import metrics as M


def test_point_values_are_the_plain_aggregates() -> None:
    values = [0.1, 0.5, None, 0.9]
    assert B.Statistic.mean(values).point() == pytest.approx(0.5)  # the missing value is left out
    preds = ["the cat sat on the mat", "hello there", "Paris"]
    refs = ["the cat sat on a mat", "hello there friend", "Paris, obviously"]
    assert B.Statistic.bleu(M.bleu_stats(preds, refs)).point() == pytest.approx(M.corpus_bleu(preds, refs))


def test_the_same_seed_gives_the_same_intervals_and_another_seed_others() -> None:
    rng = np.random.default_rng(5)
    t, b = rng.random(60).tolist(), rng.random(60).tolist()
    stats = {"m": (B.Statistic.mean(t), B.Statistic.mean(b))}
    one = B.compare(stats, samples=500, confidence=0.95, seed=1)
    assert B.compare(stats, samples=500, confidence=0.95, seed=1) == one
    other = B.compare(stats, samples=500, confidence=0.95, seed=2)
    assert other["m"].tuned.value == one["m"].tuned.value  # the point does not depend on the seed
    assert other["m"].tuned.low != one["m"].tuned.low


def test_resampling_in_blocks_gives_the_same_draws(monkeypatch: pytest.MonkeyPatch) -> None:
    t = np.random.default_rng(0).random(40).tolist()
    stats = {"m": (B.Statistic.mean(t), None)}
    whole = B.compare(stats, samples=300, confidence=0.9, seed=3)
    monkeypatch.setattr(B, "BLOCK_CELLS", 40 * 7)  # 7 resamples per block
    blocked = B.compare(stats, samples=300, confidence=0.9, seed=3)["m"].tuned
    # the same resamples; sums of another matrix shape may differ in the last bit
    assert (blocked.value, blocked.low, blocked.high) == pytest.approx((whole["m"].tuned.value, whole["m"].tuned.low,
                                                                        whole["m"].tuned.high), rel=1e-12)


def test_intervals_of_a_mean_cover_the_truth_about_as_often_as_promised() -> None:
    # 200 data sets of 100 Bernoulli(0.3) draws: a 95% interval should contain 0.3 in roughly 95% of
    # them (the percentile bootstrap runs a little narrow at this size: allow 88-99%).
    rng = np.random.default_rng(42)
    covered = 0
    for k in range(200):
        data = (rng.random(100) < 0.3).astype(float).tolist()
        est = B.compare({"m": (B.Statistic.mean(data), None)}, samples=400, confidence=0.95, seed=k)["m"].tuned
        covered += est.low <= 0.3 <= est.high
    assert 0.88 <= covered / 200 <= 0.99


def test_a_wider_confidence_gives_a_wider_interval() -> None:
    data = np.random.default_rng(1).random(80).tolist()
    narrow = B.compare({"m": (B.Statistic.mean(data), None)}, samples=800, confidence=0.8, seed=0)["m"].tuned
    wide = B.compare({"m": (B.Statistic.mean(data), None)}, samples=800, confidence=0.99, seed=0)["m"].tuned
    assert wide.low < narrow.low < narrow.value < narrow.high < wide.high


def test_the_difference_is_paired_on_the_same_examples() -> None:
    # tuned is base + 0.1 on every example: each resample's difference is exactly 0.1, even though
    # either side alone varies a lot between examples
    base = np.random.default_rng(3).random(50)
    res = B.compare({"m": (B.Statistic.mean((base + 0.1).tolist()), B.Statistic.mean(base.tolist()))},
                    samples=500, confidence=0.95, seed=0)["m"]
    assert res.delta.value == pytest.approx(0.1)
    assert res.delta.low == pytest.approx(0.1) and res.delta.high == pytest.approx(0.1)
    assert res.base.high - res.base.low > 0.1  # unpaired intervals would overlap: no conclusion
    assert res.p_not_better == 0.0


def test_p_not_better_is_high_when_tuned_is_worse() -> None:
    rng = np.random.default_rng(4)
    base = rng.random(100)
    tuned = base - 0.05 + rng.normal(0, 0.01, 100)
    res = B.compare({"m": (B.Statistic.mean(tuned.tolist()), B.Statistic.mean(base.tolist()))},
                    samples=400, confidence=0.95, seed=0)["m"]
    assert res.delta.high < 0 and res.p_not_better == 1.0


def test_corpus_bleu_is_resampled_from_its_statistics() -> None:
    preds = ["the cat sat on the mat", "hello there", "Paris, obviously.", "four", "a dog", "blue sky today"]
    refs = ["the cat sat on a mat", "hello there friend", "Paris, of course.", "Four.", "the dog", "the sky is blue"]
    stat = B.Statistic.bleu(M.bleu_stats(preds, refs))
    est = B.compare({"bleu": (stat, None)}, samples=300, confidence=0.95, seed=0)["bleu"].tuned
    assert est.value == pytest.approx(M.corpus_bleu(preds, refs))
    assert 0 <= est.low < est.high <= 1
    # one resample by hand: examples 0, 0, 1 -> corpus BLEU of those three
    counts = np.zeros((1, len(preds)))
    counts[0, 0], counts[0, 1] = 2, 1
    assert stat.on(counts)[0] == pytest.approx(M.corpus_bleu([preds[0], preds[0], preds[1]],
                                                             [refs[0], refs[0], refs[1]]))


def test_no_samples_means_no_intervals() -> None:
    res = B.compare({"m": (B.Statistic.mean([0.2, 0.4]), B.Statistic.mean([0.1, 0.1]))}, samples=0,
                    confidence=0.95, seed=0)["m"]
    assert res.as_dict() == {"tuned": {"value": pytest.approx(0.3), "ci_low": None, "ci_high": None},
                             "base": {"value": pytest.approx(0.1), "ci_low": None, "ci_high": None},
                             "delta": {"value": pytest.approx(0.2), "ci_low": None, "ci_high": None,
                                       "p_not_better": None}}


def test_a_metric_with_no_values_has_none() -> None:
    res = B.compare({"m": (B.Statistic.mean([None, None, None]), None)}, samples=50, confidence=0.95, seed=0)["m"]
    assert math.isnan(res.tuned.value) and res.as_dict()["tuned"]["ci_low"] is None


def test_statistics_of_different_lengths_are_refused() -> None:
    with pytest.raises(ValueError, match="same examples"):
        B.compare({"a": (B.Statistic.mean([1.0]), None), "b": (B.Statistic.mean([1.0, 2.0]), None)},
                  samples=10, confidence=0.9, seed=0)
