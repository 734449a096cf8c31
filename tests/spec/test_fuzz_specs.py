"""Fuzzing pipelines/sarcasm.yaml: whatever a mutated spec holds, `validate` ends with exit 0 or 2
and a message, never a traceback (issue 13: 49 of 500 fuzzed files ended in one).

Seeded, so a failure names the case that reproduces it; in-process (CliRunner), so a few hundred
cases take seconds; bounded by a deadline as well as by the number of cases.
"""

from __future__ import annotations

import random
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from tunepipe.cli import cli

PIPELINES = Path(__file__).parents[2] / "pipelines"
SEED = 13
CASES = 400
DEADLINE_S = 60.0

# Values of other types (and YAML oddities) to put where a value was.
VALUES = ["[1, 2]", "{a: 1}", '"text"', "42", "-1.5e3", "true", "null", "~", '""', "[]", "{}", "*nope",
          "&a [*a]", "!!binary aGk=", ".inf", ".nan", "'${vars.nope}'", "$${x}", "${vars.system}",
          "'{{'", "0x1F", "0o17", "yes", "2024-01-01", "[[[[[[[[", "{a: {b: {c: [1, {d: 2}]}}}", "|\n  block",
          ">-\n  folded", "? complex\n: key", "'${vars.model}'", "'${matrix.x}'", "'${params.y}'",
          "data/marv.jsonl", "nosuchstage.out", "ingest.records", "ingest@*.records", "/", "..", "'*'"]
SPECIAL = list(":{}[]\"'&*!|>#%@`-?,\\\t\n")
CONTROL = [chr(c) for c in range(0x20) if chr(c) not in "\t\n\r"] + ["\x7f", "\x85", "\ufeff", "\ufffe", "\uffff",
                                                                      "\u2028", "\ud800"]


def _char(rng: random.Random) -> str:
    """A random character: often ASCII, sometimes anywhere in Unicode (a lone surrogate included)."""
    if rng.random() < 0.5:
        return chr(rng.randrange(0x20, 0x7f))
    low, high = rng.choice([(0x80, 0x800), (0x800, 0x10000), (0x10000, 0x110000)])
    return chr(rng.randrange(low, high))


def _at(rng: random.Random, text: str) -> int:
    return rng.randrange(len(text) + 1)


def _lines(text: str) -> list[str]:
    return text.split("\n")


def delete_char(rng: random.Random, text: str) -> str:
    i = _at(rng, text)
    return text[:i] + text[i + 1:]


def duplicate_span(rng: random.Random, text: str) -> str:
    i = _at(rng, text)
    j = min(len(text), i + rng.randrange(1, 40))
    return text[:j] + text[i:j] + text[j:]


def swap_chars(rng: random.Random, text: str) -> str:
    if len(text) < 2:
        return text
    i = rng.randrange(len(text) - 1)
    return text[:i] + text[i + 1] + text[i] + text[i + 2:]


def delete_line(rng: random.Random, text: str) -> str:
    lines = _lines(text)
    del lines[rng.randrange(len(lines))]
    return "\n".join(lines)


def duplicate_line(rng: random.Random, text: str) -> str:
    lines = _lines(text)
    i = rng.randrange(len(lines))
    lines.insert(i, lines[i])
    return "\n".join(lines)


def swap_lines(rng: random.Random, text: str) -> str:
    lines = _lines(text)
    i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
    lines[i], lines[j] = lines[j], lines[i]
    return "\n".join(lines)


def insert_control(rng: random.Random, text: str) -> str:
    i = _at(rng, text)
    return text[:i] + rng.choice(CONTROL) + text[i:]


def insert_unicode(rng: random.Random, text: str) -> str:
    i = _at(rng, text)
    return text[:i] + "".join(_char(rng) for _ in range(rng.randrange(1, 4))) + text[i:]


def insert_special(rng: random.Random, text: str) -> str:
    i = _at(rng, text)
    return text[:i] + rng.choice(SPECIAL) + text[i:]


def truncate(rng: random.Random, text: str) -> str:
    return text[:_at(rng, text)]


def reindent(rng: random.Random, text: str) -> str:
    lines = _lines(text)
    i = rng.randrange(len(lines))
    body = lines[i].lstrip(" ")
    indent = len(lines[i]) - len(body)
    choice = rng.randrange(3)
    if choice == 0:
        lines[i] = " " * (indent + rng.choice([1, 2, 4])) + body
    elif choice == 1:
        lines[i] = " " * max(0, indent - rng.choice([1, 2, 4])) + body
    else:
        lines[i] = "\t" * max(1, indent // 2) + body
    return "\n".join(lines)


def replace_value(rng: random.Random, text: str) -> str:
    lines = _lines(text)
    candidates = [i for i, line in enumerate(lines) if ": " in line and not line.lstrip().startswith("#")]
    if not candidates:
        return text
    i = rng.choice(candidates)
    key, _, _ = lines[i].partition(": ")
    lines[i] = f"{key}: {rng.choice(VALUES)}"
    return "\n".join(lines)


def rename_key(rng: random.Random, text: str) -> str:
    lines = _lines(text)
    candidates = [i for i, line in enumerate(lines) if ":" in line and not line.lstrip().startswith(("#", "-"))]
    if not candidates:
        return text
    i = rng.choice(candidates)
    key, colon, rest = lines[i].partition(":")
    j = rng.randrange(len(key) + 1)
    lines[i] = key[:j] + _char(rng) + key[j:] + colon + rest
    return "\n".join(lines)


def nest_deeply(rng: random.Random, text: str) -> str:
    depth = rng.choice([50, 99, 150, 1000])
    return replace_value(random.Random(rng.random()), text).replace(": ", ": " + "[" * depth, 1) \
        if rng.random() < 0.5 else text + f"\nvars:\n  deep: {'[' * depth}{']' * depth}\n"


def add_aliases(rng: random.Random, text: str) -> str:
    fan = rng.choice([2, 10])
    levels = rng.choice([2, 5, 9])
    lines = ["x0: &x0 [lol, lol]"] + [f"x{i}: &x{i} [{', '.join([f'*x{i - 1}'] * fan)}]" for i in range(1, levels)]
    return text + "\nvars:\n" + "\n".join("  " + line for line in lines) + "\n"


MUTATIONS: list[Callable[[random.Random, str], str]] = [
    delete_char, duplicate_span, swap_chars, delete_line, duplicate_line, swap_lines, insert_control,
    insert_unicode, insert_special, truncate, reindent, replace_value, replace_value, rename_key, nest_deeply,
    add_aliases,
]


def mutate(rng: random.Random, text: str) -> tuple[str, list[str]]:
    """``text`` after one to three random mutations, and their names."""
    names = []
    for _ in range(rng.choice([1, 1, 2, 3])):
        m = rng.choice(MUTATIONS)
        text = m(rng, text)
        names.append(m.__name__)
    return text, names


@pytest.mark.timeout(300)
def test_mutated_specs_end_in_a_message_not_a_traceback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shutil.copytree(PIPELINES / "data", tmp_path / "data")
    original = (PIPELINES / "sarcasm.yaml").read_text(encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    rng = random.Random(SEED)
    runner = CliRunner()
    deadline = time.monotonic() + DEADLINE_S
    codes: dict[int, int] = {}
    done = 0
    for case in range(CASES):
        text, names = mutate(rng, original)
        (tmp_path / "p.yaml").write_bytes(text.encode("utf-8", "surrogatepass"))
        result = runner.invoke(cli, ["validate", "p.yaml"])
        where = f"case {case} (seed {SEED}; {', '.join(names)}):\n{text[:2000]!r}\n--- output:\n{result.output[-3000:]}"
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise AssertionError(f"{where}\n--- exception: {result.exception!r}") from result.exception
        assert result.exit_code in (0, 2), where
        assert "Traceback" not in result.output, where
        if result.exit_code == 2:
            assert "error" in result.output, where
        codes[result.exit_code] = codes.get(result.exit_code, 0) + 1
        done += 1
        if time.monotonic() > deadline:
            break
    assert done >= 100, f"only {done} cases ran before the deadline"
    assert codes.get(2, 0) > done // 2  # most mutations break the spec: the fuzzer reaches the error paths
