"""Text normalization for chat data: Unicode form, control characters, whitespace.

:class:`TextCleaner` turns one message text into its cleaned form and says what it changed
(a bit set of :data:`UNICODE`, :data:`CONTROL`, :data:`WHITESPACE`), so a stage can account for
every changed record. :func:`dedupe_form` is the comparison form used for deduplication.

What the clean-up does, in this order:

1. Line breaks: ``\\r\\n``, a lone ``\\r``, U+0085, U+2028 and U+2029 become ``\\n``.
2. Unicode normalization: NFC (composed characters, the default), NFKC (also folds
   compatibility forms: full-width letters and digits, ligatures, non-breaking spaces), or none.
3. Control characters are removed: C0 and C1 controls except ``\\n`` and ``\\t``, and the
   invisible U+200B (zero-width space), U+2060 (word joiner) and U+FEFF (byte-order mark).
   Joiners that change how text renders (U+200C, U+200D: emoji, Indic and Persian scripts) stay.
4. Whitespace (``whitespace=True``): trailing spaces at line ends are removed; inside a line, a
   run of spaces, tabs or Unicode spaces after the first non-space character becomes one space
   (leading indentation is kept); runs of more than ``max_blank_lines`` blank lines shrink to
   ``max_blank_lines``; the text is trimmed. Lines inside fenced code blocks (````` or ``~~~``)
   are kept verbatim, since whitespace is meaning in code.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator

FORMS = ("NFC", "NFKC", "none")

UNICODE = 1
CONTROL = 2
WHITESPACE = 4
FLAG_NAMES = {UNICODE: "unicode", CONTROL: "control_chars", WHITESPACE: "whitespace"}

_NEWLINES = re.compile("\r\n?|[\x85\u2028\u2029]")
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x84\x86-\x9f\u200b\u2060\ufeff]")
_HSPACE = "[ \t\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]"
_TRAILING = re.compile(_HSPACE + "+$", re.M)
# a run after a non-space character: two or more of any kind, or a single tab or Unicode space
_INNER = re.compile(r"(?<=\S)(?:" + _HSPACE + "{2,}|[\t\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000])")
_ODD_SPACE = re.compile("[\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]")
_FENCE = re.compile(r"[ ]{0,3}(`{3,}|~{3,})")


def flag_names(flags: int) -> list[str]:
    """The names of the change flags set in ``flags`` (for reports)."""
    return [name for bit, name in FLAG_NAMES.items() if flags & bit]


def _segments(text: str) -> Iterator[tuple[bool, str]]:
    """(is_code, text) runs of lines; fence lines themselves belong to the prose around them."""
    fence = ""
    run: list[str] = []
    in_code = False
    for line in text.splitlines(keepends=True):
        m = _FENCE.match(line)
        is_fence = m is not None and (not fence or (m.group(1)[0] == fence[0] and len(m.group(1)) >= len(fence)))
        line_code = bool(fence) and not is_fence
        if line_code != in_code and run:
            yield in_code, "".join(run)
            run = []
        in_code = line_code
        run.append(line)
        if is_fence:
            fence = "" if fence else m.group(1)  # type: ignore[union-attr]
    if run:
        yield in_code, "".join(run)


class TextCleaner:
    """Cleans message texts. ``form``: NFC, NFKC or none; ``max_blank_lines``: blank lines kept in a row."""

    def __init__(self, form: str = "NFC", whitespace: bool = True, max_blank_lines: int = 1) -> None:
        if form not in FORMS:
            raise ValueError(f"unknown Unicode form {form!r}: use one of {', '.join(FORMS)}")
        if max_blank_lines < 0:
            raise ValueError("max_blank_lines must be 0 or more")
        self.form = form
        self.whitespace = whitespace
        self.max_blank_lines = max_blank_lines
        self._blank_run = re.compile("\n{%d,}" % (max_blank_lines + 2))
        self._blank_min = "\n" * (max_blank_lines + 2)  # the shortest run to shrink
        self._blank_repl = "\n" * (max_blank_lines + 1)

    def clean(self, text: str) -> tuple[str, int]:
        """The cleaned text and the change flags (0 when nothing changed)."""
        flags = 0
        if "\r" in text or (not text.isascii() and ("\x85" in text or "\u2028" in text or "\u2029" in text)):
            text = _NEWLINES.sub("\n", text)
            flags |= WHITESPACE
        if self.form != "none" and not text.isascii() and not unicodedata.is_normalized(self.form, text):
            text = unicodedata.normalize(self.form, text)
            flags |= UNICODE
        # isprintable: a fast path for one-line texts; without their line breaks and tabs, for the others
        if not text.isprintable() and not text.replace("\n", "").replace("\t", "").isprintable() \
                and _CONTROL.search(text):
            text = _CONTROL.sub("", text)
            flags |= CONTROL
        if self.whitespace:
            tidy = self._whitespace(text)
            if tidy != text:
                text = tidy
                flags |= WHITESPACE
        return text, flags

    def only_trims(self, text: str) -> bool:
        """Whether :meth:`clean` changes a text of printable ASCII and line breaks only by trimming it.

        True when it has no run of spaces, space before a line break or run of blank lines to
        shrink (then code fences change nothing either). Several such texts may be tested at
        once, joined by a character that is none of these (NUL).
        """
        return not self.whitespace or not ("  " in text or " \n" in text or self._blank_min in text)

    def _prose(self, text: str) -> str:
        if "  " in text or "\t" in text or " \n" in text or (not text.isascii() and _ODD_SPACE.search(text)):
            text = _TRAILING.sub("", text)
            text = _INNER.sub(" ", text)
        if self._blank_min in text:
            text = self._blank_run.sub(self._blank_repl, text)
        return text

    def _whitespace(self, text: str) -> str:
        if "```" not in text and "~~~" not in text:
            return self._prose(text).strip()
        return "".join(seg if code else self._prose(seg) for code, seg in _segments(text)).strip()


def dedupe_form(text: str) -> str:
    """The form texts are compared in for deduplication: casefolded, whitespace runs as one space."""
    return " ".join(text.casefold().split())
