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
from yaml.events import AliasEvent
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.parser import Parser
from yaml.reader import Reader
from yaml.resolver import BaseResolver
from yaml.scanner import Scanner

from tunepipe.errors import Position, Problem, SpecError, excerpt_at
from tunepipe.spec.limits import MAX_DEPTH, MAX_NODES, Refused, read_spec

JsonPath = tuple[str | int, ...]
_SHOWN = 10  # characters YAML refuses: each is a problem, up to this many


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


class _Limit(Exception):
    """A bound of what a spec may cost was crossed at ``mark`` (see MAX_DEPTH, MAX_NODES)."""

    def __init__(self, mark: yaml.Mark, message: str, hint: str) -> None:
        super().__init__(message)
        self.mark, self.message, self.hint = mark, message, hint


class _Loader(Reader, Scanner, Parser, Composer, _Core12Resolver):
    """PyYAML's pure-Python loader, counting while it composes: nesting depth and node count,
    each alias charged with the size and depth of what it stands for, so a bomb stops at once."""

    def __init__(self, stream: str) -> None:
        Reader.__init__(self, stream)
        Scanner.__init__(self)
        Parser.__init__(self)
        Composer.__init__(self)
        _Core12Resolver.__init__(self)
        self._depth = 0
        self._count = 0
        self._heights = [0]  # per open collection: the deepest child so far (levels)
        self._costs: dict[int, tuple[int, int]] = {}  # anchored node -> (nodes, levels) it expands to

    def compose_node(self, parent: Node | None, index: Any) -> Node:
        event = self.peek_event()
        if isinstance(event, AliasEvent):
            node = super().compose_node(parent, index)
            nodes, levels = self._costs.get(id(node), (1, 1))  # a node still open (recursive): reported later
            self._charge(nodes, levels, event.start_mark, alias=True)
            return node
        before = self._count
        self._charge(1, 1, event.start_mark, alias=False)
        self._depth += 1
        self._heights.append(0)
        try:
            node = super().compose_node(parent, index)
        finally:
            levels = self._heights.pop() + 1
            self._depth -= 1
        self._heights[-1] = max(self._heights[-1], levels)
        if event.anchor is not None:
            self._costs[id(node)] = (self._count - before, levels)
        return node

    def _charge(self, nodes: int, levels: int, mark: yaml.Mark, *, alias: bool) -> None:
        """Count ``nodes`` more nodes reaching ``levels`` below the current depth; stop at a bound."""
        self._count += nodes
        self._heights[-1] = max(self._heights[-1], levels)
        if self._depth + levels > MAX_DEPTH:
            if alias:
                raise _Limit(mark, f"this alias nests the document more than {MAX_DEPTH} levels deep",
                             "a pipeline needs a few levels: write the value out, or use fewer nested aliases")
            raise _Limit(mark, f"the YAML nests more than {MAX_DEPTH} levels deep here",
                         "a pipeline needs about ten levels: flatten this value, or keep such data in an "
                         "input file")
        if self._count > MAX_NODES:
            if alias:
                raise _Limit(mark, f"the YAML aliases (*name) expand to more than {MAX_NODES} values",
                             "aliases that repeat aliases grow exponentially (a 'billion laughs'): write the "
                             "values out, or use fewer aliases")
            raise _Limit(mark, f"the file has more than {MAX_NODES} values (keys, values and list items)",
                         "a pipeline file describes stages: keep data in input files and read them with "
                         "`inputs:`")


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
    better = _unclosed(text, err)
    if better is not None:
        pos, problem, hint = _pos(source, better[0]), better[1], better[2]
        return Problem(pos, f"YAML syntax error: {problem}", hint, excerpt_at(text, pos))
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
    elif problem.startswith("expected ','"):
        hint = "separate the items with ',' (one may be missing at the end of the line before)"
    if err.context and err.context not in problem:
        problem = f"{err.context.strip()}: {problem}"
    return Problem(pos, f"YAML syntax error: {problem}", hint, excerpt_at(text, pos))


def _indent(text: str, line: int) -> int:
    """The indentation of a 0-based line (0 past the end)."""
    lines = text.splitlines()
    if line >= len(lines):
        return 0
    return len(lines[line]) - len(lines[line].lstrip(" "))


def _unclosed(text: str, err: yaml.MarkedYAMLError) -> tuple[yaml.Mark, str, str] | None:
    """(mark, message, hint) for a quote, ``{`` or ``[`` left open: PyYAML names the place where
    it gave up (the end of the file, the next key), but the fix is where the value starts."""
    ctx, mark = err.context or "", err.context_mark
    problem = err.problem or ""
    if mark is None or err.problem_mark is None:
        return None
    if ctx.startswith("while scanning a quoted scalar") and "end of stream" in problem:
        lines = text.splitlines()
        quote = lines[mark.line][mark.column] if mark.line < len(lines) and mark.column < len(lines[mark.line]) \
            else '"'
        return (mark, f"the quoted value that starts here is not closed (no closing {quote} before the end "
                      "of the file)",
                f"add the closing {quote}; a quoted value may span lines, so YAML found out only at the end of "
                "the file")
    flow = {"while parsing a flow mapping": ("{", "}", "mapping", "`{data: data.jsonl}`"),
            "while parsing a flow sequence": ("[", "]", "list", "`[a.jsonl, b.jsonl]`")}.get(ctx.strip())
    if flow is None or not problem.startswith("expected ','"):
        return None
    opened, closing, kind, example = flow
    later = err.problem_mark.line > mark.line
    if not later or (_indent(text, err.problem_mark.line) > _indent(text, mark.line)
                     and "<stream end>" not in problem):
        return None  # a missing ',' inside a flow collection that spans lines: the problem mark is right
    return (mark, f"the '{opened}' that starts here is not closed (YAML noticed at line "
                  f"{err.problem_mark.line + 1}, column {err.problem_mark.column + 1})",
            f"close the {kind} with '{closing}' after its last item, e.g. {example}")


def _char_name(ch: str) -> str:
    names = {"\x00": "NUL", "\x1b": "ESC", "\x7f": "DEL", "\x0c": "form feed", "\x0b": "vertical tab",
             "\x08": "backspace"}
    code = ord(ch)
    what = "a non-character" if code in (0xFFFE, 0xFFFF) else \
        "a lone surrogate" if 0xD800 <= code <= 0xDFFF else "the control character"
    return f"{what} U+{code:04X}" + (f" ({names[ch]})" if ch in names else "")


def _unprintable(text: str, source: str) -> list[Problem]:
    """Characters YAML refuses (control characters, U+FFFE/U+FFFF), each at its line and column.

    PyYAML raises a ReaderError with an offset only; the excerpt shows each such character as U+FFFD."""
    found = list(Reader.NON_PRINTABLE.finditer(text))
    if not found:
        return []
    safe = Reader.NON_PRINTABLE.sub("\ufffd", text)
    problems = []
    for m in found[:_SHOWN]:
        lines = (safe[:m.start()] + "x").splitlines()
        pos = Position(source, len(lines), len(lines[-1]))
        ch = m.group(0)
        escape = f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}"
        problems.append(Problem(pos, f"the file contains {_char_name(ch)}, which YAML does not allow",
                                f"delete it (editors may show it as nothing, ^[ or a box); to put it in a value, "
                                f"write it as an escape in double quotes: \"{escape}\"",
                                excerpt_at(safe, pos)))
    if len(found) > _SHOWN:
        problems[-1] = Problem(problems[-1].position, problems[-1].message + f" (and {len(found) - _SHOWN} more "
                               "such characters)", problems[-1].hint, problems[-1].excerpt)
    return problems


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
    unprintable = _unprintable(text, source)
    if unprintable:
        raise SpecError(unprintable)
    loader = _Loader(text)
    try:
        root = loader.get_single_node()
    except _Limit as e:
        pos = _pos(source, e.mark)
        raise SpecError([Problem(pos, e.message, e.hint, excerpt_at(text, pos))]) from None
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
        raw = read_spec(path)
    except FileNotFoundError:
        raise SpecError([Problem(Position(source), "the pipeline file does not exist",
                                 "check the path; pipeline files usually live in pipelines/")]) from None
    except IsADirectoryError:
        raise SpecError([Problem(Position(source), "this is a folder, not a pipeline file",
                                 "name the YAML file itself, e.g. pipelines/sarcasm.yaml")]) from None
    except Refused as e:
        raise SpecError([Problem(Position(source), f"the pipeline file is {e.what}", e.hint)]) from None
    except OSError as e:
        raise SpecError([Problem(Position(source), f"cannot read the pipeline file: {e.strerror}",
                                 "check the file's permissions")]) from None
    return load_text(decode(raw, source), source)
