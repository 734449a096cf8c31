"""The metric functions on hand-checked examples (the expected values are worked out in comments)."""

from __future__ import annotations

import math

import pytest

from tunepipe.errors import UserError
from tunepipe.evaluation import metrics as M


@pytest.mark.parametrize(("pred", "ref", "expected"), [
    ("The Cat!", "cat", 1.0),                  # lower, "!" and the article go: "cat" == "cat"
    ("“Paris”…", "paris", 1.0),                # Unicode quotes and ellipsis are punctuation (P*) too
    ("Paris.", "Paris, obviously.", 0.0),      # "paris" != "paris obviously"
    ("an apple", "the  apple ", 1.0),          # articles and extra spaces go
    ("", "", 1.0),
])
def test_exact_match_after_squad_normalization(pred: str, ref: str, expected: float) -> None:
    assert M.exact_match(pred, ref) == expected


def test_normalize_answer() -> None:
    assert M.normalize_answer("The Cat’s “hat” — a  thing!") == "cats hat thing"
    assert M.normalize_answer("Théâtre, l'été") == "théâtre lété"  # letters with accents stay


def test_token_f1() -> None:
    # pred -> [cat, sat, on, mat] (both "the" removed), ref -> [cat, sat]; overlap 2:
    # precision 2/4, recall 2/2, F1 = 2 * 0.5 * 1 / 1.5 = 2/3
    assert M.token_f1("the cat sat on the mat", "a cat sat") == pytest.approx(2 / 3)
    # overlap counts multiplicity: min(3, 1) = 1 "dog"; precision 1/3, recall 1/2, F1 = (1/3)/(5/6) = 0.4
    assert M.token_f1("dog dog dog", "dog cat") == pytest.approx(0.4)
    assert M.token_f1("Paris", "paris!") == 1.0
    assert M.token_f1("", "") == 1.0
    assert M.token_f1("", "something") == 0.0
    assert M.token_f1("a an the", "the") == 1.0  # both normalize to nothing
    assert M.token_f1("blue", "red") == 0.0


def test_rouge_l_f_measure_with_stemming() -> None:
    # pred [the, cat (stem of "cats"), sat]; ref [the, cat, sat, on, the, mat]; LCS "the cat sat" = 3:
    # precision 3/3, recall 3/6, F = 2 * 1 * 0.5 / 1.5 = 2/3
    assert M.rouge_l("the cats sat", "the cat sat on the mat") == pytest.approx(2 / 3)
    assert M.rouge_l("identical words here", "identical words here") == pytest.approx(1.0)
    assert M.rouge_l("", "something") == 0.0
    # LCS respects order: "mat sat cat" vs "cat sat mat" have no two words in the same order, LCS = 1:
    # precision 1/3, recall 1/3, F = 1/3
    assert M.rouge_l("mat sat cat", "cat sat mat") == pytest.approx(1 / 3)


def test_rouge_l_equals_rouge_scores_default_on_ascii_and_keeps_accented_words() -> None:
    from rouge_score import rouge_scorer

    default = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    for pred, ref in [("The quick brown foxes jumped!", "a quick brown fox jumps over"),
                      ("It's 384,400 km; pack a lunch.", "Around 384,400 kilometers. Pack a lunch."),
                      ("under_score and CamelCase", "under score camelcase")]:
        assert M.rouge_l(pred, ref) == pytest.approx(default.score(ref, pred)["rougeL"].fmeasure)
    # pred [café, crème], ref [café, au, lait, crème]: LCS 2, precision 1, recall 1/2, F = 2/3.
    # rouge-score's default drops "é" and "è" and would compare caf/cr/me fragments instead.
    assert M.rouge_l("café crème", "Café au lait crème") == pytest.approx(2 / 3)


def test_sentence_bleu_with_effective_order() -> None:
    assert M.sentence_bleu("the cat sat on the mat", "the cat sat on the mat") == pytest.approx(1.0)
    # "cat" vs "the cat": 1-gram precision 1/1; no 2-grams in the reply, so with effective order only
    # the 1-gram counts; brevity penalty exp(1 - 2/1) = e^-1: BLEU = 0.3679
    assert M.sentence_bleu("cat", "the cat") == pytest.approx(math.exp(-1))
    assert M.sentence_bleu("", "the cat") == 0.0
    assert M.sentence_bleu("dog", "the cat") == 0.0


def test_corpus_bleu_by_hand_and_against_sacrebleu() -> None:
    import sacrebleu

    # reply "the cat sat on the mat", reference "the cat sat on a mat" (6 tokens each, BP = 1):
    # 1-grams 5/6 ("the" twice in the reply, once in the reference), 2-grams 3/5, 3-grams 2/4,
    # 4-grams 1/3: BLEU = (5/6 * 3/5 * 2/4 * 1/3) ** (1/4) = (1/12) ** 0.25 = 0.5373
    assert M.corpus_bleu(["the cat sat on the mat"], ["the cat sat on a mat"]) == pytest.approx((1 / 12) ** 0.25)
    preds = ["the cat sat on the mat", "hello there", "Paris, obviously.", ""]
    refs = ["the cat sat on a mat", "hello there friend", "Paris, as if everyone did not know.", "nothing"]
    expected = sacrebleu.corpus_bleu(preds, [refs]).score / 100
    assert M.corpus_bleu(preds, refs) == pytest.approx(expected)
    # corpus BLEU is not the mean of sentence BLEU
    mean = sum(M.sentence_bleu(p, r) for p, r in zip(preds, refs)) / len(preds)
    assert abs(M.corpus_bleu(preds, refs) - mean) > 0.01


def test_length_ratio() -> None:
    assert M.length_ratio("a b c", "a b c d e f") == 0.5   # 3 / 6 words
    assert M.length_ratio("one two", "one") == 2.0
    assert M.length_ratio("x", "") == 1.0                   # an empty reference counts as one word
    assert M.length_ratio("", "") == 0.0


def test_score_texts_gives_a_score_per_example_for_the_chosen_metrics() -> None:
    preds, refs = ["the cat", "a dog barked"], ["the cat", "the dog barks loudly"]
    scores, stats = M.score_texts(preds, refs, ["exact_match", "token_f1", "bleu"])
    assert set(scores) == {"exact_match", "token_f1", "bleu"}
    assert scores["exact_match"] == [1.0, 0.0]
    # [dog, barked] vs [dog, barks, loudly]: overlap 1, P 1/2, R 1/3, F1 = (1/3)/(5/6) = 0.4
    assert scores["token_f1"] == [1.0, pytest.approx(0.4)]
    assert len(stats) == 2 and len(stats[0]) == 10  # reply length, reference length, 4 matches, 4 totals
    assert stats[0][:2] == [2, 2]
    assert M.score_texts(preds, refs, ["rouge_l"])[1] == []


def test_every_metric_has_a_definition_a_range_and_a_direction() -> None:
    for m in M.METRICS:
        assert len(M.DEFINITIONS[m]) > 40 and m in M.RANGES and m in M.HIGHER_IS_BETTER
    assert M.HIGHER_IS_BETTER["length_ratio"] is None


def test_a_missing_metric_package_fails_before_any_work(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "sacrebleu" else real(name, *a))
    with pytest.raises(UserError, match=r"bleu needs .*pip install 'tunepipe\[eval\]'.*sacrebleu"):
        M.check_available(["rouge_l", "bleu"])
    M.check_available(["rouge_l", "token_f1"])  # the others are there
