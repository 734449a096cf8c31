"""The OpenAI backend's replier: chat completions from a fine-tuned model or its base.

Settings (the evaluate stage's ``openai:`` block): ``api_key_env``, ``base_url``, ``concurrency``
(requests in flight) and ``max_retries`` (see :mod:`tunepipe.openai_ft.chat` for the two layers
of retries). The client is made on the first :meth:`OpenAIReplier.reply`, so a missing key is
only an error when something must be asked.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from tunepipe.modelref import ModelRef
from tunepipe.openai_ft.chat import Endpoint
from tunepipe.plugins import StageContext
from tunepipe.replies import Decoding, Done, Prompt, Reply

DEFAULTS = {"api_key_env": "OPENAI_API_KEY", "base_url": None, "concurrency": 4, "max_retries": 5}


class OpenAIReplier:
    """Replies from ``ref``'s fine-tuned model, or with ``base`` from the model it was tuned from.
    ``http_client``: an ``openai.DefaultHttpxClient`` for every request (a proxy; tests inject faults)."""

    def __init__(self, ctx: StageContext, ref: ModelRef, *, base: bool, settings: Mapping[str, Any],
                 http_client: Any = None) -> None:
        self.ctx, self.http_client = ctx, http_client
        self.role = "base" if base else "tuned"
        self.endpoint = Endpoint.from_params({**DEFAULTS, **(settings.get("openai") or {})})
        self.name = self.model = ref.base_model if base else str(ref.get("fine_tuned_model"))
        self._client: Any = None

    def identity(self) -> dict[str, Any]:
        return {"backend": "openai", "model": self.model, "endpoint": self.endpoint.label()}

    def info(self) -> dict[str, Any]:
        return {"endpoint": self.endpoint.label(), "concurrency": self.endpoint.concurrency}

    def reply(self, prompts: Sequence[Prompt], decoding: Decoding, *, done: Done | None = None) -> list[Reply]:
        from tunepipe.openai_ft.chat import Caller, chat_request, complete_all

        ctx = self.ctx
        self._client = self._client or self.endpoint.client(self.http_client)
        out: list[Any] = [None] * len(prompts)

        def keep(i: int, reply: Reply) -> None:
            out[i] = reply
            if done is not None:
                done(i, reply)

        complete_all(Caller(self._client, self.endpoint, ctx.stage, lambda: ctx.cancelled), self.endpoint,
                     [(i, chat_request(p, self.model, decoding)) for i, p in enumerate(prompts)],
                     stage=ctx.stage, doing=f"asking {self.model} ({self.role}) for replies", done=keep,
                     check_cancelled=ctx.check_cancelled,
                     progress=lambda n: ctx.progress(f"{self.role} {n}/{len(prompts)} replies"))
        return out

    def stream(self, prompt: Prompt, decoding: Decoding) -> Iterator[str]:
        """The reply's text as the API streams it (``stream: true``): a chat shows each piece as it
        arrives. An API error becomes what it means (a refused key or request: the user's to fix)."""
        from tunepipe.openai_ft.chat import chat_request
        from tunepipe.openai_ft.client import fail

        self._client = self._client or self.endpoint.client(self.http_client)
        doing = f"asking {self.model} ({self.role}) for a reply"
        try:
            chunks = self._client.chat.completions.create(**chat_request(prompt, self.model, decoding), stream=True)
            for chunk in chunks:
                for choice in chunk.choices or ():
                    text = getattr(choice.delta, "content", None)
                    if text:
                        yield text
        except Exception as e:  # noqa: BLE001 - each SDK error is translated by fail()
            fail(e, doing=doing, stage=self.ctx.stage, settings=self.endpoint.settings(self.model))

    def close(self) -> None:
        self._client = None
