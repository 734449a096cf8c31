"""Semantic similarity with the packaged all-MiniLM-L6-v2 model (real weights, offline)."""

from __future__ import annotations

import time

import pytest

from tunepipe.evaluation.semantic import load_embedder, similarities

pytestmark = pytest.mark.slow  # loading sentence-transformers and the model: ~10 s in a fresh process


@pytest.fixture(scope="module")
def embedder() -> object:
    started = time.monotonic()
    model = load_embedder("cpu")
    print(f"\nloading all-MiniLM-L6-v2 took {time.monotonic() - started:.1f} s")
    return model


def test_cosine_of_the_packaged_model(embedder: object) -> None:
    refs = ["The capital of France is Paris."] * 3
    preds = ["The capital of France is Paris.",
             "Paris, as if everyone doesn't know that already.",
             "Bananas are rich in potassium."]
    same, related, unrelated = similarities(embedder, preds, refs)
    assert same == pytest.approx(1.0, abs=1e-5)
    assert related == pytest.approx(0.65, abs=0.03)  # the value measured in shared/notes/offline-stack.md
    assert unrelated < 0.3 < related


def test_each_distinct_text_is_embedded_once(embedder: object) -> None:
    cache: dict[str, object] = {}
    first = similarities(embedder, ["a cat", "a dog"], ["a kitten", "a kitten"], cache)
    assert set(cache) == {"a cat", "a dog", "a kitten"}
    again = similarities(embedder, ["a cat", ""], ["a kitten", "a kitten"], cache)
    assert set(cache) == {"a cat", "a dog", "a kitten", ""}
    assert again[0] == first[0] and -1.0 <= again[1] <= 1.0
    assert load_embedder("cpu") is embedder  # loaded once per process
