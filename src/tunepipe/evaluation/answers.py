"""``contains_answer``: does the reply state the fact the reference states?

Overlap metrics reward a reply that sounds like the reference; a chat model fine-tuned on a style can
say "the hardest natural substance? Water." in exactly the right voice and still score well. This
metric extracts the reference's **key answer** and checks that the reply contains it, so a wrong fact
scores 0 however well it is phrased.

The key answer is found without a parser (no model, no download), by rules that are data and tested:

1. The reference's first sentence that is not a question and has a phrase (below): "This again?
   It's 2.2." → "It's 2.2."; a rhetorical question is sarcasm, not the answer.
2. That sentence's words split into *phrases*: runs of words broken by punctuation, by common
   function and filler words (:data:`STOP`) and by the words of the question itself (a reply that
   repeats the question has not answered it).
3. The first phrase gives the key: its first number if it has one (``5,280`` → ``5280``, ``six`` →
   ``6``); else, for a phrase inside the sentence that ends in capitalised words, those words (``guy
   named William Shakespeare`` → ``William Shakespeare``); else its first three words (``Yuri
   Gagarin``, ``blue whale``, ``French military leader``).

Reply and key are compared as normalised word sequences (case and accents folded, number words as
digits, thousands separators dropped, a plural ``s`` dropped): the key must occur in the reply as
consecutive words.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from typing import NamedTuple

#: Words that never form part of a key answer: function words, and the fillers sarcastic
#: replies wrap answers in ("Oh, just about ...").
STOP = frozenset("""
a about above actually after again against ago all almost already also although always am among an and
another any anyway approximately are around as at be because been before being below between both but by
can could course did do does doing done during each either else enough etc even ever every exactly
few for from further had has have having he her here hers herself him himself his how i if in into is it
its itself just least less let like likely many may maybe me might more most much must my myself near
nearly neither never no nor not now of off often oh ok okay on once only or other ought our ours
ourselves out over own perhaps please pretty probably quite rather really right roughly same say says
she should simply since so some somewhat still such sure than that the their theirs them themselves
then there these they this those though through thus to too totally under until up upon us very was
we well were what whatever when where whether which while who whom whose why will with within without
would wow yeah yes yet you your yours yourself yourselves obviously clearly basically literally
apparently surely certainly indeed naturally definitely um uh hmm ah ha huh hey gee
i'm i've i'd i'll you're you've we're we've they're they've isn't aren't wasn't weren't don't doesn't
didn't can't won't wouldn't shouldn't couldn't let's
""".split())

NUMBER_WORDS = {w: str(i) for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen twenty".split())} | {
    "thirty": "30", "forty": "40", "fifty": "50", "sixty": "60", "seventy": "70", "eighty": "80",
    "ninety": "90", "hundred": "100", "thousand": "1000", "million": "1000000", "billion": "1000000000",
    "dozen": "12"}

KEY_WORDS = 3  # the longest key taken from a phrase without a number or a proper name

# a sentence ends at . ! or ? and spaces, but not after an initial ("F. Scott Fitzgerald")
_SENTENCE_END = re.compile(r"(?<![\s(][A-Z]\.)(?<!^[A-Z]\.)(?<=[.!?])[\"')\]]*\s+")
# a number (thousands separators, decimals), a word (letters, inner apostrophes or hyphens), or
# anything else that is not a space (punctuation: a phrase break)
_TOKEN = re.compile(r"\b[A-Z]\.(?=\s+[A-Z])|\d+(?:[.,]\d+)*|[^\W\d_]+(?:['’-][^\W\d_]+)*|[^\w\s]")
_THOUSANDS = re.compile(r"^\d{1,3}(?:,\d{3})+$")


class Token(NamedTuple):
    text: str  # as written
    norm: str  # compared form ("" for punctuation)
    number: bool
    capital: bool


def _fold(word: str) -> str:
    """Lower case without accents, ``'s`` or a plural ``s``: the form words are compared in."""
    word = unicodedata.normalize("NFKD", word.casefold().rstrip("."))
    word = "".join(c for c in word if not unicodedata.combining(c)).replace("’", "'")
    if word.endswith("'s"):
        word = word[:-2]
    if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
        word = word[:-1]
    return word


def _number(text: str) -> str:
    if _THOUSANDS.match(text):
        return text.replace(",", "")
    return text.replace(",", ".") if text.count(",") == 1 and "." not in text else text


def tokens(text: str) -> list[Token]:
    out: list[Token] = []
    for t in _TOKEN.findall(text):
        if t[0].isdigit():
            out.append(Token(t, _number(t), True, False))
        elif t[0].isalpha():
            low = t.casefold()
            if low in NUMBER_WORDS:
                out.append(Token(t, NUMBER_WORDS[low], True, False))
            else:
                out.append(Token(t, _fold(t), False, t[0].isupper()))
        else:
            out.append(Token(t, "", False, False))
    return out


def sentences(reference: str) -> list[str]:
    """The reference's sentences, those that are not questions first (a rhetorical question is
    sarcasm, not the answer), each group in text order."""
    found = [s.strip() for s in _SENTENCE_END.split(reference.strip()) if s.strip()]
    return [s for s in found if not _question(s)] + [s for s in found if _question(s)]


def _question(sentence: str) -> bool:
    return sentence.rstrip("\"')]").endswith("?")


def _breaks(tok: Token, asked: set[str]) -> bool:
    return (not tok.norm or tok.text.casefold() in STOP or tok.norm in STOP
            or (not tok.number and tok.norm in asked))


def phrases(sentence: str, question: str = "") -> list[list[tuple[int, Token]]]:
    """Runs of words of ``sentence`` (with their positions) broken by punctuation, :data:`STOP`
    words and the question's words."""
    asked = {t.norm for t in tokens(question) if t.norm and not t.number}
    runs: list[list[tuple[int, Token]]] = [[]]
    for i, tok in enumerate(tokens(sentence)):
        if _breaks(tok, asked):
            if runs[-1]:
                runs.append([])
        else:
            runs[-1].append((i, tok))
    return [r for r in runs if r]


def key_answer(reference: str, question: str = "") -> list[str]:
    """The normalised words of the reference's key answer (empty when it has none)."""
    first = next((found[0] for s in sentences(reference) if (found := phrases(s, question))), None)
    if first is None:
        return []
    number = next((t for _, t in first if t.number), None)
    if number is not None:
        return [number.norm]
    words = [t for _, t in first]
    if first[0][0] > 0:  # inside the sentence, a proper name that ends the phrase is the answer
        start = next((k for k, t in enumerate(words) if t.capital), None)
        if start is not None and all(t.capital for t in words[start:]):
            return [t.norm for t in words[start:]]
    return [t.norm for t in words[:KEY_WORDS]]


def _contains(words: Sequence[str], key: Sequence[str]) -> bool:
    n = len(key)
    return any(list(words[i:i + n]) == list(key) for i in range(len(words) - n + 1))


def contains_answer(pred: str, ref: str, question: str = "") -> float:
    """1 if the reply contains the reference's key answer as consecutive normalised words, else 0;
    a reference without a key answer counts as contained only by an empty reply."""
    key = key_answer(ref, question)
    words = [t.norm for t in tokens(pred) if t.norm]
    if not key:
        return float(not words)
    return float(_contains(words, key))
