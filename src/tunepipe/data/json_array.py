"""A top-level JSON array read element by element, streamed: ``(index, bytes)`` of each element.

:func:`iter_array` splits a file into its top-level elements as it reads it: orjson finds where
each element ends ("unexpected content after document" gives the offset), and a small scanner of
strings and brackets (:func:`_scan_element`) takes over for an element orjson cannot read, so
that the caller can reject just that element. Memory holds about one element, not the file.
Brackets that do not balance, or text outside the array, raise :class:`FileProblem`: the whole
file is unreadable. The ``ingest`` readers (:mod:`tunepipe.data.readers`) use it for ``.json`` files.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import IO

from tunepipe.data.blocks import BOM
from tunepipe.data.file_problem import FileProblem

CHUNK = 1 << 20  # bytes read at a time

_OUTSIDE = re.compile(rb'[\[\]{}",]')
_INSIDE = re.compile(rb'["\\]')
_NONSPACE = re.compile(rb"\S")
_OPEN = {ord("["): ord("]"), ord("{"): ord("}")}
_AFTER_VALUE = "unexpected content after document"


class _Buffer:
    """The unread part of a stream, grown chunk by chunk; ``base`` is the stream offset of ``data[0]``."""

    def __init__(self, f: IO[bytes], size: int) -> None:
        self.f, self.size = f, size
        self.data = bytearray()
        self.base = 0
        self.eof = False

    def more(self) -> bool:
        if not self.eof:
            chunk = self.f.read(self.size)
            if chunk:
                self.data += chunk
                return True
            self.eof = True
        return False

    def drop(self, upto: int) -> None:
        del self.data[:upto]
        self.base += upto

    def skip_space(self, pos: int) -> int:
        """The index of the next byte that is not white space, or ``len(data)`` at the end of the stream."""
        while (m := _NONSPACE.search(self.data, pos)) is None:
            if not self.more():
                return len(self.data)
        return m.start()


def iter_array(f: IO[bytes], chunk_size: int = CHUNK) -> Iterator[tuple[int, bytes]]:
    """``(index, bytes)`` of each element of the top-level JSON array in ``f``, streamed.

    Memory holds about one element. Fast path: orjson parses from an element's start and says where
    that value ends ("unexpected content after document"); an element it cannot parse is delimited
    by :func:`_scan_element` (strings and brackets only), so that the caller can reject just that
    element. An empty element (``[1,,2]``, a trailing comma) comes out as ``b""``.
    """
    buf = _Buffer(f, chunk_size)
    while len(buf.data) < len(BOM) and buf.more():
        pass
    if buf.data.startswith(BOM):
        buf.drop(len(BOM))
    pos = buf.skip_space(0)
    if pos == len(buf.data):
        return  # an empty file
    if buf.data[pos] != ord("["):
        what = buf.data[pos:pos + 1].decode("latin-1")
        raise FileProblem(f"expected a JSON array of records ('[' first), found {what!r} at byte {buf.base + pos}; "
                          "write the records as [{...}, {...}] or as JSON Lines")
    pos = buf.skip_space(pos + 1)
    index = 0
    if pos < len(buf.data) and buf.data[pos] == ord("]"):
        return _after_array(buf, pos + 1)
    guess = 0
    while True:
        end = _element_end(buf, pos, index, 2 * guess)
        guess = end - pos
        with memoryview(buf.data) as view:
            element = bytes(view[pos:end]).strip()
        yield index, element
        pos = buf.skip_space(end)
        if pos == len(buf.data):
            raise FileProblem(f"the JSON array is not closed: the file ends after element {index}; "
                              "check that the file is complete")
        c = buf.data[pos]
        if c == ord("]"):
            return _after_array(buf, pos + 1)
        if c != ord(","):
            raise FileProblem(f"unexpected {chr(c)!r} at byte {buf.base + pos} after element {index} (unbalanced "
                              "brackets?); fix the file's JSON (`python -m json.tool FILE` shows where)")
        index += 1
        pos += 1
        if pos >= buf.size:
            buf.drop(pos)
            pos = 0


def _element_end(buf: _Buffer, start: int, index: int, guess: int) -> int:
    """Where the element starting at ``start`` ends (exclusive, maybe before white space).

    orjson reads a window of about ``guess`` bytes (it checks all it is given, so the window is kept
    near the element's size), grown until the element fits. The same error twice means the element
    itself is not valid JSON: then :func:`_scan_element` finds its end.
    """
    import orjson

    size, last = max(guess, 4096), None
    while True:
        whole = start + size >= len(buf.data)  # the window reaches the end of what was read
        view = memoryview(buf.data)[start:start + size]
        try:
            orjson.loads(view)
            error = None
        except orjson.JSONDecodeError as e:
            error = (e.msg, e.pos)
        finally:
            view.release()
        if error is not None and error[0] == _AFTER_VALUE:
            return start + _byte_offset(buf.data, start, error[1])
        if error is not None and error == last:
            return _scan_element(buf, start, index)
        last = error
        if whole and buf.eof:  # the stream ends inside (or right after) the element
            return len(buf.data) if error is None else _scan_element(buf, start, index)
        size *= 2
        while len(buf.data) < start + size and buf.more():
            pass


def _byte_offset(data: bytearray, start: int, chars: int) -> int:
    """The byte length of the first ``chars`` characters of valid UTF-8 at ``data[start:]``."""
    if data[start:start + chars].isascii():
        return chars
    return len(bytes(data[start:start + 4 * chars]).decode("utf-8", "replace")[:chars].encode("utf-8"))


def _scan_element(buf: _Buffer, start: int, index: int) -> int:
    """The end of the element at ``start``: the next ',' or ']' outside strings and nested brackets."""
    closers = bytearray()
    in_string = escaped = False
    pos = start
    while True:
        n = len(buf.data)
        if pos >= n:
            if not buf.more():
                raise FileProblem(f"the JSON array is not closed: the file ends inside element {index}; "
                                  "check that the file is complete")
            continue
        if escaped:
            pos, escaped = pos + 1, False
            continue
        if in_string:
            m = _INSIDE.search(buf.data, pos)
            if m is None:
                pos = n
            elif buf.data[m.start()] == 0x5C:  # a backslash escapes the next byte, maybe not read yet
                pos = m.start() + 2
                if pos > n:
                    pos, escaped = n, True
            else:
                in_string, pos = False, m.end()
            continue
        m = _OUTSIDE.search(buf.data, pos)
        if m is None:
            pos = n
            continue
        c, at, pos = buf.data[m.start()], m.start(), m.end()
        if c == 0x22:  # "
            in_string = True
        elif c in _OPEN:
            closers.append(_OPEN[c])
        elif not closers and c in (0x2C, 0x5D):  # the ',' or ']' after the element
            return at
        elif c == 0x2C:
            continue
        elif not closers or c != closers[-1]:
            opened = "'['" if not closers or closers[-1] == 0x5D else "'{'"
            raise FileProblem(f"unbalanced brackets: {chr(c)!r} at byte {buf.base + at} (in element {index}) closes "
                              f"{opened}; fix the file's JSON (`python -m json.tool FILE` shows where)")
        else:
            closers.pop()


def _after_array(buf: _Buffer, pos: int) -> None:
    pos = buf.skip_space(pos)
    if pos < len(buf.data):
        raise FileProblem(f"unexpected text after the array's closing ']' at byte {buf.base + pos}; "
                          "a .json file must hold exactly one array (use JSON Lines for many records)")
