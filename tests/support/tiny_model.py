"""A tiny random Llama model on the REAL SmolLM2 tokenizer (and its chat template), for fast tests.

``tiny_model_dir(tmp_path_factory)`` builds it once per test session (the tokenizer is read from
the packaged GGUF: ~10 s) into a temporary folder and returns the folder, a normal Hugging Face
model folder (``config.json``, ``model.safetensors``, tokenizer files) that the local backend
takes as ``model: <folder>``. 2 layers, hidden size 64: ~3.2 M parameters, mostly the embedding
of the 49,152-token vocabulary; 20 LoRA steps take well under a second on one thread.

Use it from a fixture::

    @pytest.fixture(scope="session")
    def tiny_model(tmp_path_factory):
        return tiny_model_dir(tmp_path_factory)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

TINY = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "max_position_embeddings": 2048}

_BUILT: dict[str, Path] = {}


def smollm2_tokenizer() -> Any:
    """The real SmolLM2-135M-Instruct tokenizer from the packaged GGUF (offline)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from tunepipe.data.models import tokenizer_source

    return tokenizer_source("smollm2-135m-instruct").load()


def build_tiny_model(folder: Path, tok: Any | None = None, seed: int = 0, **overrides: Any) -> Path:
    """Write a random tiny LlamaForCausalLM with the SmolLM2 tokenizer into ``folder``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = tok if tok is not None else smollm2_tokenizer()
    config = LlamaConfig(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id, tie_word_embeddings=True, **{**TINY, **overrides})
    generator_state = torch.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = LlamaForCausalLM(config)
    finally:
        torch.set_rng_state(generator_state)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    return folder


def _cache_key() -> str:
    import hashlib
    import importlib.metadata
    import json

    from tunepipe.data.models import packaged_model_file

    gguf = packaged_model_file("smollm2-135m-instruct")
    st = gguf.stat()
    parts = [TINY, str(gguf), st.st_size, st.st_mtime_ns, importlib.metadata.version("transformers"),
             importlib.metadata.version("torch"), _source_digest()]
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _source_digest() -> str:
    import hashlib

    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()


def tiny_model_dir(tmp_path_factory: Any, cache: Path | None = None) -> Path:
    """The tiny model's folder, built once per session (pytest's ``tmp_path_factory``).

    ``cache``: a folder kept between sessions (e.g. ``request.config.cache.mkdir("tunepipe-hf")``):
    the model is built there once for this tokenizer, transformers and torch and this file, and
    reused (reading the tokenizer from the GGUF costs ~10 s). Built in a temporary folder and renamed.
    """
    if "tiny" in _BUILT:
        return _BUILT["tiny"]
    if cache is None:
        _BUILT["tiny"] = build_tiny_model(tmp_path_factory.mktemp("tiny-model"))
        return _BUILT["tiny"]
    import shutil
    import tempfile

    dest = Path(cache) / f"tiny-model-{_cache_key()}"
    if not (dest / "config.json").is_file():
        tmp = Path(tempfile.mkdtemp(prefix=".tiny-model.", dir=cache))
        try:
            build_tiny_model(tmp)
            os.rename(tmp, dest)
        except OSError:  # another session renamed its copy first
            shutil.rmtree(tmp, ignore_errors=True)
            if not (dest / "config.json").is_file():
                raise
    _BUILT["tiny"] = dest
    return dest
