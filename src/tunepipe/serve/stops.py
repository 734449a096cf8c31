"""OpenAI's ``stop`` sequences applied to a reply's text: the reply ends before the first one.

The model does not know them (a batch shares one decoding, stop strings are per request), so a
whole reply is cut after generation, and a stream is scanned as its pieces come: text that could be
the start of a stop sequence is held back until the next piece shows it is not.
"""

from __future__ import annotations

from collections.abc import Sequence


def cut(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """``text`` up to its first stop sequence, and whether one was found."""
    at = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
    return (text, False) if at < 0 else (text[:at], True)


class StopScan:
    """Pieces of a streamed reply in, the text that may be shown out: :meth:`feed` each piece,
    then :meth:`flush` what was held back when the stream ends without a stop."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops, self.held, self.stopped = tuple(stops), "", False

    def feed(self, piece: str) -> str:
        """What of ``held + piece`` can be shown now; after a stop sequence, nothing more."""
        if self.stopped:
            return ""
        text = self.held + piece
        shown, self.stopped = cut(text, self.stops)
        if self.stopped:
            self.held = ""
            return shown
        keep = max((k for s in self.stops for k in range(len(s) - 1, 0, -1) if text.endswith(s[:k])), default=0)
        self.held = text[len(text) - keep:] if keep else ""
        return text[:len(text) - keep]

    def flush(self) -> str:
        held, self.held = self.held, ""
        return held
