"""YAML → plain JSON-like data, keeping the position of every node.

Why not ``yaml.safe_load``: it forgets positions, silently keeps the last of two duplicate keys,
and follows YAML 1.1, where ``yes``/``no``/``on``/``off`` are booleans and ``2024-01-01`` is a date.
We compose the node tree with PyYAML and build the data ourselves, resolving plain scalars
by the YAML 1.2 core schema, so every value the runner sees is JSON-representable and every
problem can name its file, line and column.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from yaml.composer import Composer
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.parser import Parser
from yaml.reader import Reader
from yaml.resolver import BaseResolver
from yaml.scanner import Scanner

from tunepipe.errors import Position, Problem, SpecError, excerpt_at

JsonPath = tuple[str | int, ...]


class _Core12Resolver(BaseResolver):
    """Plain-scalar resolution by the YAML 1.2 core schema (no yes/no booleans, no dates)."""


_Core12Resolver.yaml_implicit_resolvers = {}
for _tag, _regex, _first in (
    ("tag:yaml.org,2002:bool", r"^(?:true|True|TRUE|false|False|FALSE)$", "tTfF"),
    ("tag:yaml.org,2002:int", r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$", "-+0123456789"),
    (
        "tag:yaml.org,2002:float",
        r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$",
        "-+0123456789.",
    ),
    ("tag:yaml.org,2002:null", r"^(?:~|null|Null|NULL|)$", ["~", "n", "N", ""]),
):
    _Core12Resolver.add_implicit_resolver(_tag, re.compile(_regex), list(_first))


class _Loader(Reader, Scanner, Parser, Composer, _Core12Resolver):
    def __init__(self, stream: str) -> None:
        Reader.__init__(self, stream)
        Scanner.__init__(self)
        Parser.__init__(self)
        Composer.__init__(self)
        _Core12Resolver.__init__(self)


@dataclass
class Document:
    """Loaded YAML: the data, the text (for excerpts), and node positions by JSON path.

    A pipeline assembled from several files (``include:``) is one Document whose positions name
    the file each value was written in; ``texts`` holds every file's text (for excerpts), ``via``
    the chain of ``include:`` lines through which a file was reached, and ``bases`` the folder
    relative paths written in that file are resolved against.
    """

    source: str
    text: str
    data: Any
    values: dict[JsonPath, Position] = field(default_factory=dict)
    keys: dict[JsonPath, Position] = field(default_factory=dict)
    texts: dict[str, str] = field(default_factory=dict)
    via: dict[str, tuple[Position, ...]] = field(default_factory=dict)
    bases: dict[str, Path] = field(default_factory=dict)

    def excerpt(self, pos: Position) -> tuple[str, ...]:
        """The offending line with a caret, then the include chain that reached its file."""
        text = self.text if pos.source == self.source else self.texts.get(pos.source, "")
        lines = excerpt_at(text, pos) if text else ()
        return lines + tuple(f"  included from {p}" for p in self.via.get(pos.source, ()))

    def position(self, path: JsonPath, *, key: bool = False) -> Position:
        """The position of the node at ``path`` (of its key if ``key``), or of its nearest parent."""
        table = self.keys if key else self.values
        p = tuple(path)
        while p:
            if p in table:
                return table[p]
            if p in self.values:
                return self.values[p]
            p = p[:-1]
        return self.values.get((), Position(self.source, 1, 1))

    def problem(self, path: JsonPath, message: str, hint: str = "", *, key: bool = False) -> Problem:
        pos = self.position(path, key=key)
        return Problem(pos, message, hint, self.excerpt(pos))

    def problem_at(self, pos: Position, message: str, hint: str = "") -> Problem:
        return Problem(pos, message, hint, self.excerpt(pos))


def _pos(source: str, mark: yaml.Mark) -> Position:
    return Position(source, mark.line + 1, mark.column + 1)


_SCALAR_TYPES = {
    "tag:yaml.org,2002:str": "string",
    "tag:yaml.org,2002:int": "int",
    "tag:yaml.org,2002:float": "float",
    "tag:yaml.org,2002:bool": "bool",
    "tag:yaml.org,2002:null": "null",
}


class _Builder:
    def __init__(self, doc: Document) -> None:
        self.doc = doc
        self.problems: list[Problem] = []
        self._stack: set[int] = set()

    def fail(self, pos: Position, message: str, hint: str = "") -> None:
        self.problems.append(Problem(pos, message, hint, excerpt_at(self.doc.text, pos)))

    def build(self, node: Node, path: JsonPath) -> Any:
        self.doc.values.setdefault(path, _pos(self.doc.source, node.start_mark))
        if id(node) in self._stack:
            self.fail(_pos(self.doc.source, node.start_mark), "a YAML alias refers to itself",
                      "remove the recursive alias (*name inside the node &name anchors)")
            return None
        if isinstance(node, MappingNode):
            self._stack.add(id(node))
            try:
                return self._mapping(node, path)
            finally:
                self._stack.discard(id(node))
        if isinstance(node, SequenceNode):
            self._stack.add(id(node))
            try:
                return [self.build(item, path + (i,)) for i, item in enumerate(node.value)]
            finally:
                self._stack.discard(id(node))
        assert isinstance(node, ScalarNode)
        return self._scalar(node)

    def _mapping(self, node: MappingNode, path: JsonPath) -> dict[str, Any]:
        out: dict[str, Any] = {}
        seen: dict[str, Position] = {}
        for key_node, value_node in node.value:
            kpos = _pos(self.doc.source, key_node.start_mark)
            if not isinstance(key_node, ScalarNode) or key_node.tag not in _SCALAR_TYPES:
                self.fail(kpos, "a mapping key must be a plain string",
                          "write keys as plain words, e.g. `name: value`")
                continue
            if key_node.tag == "tag:yaml.org,2002:merge" or key_node.value == "<<":
                self.fail(kpos, "YAML merge keys (<<) are not supported",
                          "spell out the keys; anchors and aliases (&name / *name) for whole values work")
                continue
            key = key_node.value
            if key_node.tag != "tag:yaml.org,2002:str":
                self.fail(kpos, f"the key {key!r} is read as a {_SCALAR_TYPES[key_node.tag]}, not a string",
                          f"quote it: \"{key}\":")
                continue
            if key in seen:
                first = seen[key]
                self.fail(kpos, f"duplicate key '{key}' (first defined at line {first.line}, column {first.column})",
                          "keep one of the two; YAML would silently drop the first")
                continue
            seen[key] = kpos
            self.doc.keys[path + (key,)] = kpos
            out[key] = self.build(value_node, path + (key,))
        return out

    def _scalar(self, node: ScalarNode) -> Any:
        pos = _pos(self.doc.source, node.start_mark)
        tag, text = node.tag, node.value
        if tag == "tag:yaml.org,2002:str":
            return text
        if tag == "tag:yaml.org,2002:null":
            return None
        if tag == "tag:yaml.org,2002:bool":
            return text.lower() == "true"
        if tag == "tag:yaml.org,2002:int":
            if text.startswith("0o"):
                return int(text[2:], 8)
            if text.startswith("0x"):
                return int(text[2:], 16)
            return int(text)
        if tag == "tag:yaml.org,2002:float":
            value = float(text.replace(".inf", "inf").replace(".Inf", "inf").replace(".INF", "inf")
                          .replace(".nan", "nan").replace(".NaN", "nan").replace(".NAN", "nan"))
            if not math.isfinite(value):
                self.fail(pos, f"'{text}' is a YAML-only number (infinity or not-a-number) that JSON cannot hold",
                          f"use a finite number, or quote it (\"{text}\") if you mean the text")
                return None
            return value
        self.fail(pos, f"the YAML tag '{tag}' is not supported",
                  "tunepipe specs hold only strings, numbers, booleans, null, lists and mappings; "
                  "remove the tag or quote the value")
        return None


def _yaml_problem(source: str, text: str, err: yaml.MarkedYAMLError) -> Problem:
    mark = err.problem_mark or err.context_mark
    pos = _pos(source, mark) if mark is not None else Position(source)
    problem = (err.problem or str(err)).strip()
    hint = "check the indentation and quoting around this place"
    if "'\\t'" in problem or "\\t" in problem:
        problem = "a tab character is used for indentation"
        hint = "YAML allows only spaces for indentation: replace the tab with spaces"
    elif "mapping values are not allowed" in problem:
        hint = "a value that contains ': ' must be quoted, or a key is indented wrongly"
    elif "expected <block end>" in problem or "did not find expected key" in problem:
        hint = "the indentation of this line does not match its siblings"
    if err.context and err.context not in problem:
        problem = f"{err.context.strip()}: {problem}"
    return Problem(pos, f"YAML syntax error: {problem}", hint, excerpt_at(text, pos))


def decode(raw: bytes, source: str) -> str:
    """Decode a spec file as UTF-8, naming the line and column of the first bad byte."""
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        col = e.start - (raw.rfind(b"\n", 0, e.start) + 1) + 1
        raise SpecError([Problem(
            Position(source, line, col),
            f"the file is not valid UTF-8 (byte 0x{raw[e.start]:02x} at offset {e.start})",
            "save the file as UTF-8 (most editors: 'Save with encoding')",
        )]) from None


def load_text(text: str, source: str) -> Document:
    """Parse one YAML document into a :class:`Document`, or raise :class:`SpecError`."""
    doc = Document(source=source, text=text, data=None)
    if not text.strip() or all(not ln.strip() or ln.lstrip().startswith("#") for ln in text.splitlines()):
        raise SpecError([Problem(Position(source, 1, 1), "the pipeline file is empty",
                                 "a pipeline needs at least a `stages:` mapping; see pipelines/sarcasm.yaml")])
    loader = _Loader(text)
    try:
        root = loader.get_single_node()
    except yaml.MarkedYAMLError as e:
        raise SpecError([_yaml_problem(source, text, e)]) from None
    except yaml.YAMLError as e:  # pragma: no cover - PyYAML raises marked errors for all syntax faults
        raise SpecError([Problem(Position(source), f"YAML error: {e}", "fix the YAML syntax")]) from None
    finally:
        loader.dispose()
    if root is None:
        raise SpecError([Problem(Position(source, 1, 1), "the pipeline file is empty",
                                 "a pipeline needs at least a `stages:` mapping")])
    builder = _Builder(doc)
    doc.data = builder.build(root, ())
    if builder.problems:
        raise SpecError(builder.problems)
    return doc


def load_file(path: Path, display: str | None = None) -> Document:
    """Read and parse a spec file; ``display`` is the name used in messages."""
    source = display or str(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise SpecError([Problem(Position(source), "the pipeline file does not exist",
                                 "check the path; pipeline files usually live in pipelines/")]) from None
    except IsADirectoryError:
        raise SpecError([Problem(Position(source), "this is a folder, not a pipeline file",
                                 "name the YAML file itself, e.g. pipelines/sarcasm.yaml")]) from None
    return load_text(decode(raw, source), source)
