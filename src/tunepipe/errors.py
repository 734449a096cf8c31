"""Error types. User mistakes (exit 2) and runtime failures (exit 1) are kept apart.

Every error must carry a message that says what is wrong and what to do next; the CLI prints
it without a traceback.
"""

from __future__ import annotations

from dataclasses import dataclass, field

USER_ERROR_EXIT = 2
FAILURE_EXIT = 1


class TunepipeError(Exception):
    """Base class: demands a message, and knows its exit code."""

    exit_code = FAILURE_EXIT

    def __init__(self, message: str) -> None:
        if not message or not message.strip():
            raise ValueError("a TunepipeError needs a message that tells the user what to do")
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class UserError(TunepipeError):
    """The user asked for something wrong (bad spec, bad option, unknown stage): exit 2."""

    exit_code = USER_ERROR_EXIT


@dataclass(frozen=True)
class Position:
    """Where a problem is: a file (or a pseudo-source such as ``--set``), 1-based line and column."""

    source: str
    line: int | None = None
    column: int | None = None

    def __str__(self) -> str:
        if self.line is None:
            return self.source
        if self.column is None:
            return f"{self.source}:{self.line}"
        return f"{self.source}:{self.line}:{self.column}"


@dataclass(frozen=True)
class Problem:
    """One problem in a pipeline spec: where, what is wrong, and how to fix it."""

    position: Position
    message: str
    hint: str = ""
    excerpt: tuple[str, ...] = field(default=(), compare=False)

    def render(self) -> str:
        out = [f"{self.position}: error: {self.message}"]
        out.extend(self.excerpt)
        if self.hint:
            out.append(f"  hint: {self.hint}")
        return "\n".join(out)


def excerpt_at(text: str, pos: Position) -> tuple[str, ...]:
    """The offending line with a caret under the column, as a compiler would print it."""
    if pos.line is None:
        return ()
    lines = text.splitlines()
    if not 1 <= pos.line <= len(lines):
        return ()
    line = lines[pos.line - 1].replace("\t", " ")
    gutter = f"{pos.line:>5} | "
    caret = " " * (len(gutter) - 2) + "| " + " " * ((pos.column or 1) - 1) + "^"
    return (gutter + line, caret)


class SpecError(UserError):
    """Every problem found in a pipeline spec, reported at once."""

    def __init__(self, problems: list[Problem]) -> None:
        if not problems:
            raise ValueError("SpecError needs at least one problem")
        self.problems = sorted(
            problems, key=lambda p: (p.position.source, p.position.line or 0, p.position.column or 0)
        )
        n = len(self.problems)
        head = f"{n} problem{'s' if n > 1 else ''} in the pipeline spec:" if n > 1 else ""
        body = "\n\n".join(p.render() for p in self.problems)
        super().__init__(f"{head}\n{body}" if head else body)


class PluginError(UserError):
    """A plugin cannot be found or does not honour the plugin contract."""


class CacheError(TunepipeError):
    """The cache is unusable (unwritable, corrupted beyond repair)."""


def with_stage(stage: str, message: str) -> str:
    """``stage 'NAME': message``, the one way a stage's error names the stage. The runner adds it to
    every failed stage's error, whichever executor ran it, so plugins and the modules they call
    leave it out; a message that already starts with it (a :class:`StageFailed`) keeps its own."""
    if not message or message.startswith(f"stage '{stage}'"):
        return message
    return f"stage '{stage}': {message}"


def without_stage(stage: str, message: str) -> str:
    """The message less its ``stage 'NAME': `` prefix, for a line that names the stage already."""
    return message.removeprefix(f"stage '{stage}': ")


class StageFailed(TunepipeError):
    """A stage's plugin raised: a runtime failure, exit 1. The message names the stage as
    :func:`with_stage` does, so the runner does not name it twice."""

    def __init__(self, stage: str, message: str, log_path: str | None = None) -> None:
        where = f" (log: {log_path})" if log_path else ""
        super().__init__(f"stage '{stage}': {message}{where}")
        self.stage = stage
        self.log_path = log_path


class OutputError(TunepipeError):
    """A stage wrote an output the cache cannot store (a symbolic link): the plugin's fault, exit 1.
    The runner names the stage (:func:`with_stage`)."""


class StageInputError(UserError):
    """A plugin found its input data unusable (e.g. a malformed record): a user error with a place.

    Plugins raise this so the run reports the file and record instead of a traceback.
    """
