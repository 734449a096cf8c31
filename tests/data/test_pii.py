"""Redaction of e-mail addresses, phone numbers, credit cards and secrets (tunepipe.data.pii)."""

from __future__ import annotations

import random
from typing import Any

import pytest

from tunepipe.data.pii import KINDS, Redactor, entropy, looks_secret, luhn_ok

REDACT = Redactor()

# A JWT (header {"alg":"HS256","typ":"JWT"}, payload {"sub":"1234567890","name":"John Doe"}).
JWT = ("eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIn0"
       ".SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c")


@pytest.mark.parametrize(("text", "expected", "counts"), [
    # e-mail
    ("Write to jane.doe+news@example.co.uk today.", "Write to [EMAIL] today.", {"email": 1}),
    ("(mailto:ops@sub.example.org) and JOSÉ@correo.es", "(mailto:[EMAIL]) and [EMAIL]", {"email": 2}),
    # credit cards: Luhn-valid ones in every common layout
    ("Visa 4111 1111 1111 1111, thanks", "Visa [CREDIT_CARD], thanks", {"credit_card": 1}),
    ("MC 5555-5555-5555-4444 or 4012888888881881", "MC [CREDIT_CARD] or [CREDIT_CARD]", {"credit_card": 2}),
    ("Amex 3782 822463 10005.", "Amex [CREDIT_CARD].", {"credit_card": 1}),
    # phones: international, North American, national with a trunk 0
    ("Call +44 20 7946 0958 or +1 (555) 123-4567.", "Call [PHONE] or [PHONE].", {"phone": 2}),
    ("US: (555) 123-4567, 555.123.4567, 1-800-555-0199", "US: [PHONE], [PHONE], [PHONE]", {"phone": 3}),
    ("FR 06 12 34 56 78, DE 030 12345678, AU (02) 9876 5432, +49 (0)30 1234567",
     "FR [PHONE], DE [PHONE], AU [PHONE], [PHONE]", {"phone": 4}),
    # secrets of each kind
    ("key: sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z", "key: [SECRET]", {"secret": 1}),
    ("old key sk-ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcdefghijkl done", "old key [SECRET] done", {"secret": 1}),
    ("aws AKIAIOSFODNN7EXAMPLE region", "aws [SECRET] region", {"secret": 1}),
    ("gh ghp_1a2B3c4D5e6F7g8H9i0J1k2L3m4N5o6P7q8R and github_pat_11ABCDEFG0123456789_abcdefghijKLMNOP",
     "gh [SECRET] and [SECRET]", {"secret": 2}),
    ("slack xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx", "slack [SECRET]", {"secret": 1}),
    ("google AIzaSyD-9tSrke72PouQMnMX-a7eZSW0jkFMBWY!", "google [SECRET]!", {"secret": 1}),
    (f"token {JWT} end", "token [SECRET] end", {"secret": 1}),
    ("Authorization: Bearer 8f2a9c1e7b3d4f6a0e5c", "Authorization: Bearer [SECRET]", {"secret": 1}),
    ("config api_key=Zx8f9Qk2LmN4pR7sT1vW and token: 'a9F3kL0pQ7zX2mN5vB8c'",
     "config api_key=[SECRET] and token: '[SECRET]'", {"secret": 2}),
    ("-----BEGIN RSA PRIVATE KEY-----\nMIIEow\nabc\n-----END RSA PRIVATE KEY-----\nok", "[SECRET]\nok",
     {"secret": 1}),
    ("-----BEGIN ENCRYPTED PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,AB12\n\nMIIE+/ab==\n"
     "-----END ENCRYPTED PRIVATE KEY-----", "[SECRET]", {"secret": 1}),
    # several kinds in one text
    ("mail bob@example.com, card 4111-1111-1111-1111, phone +33 6 12 34 56 78",
     "mail [EMAIL], card [CREDIT_CARD], phone [PHONE]", {"email": 1, "credit_card": 1, "phone": 1}),
])
def test_redacts(text: str, expected: str, counts: dict[str, int]) -> None:
    assert REDACT.redact(text) == (expected, counts)


@pytest.mark.parametrize("text", [
    # numbers that are not phones or cards
    "In 1999 we sold 12 units; by 2024 it was 1,250.",
    "It costs $1,299.99 or €12.50 (was 1 234 567 890 yen).",
    "Meet on 2024-01-15 12:30, or on 15.01.2024 at 09:00.",
    "Version 1.2.3, IP 192.168.1.1, ISBN 978-3-16-148410-0, ratio 3:2.",
    "Order 1234567890 shipped at 1700000000 (a Unix time).",
    "Score +5 points, +12.50 USD, up 3.5%.",
    "Call 555-0199 (seven digits, too short to be sure).",
    # a card number that fails the Luhn check is left alone
    "Card 4111 1111 1111 1112 is not valid.",
    "Not a card: 1234 5678 9012 3456.",
    # e-mail look-alikes
    "icon@2x.png, pip install pkg@1.2.3, user@localhost, @mention",
    # secret look-alikes: placeholders, low-entropy values, words
    "Set token: YOUR_API_KEY and password: changeme, api_key=os.environ['KEY'].",
    "The bearer of bad news; Bearer responsibilities; the sk-learn library; risk-free.",
    "A secret: it_is_a_long_secret_phrase",
])
def test_leaves_alone(text: str) -> None:
    assert REDACT.redact(text) == (text, {})


def test_kinds_can_be_chosen() -> None:
    text = "bob@example.com +44 20 7946 0958 4111 1111 1111 1111 AKIAIOSFODNN7EXAMPLE"
    assert Redactor(["email"]).redact(text) == (
        "[EMAIL] +44 20 7946 0958 4111 1111 1111 1111 AKIAIOSFODNN7EXAMPLE", {"email": 1})
    assert Redactor(["phone", "secret"]).redact(text) == (
        "bob@example.com [PHONE] 4111 1111 1111 1111 [SECRET]", {"secret": 1, "phone": 1})
    assert Redactor([]).redact(text) == (text, {})
    assert set(Redactor().kinds) == set(KINDS)
    with pytest.raises(ValueError, match="unknown redaction kinds"):
        Redactor(["ssn"])


def test_a_secret_inside_an_assignment_is_redacted_even_when_low_entropy_around_it() -> None:
    # the assignment pattern starts earlier than the key; the key must not escape through it
    assert REDACT.redact("OPENAI_API_KEY=sk-proj-aaaaaaaaaaaaaaaaaaaaaaaa") == (
        "OPENAI_API_KEY=[SECRET]", {"secret": 1})


def test_placeholders_are_not_matched_again() -> None:
    once, _ = REDACT.redact("bob@example.com +44 20 7946 0958 4111111111111111")
    assert REDACT.redact(once) == (once, {})


def test_luhn_and_entropy_helpers() -> None:
    assert luhn_ok("4111111111111111") and luhn_ok("378282246310005") and luhn_ok("79927398713")
    assert not luhn_ok("4111111111111112") and not luhn_ok("79927398710")
    assert entropy("aaaa") == 0.0 and entropy("abcd") == 2.0
    assert looks_secret("a9F3kL0pQ7zX2mN5vB8c")
    assert not looks_secret("YOUR_API_KEY") and not looks_secret("aaaaaaaaaaaa1111") and not looks_secret("Ab1")


def test_long_texts_without_personal_data_come_back_unchanged() -> None:
    text = ("Marv answers every question, with a sigh. " * 2000) + "The end: 42."
    assert REDACT.redact(text) == (text, {})


# --- the cheap tests never change an answer --------------------------------------------------------

PIECES = ["sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z", "AKIAIOSFODNN7EXAMPLE", "ACCAIOSFODNN7EXAMPLE", "AKIA",
          "IA", "CA", "AIzaSyD9tSrke72PouQMnMXxa7eZSW0jkFMBWYz", "AIzaSyD-9tSrke72PouQMnMX-a7eZSW0jkFMBWY", JWT, "eyJ",
          ".", "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.abc", "Bearer 8f2a9c1e7b3d4f6a0e5c", "Bearer", "api_key=",
          "token: ", "password=", "Zx8f9Qk2LmN4pR7sT1vW",
          "ghp_1a2B3c4D5e6F7g8H9i0J1k2L3m4N5o6P7q8R", "https://hooks.slack.com/services/T0/B0/xyz",
          "xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx", "hf_abcdefghijklmnopqrstuvwxyz123456",
          "-----BEGIN RSA PRIVATE KEY-----\nMIIE\n-----END RSA PRIVATE KEY-----", "bob@example.com", "@", "x@y.co",
          "+44 20 7946 0958", "+1 (555) 123-4567", "(555) 123-4567", "555.123.4567", "06 12 34 56 78",
          "4111 1111 1111 1111", "4111111111111111", "1234567", "12345678", "0", " ", "\n", "-", "_", ":", "=",
          "I", "A", "B", "J", "hello", "World", "é", "٣", "１２３４５６７８９", "Ｉ", "capital:", "Monkey = ",
          "KEY :", "Token\t=", "passwd'=", 'secret"  :', "x7Fk2LmN4pR7sT1vWq9", "Aa1Bb2Cc3Dd4Ee5", "'", '"']


def ungated(redactor: Redactor, text: str) -> tuple[str, dict[str, int]]:
    """What redact gives with no cheap test at all: every chosen pattern applied, in order."""
    from tunepipe.data.pii import apply_kind

    counts: dict[str, int] = {}
    for kind in redactor.kinds:
        text, n = apply_kind(kind, text)
        if n:
            counts[kind] = n
    return text, counts


@pytest.mark.parametrize("kinds", [KINDS, ("email",), ("phone", "secret"), ("credit_card",), ("secret",)])
def test_cheap_tests_never_change_the_answer(kinds: tuple[str, ...]) -> None:
    rng = random.Random(len(kinds))
    redactor = Redactor(kinds)
    texts = ["".join(rng.choice(PIECES) if rng.random() < 0.7 else rng.choice(" .,;()")
                     for _ in range(rng.randint(0, 10))) for _ in range(3000)]
    for text in texts:
        assert redactor.redact(text) == ungated(redactor, text), text
    for i in range(0, len(texts), 3):  # may_redact of texts joined by newlines: False only if none changes
        group = texts[i:i + 3]
        if not redactor.may_redact("\n".join(group)):
            assert all(redactor.redact(t) == (t, {}) for t in group), group
