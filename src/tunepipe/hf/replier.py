"""The local backend's replier: replies from a trained model, or from its base, on this machine.

Both render prompts through the **trained artifact's tokenizer** (the chat template training
used), so base and tuned see the very same prompt tokens. The model is loaded on the first
:meth:`LocalReplier.reply` (a reply cache that already holds every reply loads nothing) and let go
by :meth:`LocalReplier.close`. :meth:`LocalReplier.stream` hands out one reply as it is generated,
and :meth:`LocalReplier.prompt_tokens` with :meth:`LocalReplier.context_length` let a server refuse
a prompt that does not fit. Settings (the evaluate stage's parameters of the same names):
``device`` (auto, cpu, cuda, mps), ``threads`` (CPU threads for torch; default the run's) and
``batch_size`` (prompts generated together).
"""

from __future__ import annotations

from collections.abc import Generator, Mapping, Sequence
from pathlib import Path
from typing import Any

from tunepipe.modelref import ModelRef
from tunepipe.plugins import StageContext
from tunepipe.replies import Decoding, Done, Prompt, Reply


def base_spec(ref: ModelRef) -> str:
    """What the base model loads from: the folder training used when it is still there, else the
    model spec model.json names."""
    source = ref.get("base_source") or {}
    if source.get("kind") == "folder" and Path(str(source.get("location"))).is_dir():
        return str(source["location"])
    return ref.base_model


class LocalReplier:
    """Replies from ``ref``'s trained model, or with ``base`` from the model it was trained from."""

    def __init__(self, ctx: StageContext, ref: ModelRef, *, base: bool, settings: Mapping[str, Any]) -> None:
        from transformers.utils import logging as hf_logging

        from tunepipe.hf.device import resolve_device

        hf_logging.disable_progress_bar()  # the stage log is a file: no progress bars in it
        self.ctx, self.ref, self.base = ctx, ref, base
        self.role = "base" if base else "tuned"
        self.device = resolve_device(settings.get("device") or "auto")
        self.threads = max(1, int(settings.get("threads") or ctx.threads))
        self.batch_size = int(settings.get("batch_size") or 8)
        self.tokenizer = ref.file("tokenizer", "tokenizer")
        self.name = ref.base_model if base else \
            f"{ref.base_model} fine-tuned ({ref.get('kind', 'lora')}, {ref.name or 'train'})"
        self._model: Any = None
        self._tok: Any = None

    def identity(self) -> dict[str, Any]:
        from tunepipe.cache.digests import folder_digest

        common = {"backend": "local", "batch_size": self.batch_size, "device": self.device}
        if not self.base:
            return {**common, "model": self.ref.digest or folder_digest(self.ref.folder)}
        source = self.ref.get("base_source") or {}
        return {**common, "base": source.get("identity") or base_spec(self.ref),
                "tokenizer": folder_digest(self.tokenizer) if self.tokenizer.is_dir() else None}

    def info(self) -> dict[str, Any]:
        return {"device": self.device, "threads": self.threads}

    def reply(self, prompts: Sequence[Prompt], decoding: Decoding, *, done: Done | None = None) -> list[Reply]:
        from tunepipe.hf.device import cpu_threads
        from tunepipe.hf.generate import generate_local

        out: list[Any] = [None] * len(prompts)

        def keep(i: int, reply: Reply) -> None:
            out[i] = reply
            if done is not None:
                done(i, reply)

        with cpu_threads(self.threads):
            self._load()
            generate_local(self._model, self._tok, prompts, decoding, batch_size=self.batch_size, device=self.device,
                           done=keep, check_cancelled=self.ctx.check_cancelled,
                           progress=lambda n: self.ctx.progress(f"{self.role} {n}/{len(prompts)} replies"))
        return out

    def stream(self, prompt: Prompt, decoding: Decoding) -> Generator[str, None, Reply]:
        """The reply's text in pieces as it is generated (they join to ``reply([prompt])``'s text);
        the generator returns the :class:`Reply`. Closing it stops generation at the next token."""
        from tunepipe.hf.device import cpu_threads
        from tunepipe.hf.generate import stream_local

        with cpu_threads(self.threads):
            self._load()
            return (yield from stream_local(self._model, self._tok, prompt, decoding, device=self.device))

    def prompt_tokens(self, prompt: Prompt) -> int:
        """How many tokens ``prompt`` renders to (before any truncation), so that a server can refuse
        one that does not fit :meth:`context_length`. Loads only the tokenizer when the model is not
        loaded; only reads it, so it may run while another thread generates."""
        from tunepipe.hf.generate import prompt_ids
        from tunepipe.hf.models import load_tokenizer

        tok = self._tok
        if tok is None:
            tok = self._tok = load_tokenizer(self.tokenizer)
        return len(prompt_ids(tok, prompt))

    def context_length(self) -> int | None:
        """The model's context in tokens (prompt and reply together), None when its config does
        not say; loads the model."""
        from tunepipe.hf.generate import context_length

        self._load()
        return context_length(self._model)

    def close(self) -> None:
        from tunepipe.hf.generate import release

        if self._model is not None:
            self._model = self._tok = None
            release()

    def _load(self) -> None:
        if self._model is not None:
            return
        from tunepipe.hf.models import load_base, load_model, load_tokenizer

        self.ctx.progress(f"loading the {self.role} model")
        shared = self.ctx.shared("models")
        if self.base:
            self._model, _ = load_base(base_spec(self.ref), shared, device=self.device)
            self._tok = load_tokenizer(self.tokenizer)  # the artifact's template: the same prompts as tuned
        else:
            self._model, self._tok = load_model(self.ref.folder, shared, device=self.device)
