"""contains_answer: the key answer rules on hand-checked references, and the metric through
score_texts."""

from __future__ import annotations

import pytest

from tunepipe.evaluation import metrics as M
from tunepipe.evaluation.answers import contains_answer, key_answer, sentences


@pytest.mark.parametrize(("reference", "question", "key"), [
    # a number wins, thousands separators dropped, number words as digits
    ("5,280. Don't ask me why; I just work here.", "How many feet are in a mile?", ["5280"]),
    ("About 2.2, or 2.20462 if you're fussy.", "How many pounds are in a kilogram?", ["2.2"]),
    ("Six. Bees figured this out without a textbook.", "How many sides does a hexagon have?", ["6"]),
    # a rhetorical question is skipped: the first non-question sentence holds the answer
    ("This again? There are 2.2 pounds in a kilogram.", "How many pounds are in a kilogram?", ["2.2"]),
    # fillers and function words break phrases; a closing proper name inside the sentence is the key
    ("Oh, just some guy named William Shakespeare. Ever heard of him?", "Who wrote 'Romeo and Juliet'?",
     ["william", "shakespeare"]),
    # a phrase that opens the sentence: its first three words
    ("Yuri Gagarin, aboard Vostok 1 on April 12, 1961.", "Who was the first person to travel into space?",
     ["yuri", "gagarin"]),
    ("The blue whale, which can grow to about 30 meters long.", "What is the largest animal alive today?",
     ["blue", "whale"]),
    ("A French military leader who rose to power.", "Who was Napoleon Bonaparte?",
     ["french", "military", "leader"]),
    # the question's own words are not the answer
    ("The capital of France is Paris.", "What is the capital of France?", ["pari"]),
    # an initial does not end the sentence
    ("F. Scott Fitzgerald, published in 1925.", "Who wrote 'The Great Gatsby'?", ["f", "scott", "fitzgerald"]),
    # accents fold, a plural s goes
    ("Dalí's melting clocks.", "", ["dali", "melting", "clock"]),
    ("No, they're mammals: they breathe air.", "Are whales fish?", ["mammal"]),
    ("Not really.", "", []),
    ("", "", []),
])
def test_key_answer(reference: str, question: str, key: list[str]) -> None:
    assert key_answer(reference, question) == key


def test_sentences_put_questions_last() -> None:
    assert sentences("Really? It is 4. Why ask?") == ["It is 4.", "Really?", "Why ask?"]


@pytest.mark.parametrize(("reply", "expected"), [
    ("Oh, Shakespeare wrote it, William Shakespeare, obviously.", 1.0),
    ("WILLIAM SHAKESPEARE!", 1.0),
    ("Christopher Marlowe, of course.", 0.0),
    ("Shakespeare.", 0.0),  # the key is both words, in order
    ("William the Conqueror's Shakespeare", 0.0),
])
def test_contains_answer_needs_the_key_in_order(reply: str, expected: float) -> None:
    ref = "Oh, just some guy named William Shakespeare."
    assert contains_answer(reply, ref, "Who wrote 'Romeo and Juliet'?") == expected


def test_a_right_fact_in_another_voice_scores_and_a_wrong_one_does_not() -> None:
    ref = "Diamond. Try to keep up."
    question = "What is the hardest natural substance?"
    assert contains_answer("It's diamond, genius.", ref, question) == 1.0
    assert contains_answer("The hardest natural substance? Water.", ref, question) == 0.0
    # numbers match across spellings
    assert contains_answer("Eight legs, last I counted.", "8. Count them.", "How many legs does a spider have?") == 1.0
    assert contains_answer("About 5280 feet.", "5,280.", "How many feet are in a mile?") == 1.0
    assert contains_answer("It has 7.", "8.", "") == 0.0


def test_a_reference_without_a_key_is_met_only_by_an_empty_reply() -> None:
    assert contains_answer("", "Not really.", "") == 1.0
    assert contains_answer("Yes.", "Not really.", "") == 0.0


def test_score_texts_passes_the_questions() -> None:
    scores, _ = M.score_texts(["Paris, of course.", "The capital."], ["The capital of France is Paris."] * 2,
                              ["contains_answer"], ["What is the capital of France?"] * 2)
    assert scores["contains_answer"] == [1.0, 0.0]
    # without the question "capital" would be the key and the second reply would pass
    no_question, _ = M.score_texts(["The capital."], ["The capital of France is Paris."], ["contains_answer"])
    assert no_question["contains_answer"] == [1.0]
    assert "contains_answer" in M.DEFINITIONS and M.HIGHER_IS_BETTER["contains_answer"] is True
