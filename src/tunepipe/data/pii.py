"""Redaction of personal data and secrets in text, with typed placeholders and counts per kind.

Kinds (``KINDS``) and what each one catches:

* ``secret`` → ``[SECRET]``: OpenAI and Anthropic keys (``sk-...``, ``sk-proj-...``), AWS access
  key ids (``AKIA...``, ``ASIA...``), GitHub tokens (``ghp_``, ``gho_``, ``ghu_``, ``ghs_``, ``ghr_``,
  ``github_pat_``), Slack tokens (``xoxb-``, ``xoxp-``, ...) and webhook URLs, Google API keys
  (``AIza...``), Stripe keys (``sk_live_``, ``rk_test_``, ...), Hugging Face tokens (``hf_...``),
  JSON Web Tokens (``eyJ...eyJ...sig``), PEM private-key blocks, the token of ``Bearer <token>``,
  and high-entropy values after ``api_key=``, ``token:``, ``secret=``, ``password:`` and the like
  (the name stays: ``api_key=[SECRET]``). A value counts as high-entropy when it has at least 12
  characters, at least two of lower case, upper case and digits, and a Shannon entropy of at least
  3 bits per character, so ``token: YOUR_API_KEY`` or ``password: changeme`` stay.
* ``email`` → ``[EMAIL]``: ``local@domain.tld`` with Unicode letters allowed; ``icon@2x.png``
  (image names) is not an address.
* ``credit_card`` → ``[CREDIT_CARD]``: 13 to 19 digits, written together or in groups separated by
  one kind of separator (spaces or dashes), starting with 2 to 6 (the payment-card issuer ranges)
  and passing the Luhn check. A number failing the check is left alone.
* ``phone`` → ``[PHONE]``: international numbers (``+`` and 8 to 15 digits, ``+44 (0)20 ...``
  included), North American numbers (``(555) 123-4567``, ``555.123.4567``, ``1-800-555-0199``) and
  national numbers with a trunk 0 (``020 7946 0958``, ``06 12 34 56 78``, ``(02) 9876 5432``;
  9 to 12 digits). Without a ``+``, a number needs separators, one kind of them, so years, counts,
  prices, dates, times, decimals, version numbers and bare digit runs (ids, timestamps) are not
  phones.

Kinds are applied in the order secret, email, credit card, phone, so a key's digits are never
taken for a phone number and a placeholder never matches a later pattern.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Iterable

KINDS = ("email", "phone", "credit_card", "secret")
PLACEHOLDERS = {"email": "[EMAIL]", "phone": "[PHONE]", "credit_card": "[CREDIT_CARD]", "secret": "[SECRET]"}
_ORDER = ("secret", "email", "credit_card", "phone")

# --- secrets -------------------------------------------------------------------------------------

_TOKEN_PATTERNS = [
    r"-----BEGIN[ A-Z0-9]*PRIVATE KEY-----(?:[A-Za-z0-9+/=\s:,.]|-(?!----))*+-----END[ A-Z0-9]*PRIVATE KEY-----",
    r"(?<![\w-])sk-(?:proj-|svcacct-|admin-|ant-)?[A-Za-z0-9_-]{20,}",   # OpenAI, Anthropic
    r"(?<![\w-])[rsp]k_(?:live|test)_[A-Za-z0-9]{16,}",                  # Stripe
    r"(?<![A-Za-z0-9])(?:AKIA|ASIA|ABIA|ACCA)[0-9A-Z]{16}(?![A-Za-z0-9])",  # AWS access key id
    r"(?<!\w)gh[pousr]_[A-Za-z0-9]{36,255}",                              # GitHub
    r"(?<!\w)github_pat_[A-Za-z0-9_]{22,255}",
    r"(?<![\w-])xox[abposr]-[A-Za-z0-9-]{10,}",                           # Slack tokens
    r"https://hooks\.slack\.com/services/[A-Za-z0-9/_-]+",                # Slack webhooks
    r"(?<![\w-])AIza[0-9A-Za-z_-]{35}(?![\w-])",                          # Google API key
    r"(?<![\w-])hf_[A-Za-z0-9]{30,}",                                     # Hugging Face
    r"(?<![\w-])eyJ[A-Za-z0-9_-]{5,}\.eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*",  # JWT
]
_TOKENS = "|".join(f"(?:{p})" for p in _TOKEN_PATTERNS)
_SECRET_NAMES = (r"api[_-]?key|apikey|api[_-]?token|access[_-]?token|auth[_-]?token|refresh[_-]?token|"
                 r"secret[_-]?key|client[_-]?secret|private[_-]?key|aws_secret_access_key|token|secret|"
                 r"password|passwd")
_SECRET = re.compile(
    rf"(?P<token>{_TOKENS})"
    r"|(?P<bearer_name>\bBearer[ \t]+)(?P<bearer>[A-Za-z0-9._~+/=-]{16,})"
    rf"|(?P<assign_name>(?i:\b(?:{_SECRET_NAMES}))[\"']?[ \t]*[:=][ \t]*[\"']?)(?P<assign>[A-Za-z0-9_\-./+=~]{{12,}})",
    re.S)
_TOKEN_ONLY = re.compile(_TOKENS, re.S)


def entropy(text: str) -> float:
    """Shannon entropy of the characters of ``text``, in bits per character."""
    n = len(text)
    return -sum(c / n * math.log2(c / n) for c in Counter(text).values()) if n else 0.0


def _classes(text: str) -> int:
    return (any(c.islower() for c in text) + any(c.isupper() for c in text) + any(c.isdigit() for c in text))


def looks_secret(value: str) -> bool:
    """A high-entropy value: at least 12 characters, two character classes, 3 bits per character."""
    return len(value) >= 12 and _classes(value) >= 2 and entropy(value) >= 3.0


def _secret(m: re.Match[str]) -> str | None:
    if m.group("token") is not None:
        return PLACEHOLDERS["secret"]
    if m.group("bearer") is not None:
        token = m.group("bearer")
        if _classes(token) >= 2 and entropy(token) >= 3.0:
            return m.group("bearer_name") + PLACEHOLDERS["secret"]
        return None
    value = m.group("assign")
    if looks_secret(value) or _TOKEN_ONLY.search(value):
        return m.group("assign_name") + PLACEHOLDERS["secret"]
    return None


# --- e-mail --------------------------------------------------------------------------------------

_EMAIL = re.compile(r"(?<![\w.%+-])[\w.%+-]+@(?!\d+x\.)(?:[\w-]+\.)+[^\W\d_]{2,}(?![\w-])")


def _email(m: re.Match[str]) -> str | None:
    return PLACEHOLDERS["email"]


# --- credit cards --------------------------------------------------------------------------------

_CARD = re.compile(r"(?<![\w.+-])[2-6](?:[ -]?\d){12,18}(?![\w])(?![.,-]\d)")


def luhn_ok(digits: str) -> bool:
    """The Luhn check of a string of digits."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _card(m: re.Match[str]) -> str | None:
    text = m.group(0)
    seps = {c for c in text if not c.isdigit()}
    digits = "".join(c for c in text if c.isdigit())
    if len(seps) > 1 or not 13 <= len(digits) <= 19 or not luhn_ok(digits):
        return None
    if seps and min(len(g) for g in re.split(r"[ -]", text)) < 3:
        return None  # groups of one or two digits: a list of numbers, not a card
    return PLACEHOLDERS["credit_card"]


# --- phones --------------------------------------------------------------------------------------

_PHONE = re.compile(
    r"(?<![\w$€£¥+.,/-])"
    r"(?:(?P<intl>\+\d{1,3}+(?:[ .-]?(?:\(\d{1,4}\)|\d++)){1,6}+)"
    r"|(?P<nanp>(?:1[ .-])?(?:\(\d{3}\)[ ]?|\d{3}[ .-])\d{3}[ .-]\d{4})"
    r"|(?P<trunk>(?:\(0\d{1,4}\)[ ]?|0\d{1,4}[ .-])\d{2,8}(?:[ .-]\d{2,8}){0,3}))"
    r"(?![\w@%])(?![.,/-]\d)")


_GROUP = re.compile(r"([ .-]?)(\(\d+\)|\d+)")


def _phone(m: re.Match[str]) -> str | None:
    text = m.group(0)
    if m.group("nanp") is not None:
        bare = re.sub(r"^(?:1[ .-])?\(\d+\) ?", "", text)  # the area code in parentheses
        seps = {c for c in bare if not c.isdigit()}
        return PLACEHOLDERS["phone"] if len(seps) <= 1 else None
    # International or trunk-0 numbers: the longest run of groups with a plausible digit count
    # (the pattern may have taken a number that follows the phone: "+44 20 7946 0958 2024").
    intl = m.group("intl") is not None
    lo, hi = (8, 15) if intl else (9, 12)
    digits, seps, best, after_paren = 0, set(), None, False
    for g in _GROUP.finditer(text, 1 if intl else 0):
        sep, group = g.groups()
        if sep and not after_paren:
            seps.add(sep)
        after_paren = group.startswith("(")
        if not (intl and group == "(0)"):  # the trunk 0 written after a country code
            digits += sum(c.isdigit() for c in group)
        if digits > hi or (not intl and len(seps) > 1):
            break
        if digits >= lo:
            best = g.end()
    return None if best is None else PLACEHOLDERS["phone"] + text[best:]


# --- all together --------------------------------------------------------------------------------

_Replace = Callable[[re.Match[str]], "str | None"]
_SUBS: dict[str, tuple[re.Pattern[str], _Replace]] = {
    "secret": (_SECRET, _secret),
    "email": (_EMAIL, _email),
    "credit_card": (_CARD, _card),
    "phone": (_PHONE, _phone),
}
# Cheap tests that let a text skip a pattern: most texts hold no personal data, and a full pattern
# costs ten to fifty times more than these scans. Each test is necessary for its pattern to replace
# anything, and holds for any part of a text when it fails for the whole (``Redactor.may_redact``
# tests several texts joined at once).
_TOKEN_HINT = re.compile(r"sk-|_live_|_test_|AKIA|ASIA|ABIA|ACCA|ghp_|gho_|ghu_|ghs_|ghr_|github_pat_|xox|"
                         r"hooks\.slack\.com|AIza|hf_|eyJ|Bearer|PRIVATE KEY")
_NUMBER_HINT = re.compile(r"\d[\d ().-]{7,}\d")  # phones and cards have at least nine digits and separators
MIN_DIGITS = 8  # a phone has at least 8 digits (international), a card 13
# The characters the cheap tests look at in an ASCII text, which one bytes.translate keeps
_MARKS = b"0123456789:=-_@ABCIJ"
_NOT_MARKS = bytes(sorted(set(range(256)) - set(_MARKS)))
_NOT_DIGITS = b":=-_@ABCIJ"


def _hints(text: str) -> tuple[bool, bool, bool]:
    """(may hold a secret, holds '@', may hold a phone or card number): necessary for each kind.

    Every secret pattern needs ':' or '=' (a name and its value, https://), '-' or '_' (PEM
    blocks, most token prefixes), or one of the prefixes without them: AWS key ids (AKIA, ASIA,
    ABIA: "IA"; ACCA: "CA"), Google keys (AIza), JWTs (eyJ) or Bearer. A phone has at least
    :data:`MIN_DIGITS` digits, a card more. One ``bytes.translate`` of the text's UTF-8 keeps the
    characters these tests need (two letters adjacent in the text stay adjacent), so a text is
    scanned once rather than once per test. Each test holds for any part of a text when it
    fails for the whole (:meth:`Redactor.may_redact` tests texts joined by newlines).
    """
    ascii = text.isascii()
    # UTF-8 keeps ASCII characters as single bytes and writes no other character with them
    kept = (text.encode("ascii") if ascii else text.encode("utf-8", "surrogatepass")).translate(None, _NOT_MARKS)
    if not kept:
        return False, False, not ascii
    marks = kept.decode("ascii")  # str tests: ``bytes in bytes`` first tries the needle as an int
    secret = (":" in marks or "=" in marks or "-" in marks or "_" in marks
              or ("IA" in marks and "IA" in text) or ("CA" in marks and "CA" in text)
              or ("AI" in marks and "AIza" in text) or ("J" in marks and "eyJ" in text)
              or ("B" in marks and "Bearer" in text))
    # other decimal digits match \d too: in a non-ASCII text, the patterns decide
    numbers = not ascii or (len(kept) >= MIN_DIGITS and len(kept.translate(None, _NOT_DIGITS)) >= MIN_DIGITS)
    return secret, "@" in marks, numbers


_NAME_HINTS = ("api", "key", "token", "secret", "passw")
# every secret name ends with one of these, and "name: value" needs it right before the ':' or '='
_ASSIGN_HINT = re.compile(r"(?:key|token|secret|password|passwd)[\"']?[ \t]*[:=]", re.I)


def _may_hold_secret(text: str) -> bool:
    if _TOKEN_HINT.search(text):
        return True
    if ":" not in text and "=" not in text:
        return False
    lower = text.lower()
    # the name hints (a word such as "capital" has "api") then a name right before the ':' or '='
    return any(h in lower for h in _NAME_HINTS) and _ASSIGN_HINT.search(text) is not None


class Redactor:
    """Replaces the chosen kinds of personal data and secrets with placeholders.

    >>> Redactor().redact("mail bob@example.com or call +44 20 7946 0958")
    ('mail [EMAIL] or call [PHONE]', {'email': 1, 'phone': 1})
    """

    def __init__(self, kinds: Iterable[str] = KINDS) -> None:
        chosen = set(kinds)
        unknown = chosen - set(KINDS)
        if unknown:
            raise ValueError(f"unknown redaction kinds {sorted(unknown)}: use {', '.join(KINDS)}")
        self.kinds = tuple(k for k in _ORDER if k in chosen)

    def may_redact(self, text: str) -> bool:
        """False when :meth:`redact` certainly changes nothing in ``text`` nor in any part of it.

        Cheap (one scan of an ASCII text, see :func:`_hints`): a caller may test several texts
        joined by newlines at once and skip :meth:`redact` for all of them when it says False.
        """
        secret, at, numbers = _hints(text)
        return (secret and "secret" in self.kinds) or (at and "email" in self.kinds) or (
            numbers and ("credit_card" in self.kinds or "phone" in self.kinds))

    def redact(self, text: str) -> tuple[str, dict[str, int]]:
        """The redacted text and how many of each kind were replaced (kinds with none left out)."""
        counts: dict[str, int] = {}
        if not self.kinds:
            return text, counts
        # hints from the text as given stay necessary as kinds are replaced: placeholders add no
        # digit nor '@', and the secret hint is used first
        secret, at, digits = _hints(text)
        numbers: bool | None = None if digits else False
        for kind in self.kinds:
            if kind == "secret" and not (secret and _may_hold_secret(text)):
                continue
            if kind == "email" and not at:
                continue
            if kind in ("credit_card", "phone"):
                if numbers is None:
                    numbers = _NUMBER_HINT.search(text) is not None
                if not numbers:
                    continue
            text, n = apply_kind(kind, text)
            if n:
                counts[kind] = n
        return text, counts


def apply_kind(kind: str, text: str) -> tuple[str, int]:
    """Replace every match of one kind (no pre-check): the text and how many were replaced."""
    pattern, fn = _SUBS[kind]
    n = 0

    def replace(m: re.Match[str]) -> str:
        nonlocal n
        out = fn(m)
        if out is None:
            return m.group(0)
        n += 1
        return out

    return pattern.sub(replace, text), n
