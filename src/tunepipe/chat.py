"""Talking to a trained model: one question (``--prompt``) or a conversation (a REPL).

A :class:`Conversation` holds the system prompt and the turns so far; each side (the fine-tuned
model, its base, or both with ``--compare``) answers the same messages through its backend's
replier, streamed piece by piece to the terminal as it is generated. Each side keeps its own
history, so a compared conversation is two conversations that hear the same user. Replies are
the result (stdout); labels, notes and errors are diagnostics (stderr).
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from tunepipe.plugins import StageContext
from tunepipe.replies import Decoding, Prompt, Replier, stream
from tunepipe.trained import Trained

HELP = ("/reset: forget the conversation · /system TEXT: a new system prompt (and a new conversation) · "
        "/system: show it · /help · Ctrl-D: leave · Ctrl-C: stop a reply")


@dataclass
class ChatSide:
    """One model of the chat: what it is called and its replier; ``turns``: its own history."""

    label: str
    replier: Replier
    turns: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Conversation:
    system: str | None
    sides: list[ChatSide]

    def prompt(self, side: ChatSide, text: str) -> Prompt:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return Prompt([*head, *side.turns, {"role": "user", "content": text}], where="the chat")

    def keep(self, side: ChatSide, text: str, reply: str) -> None:
        side.turns += [{"role": "user", "content": text}, {"role": "assistant", "content": reply}]

    def reset(self) -> None:
        for side in self.sides:
            side.turns.clear()


def say(side: ChatSide, prompt: Prompt, decoding: Decoding, out: TextIO) -> str:
    """Stream ``side``'s reply to ``out`` as it is generated; the whole reply."""
    pieces: list[str] = []
    with contextlib.closing(stream(side.replier, prompt, decoding)) as gen:  # Ctrl-C stops generating too
        for piece in gen:
            pieces.append(piece)
            out.write(piece)
            out.flush()
    out.write("\n")
    out.flush()
    return "".join(pieces).strip()


def ask(conv: Conversation, text: str, decoding: Decoding, out: TextIO, err: TextIO) -> dict[str, str]:
    """Every side's reply to ``text`` (labelled on ``err`` when there are several), kept in history."""
    replies = {}
    for side in conv.sides:
        if len(conv.sides) > 1:
            err.write(f"── {side.label}\n")
            err.flush()
        replies[side.label] = say(side, conv.prompt(side, text), decoding, out)
    for side in conv.sides:  # kept once every side has answered: a stopped turn is kept by none
        conv.keep(side, text, replies[side.label])
    return replies


def repl(conv: Conversation, decoding: Decoding, out: TextIO, err: TextIO,
         read: Callable[[str], str] = input, history: Path | None = None) -> None:
    """Read a line, answer it, until end of input (Ctrl-D). Ctrl-C stops a reply (or clears the
    line); the commands are in :data:`HELP`."""
    err.write(f"{HELP}\n")
    with _line_history(history):
        for line in _lines(read, err):
            if line.startswith("/"):
                _command(conv, line, err)
                continue
            try:
                ask(conv, line, decoding, out, err)
            except KeyboardInterrupt:
                out.write("\n")
                err.write("(stopped; that turn is not kept)\n")


def reader(stdin: TextIO, stdout: TextIO, err: TextIO) -> Callable[[str], str]:
    """``input`` on a terminal (line editing, history); else the prompt goes to ``err`` so that
    stdout holds only replies when a conversation is piped in or out."""
    if stdin.isatty() and stdout.isatty():
        return input

    def read(prompt: str) -> str:
        err.write(prompt)
        err.flush()
        line = stdin.readline()
        if not line:
            raise EOFError
        return line.rstrip("\n")

    return read


def _lines(read: Callable[[str], str], err: TextIO) -> Iterator[str]:
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        while True:
            try:
                line = read("> ").strip()
            except EOFError:
                err.write("\n")
                return
            except KeyboardInterrupt:
                err.write("\n")
                continue
            if line:
                yield line
    finally:
        signal.signal(signal.SIGINT, previous)


def _command(conv: Conversation, line: str, err: TextIO) -> None:
    name, _, arg = line.partition(" ")
    if name == "/reset":
        conv.reset()
        err.write("(a new conversation)\n")
    elif name == "/system" and arg.strip():
        conv.system = arg.strip()
        conv.reset()
        err.write("(system prompt set; a new conversation)\n")
    elif name == "/system":
        err.write(f"system: {conv.system!r}\n" if conv.system else "(no system prompt)\n")
    else:
        err.write(f"{HELP}\n" if name == "/help" else f"unknown command {name}: {HELP}\n")


class _line_history:
    """Line editing and history (up arrow) through readline when this Python has it, kept in
    ``path`` across sessions."""

    def __init__(self, path: Path | None) -> None:
        self.path, self.readline = path, None

    def __enter__(self) -> None:
        try:
            import readline
        except ImportError:  # pragma: no cover - a Python built without readline
            return
        self.readline = readline
        if self.path is not None and self.path.is_file():
            try:
                readline.read_history_file(self.path)
            except OSError:
                pass

    def __exit__(self, *exc: object) -> None:
        if self.readline is not None and self.path is not None:
            try:
                self.readline.set_history_length(1000)
                self.readline.write_history_file(self.path)
            except OSError:
                pass  # history is a convenience


def sides_for(trained: Trained, ctx: StageContext, *, base: bool, compare: bool) -> list[ChatSide]:
    """The models to talk to: the fine-tuned one, its base (``base``), or both (``compare``, base
    first), each through the replier of the backend that trained it. The train stage's own
    settings reach the replier (the local device, OpenAI's endpoint and key variable)."""
    settings = dict(trained.params)
    make = trained.backend.replier
    tuned = ChatSide(f"fine-tuned: {trained.stage}.model", make(ctx, trained.ref, base=False, settings=settings))
    if not (base or compare):
        return [tuned]
    original = ChatSide(f"base: {trained.ref.base_model}", make(ctx, trained.ref, base=True, settings=settings))
    return [original, tuned] if compare else [original]
