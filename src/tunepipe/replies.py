"""Replies to chat prompts: the contract of a backend's replier.

A backend's ``replier(...)`` (see :class:`tunepipe.backends.contract.Backend`) gives a
:class:`Replier` for one model (a trained model or its base): the evaluate stage asks it for the
replies of both sides, and the same object is what a chat or a server would ask. It replies to a
batch of prompts under one :class:`Decoding`, and may stream one reply as it is generated.

Nothing here imports a library: the value types are plain dataclasses, and a replier loads its
model (or opens its connection) on the first :meth:`Replier.reply`, not when it is made.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True)
class Decoding:
    """How replies are generated; the same for every prompt of a batch. ``temperature: 0`` is greedy."""

    max_new_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0

    @classmethod
    def from_params(cls, p: Mapping[str, Any]) -> Decoding:
        return cls(int(p["max_new_tokens"]), float(p["temperature"]), float(p["top_p"]), int(p["seed"]))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def as_dict(self) -> dict[str, Any]:
        return {"max_new_tokens": self.max_new_tokens, "temperature": self.temperature, "top_p": self.top_p,
                "seed": self.seed, "strategy": "greedy" if self.greedy else "sampling"}


@dataclass(frozen=True)
class Prompt:
    """What a model is asked: OpenAI-style chat ``messages`` (and ``tools``), ending where the reply
    starts. ``where`` names it in messages (``"examples record 12"``)."""

    messages: list[dict[str, Any]]
    tools: list[Any] | None = None
    where: str = ""


@dataclass
class Reply:
    """One generated reply and what it cost. ``latency_s``: local, the time of the batch it came in;
    remote, from the first request to the answer (retries included). ``finish``: stop (an end of
    turn), length (``max_new_tokens`` reached), error (the request was refused: ``extra["error"]``
    says why) or what a remote API said."""

    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0
    finish: str = "stop"
    retries: int = 0
    truncated_prompt: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        out = {"text": self.text, "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
               "latency_s": round(self.latency_s, 4), "finish": self.finish, "retries": self.retries,
               "truncated_prompt": self.truncated_prompt}
        out.update(self.extra)
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Reply:
        known = {"text", "prompt_tokens", "completion_tokens", "latency_s", "finish", "retries", "truncated_prompt"}
        return cls(**{k: d[k] for k in known if k in d}, extra={k: v for k, v in d.items() if k not in known})


Done = Callable[[int, Reply], None]


@runtime_checkable
class Replier(Protocol):
    """Replies from one model.

    Attributes and methods:
        name: what reports call the model (``gpt-4o-mini-2024-07-18``, ``X fine-tuned (lora, train.model)``).
        identity(): what decides its replies besides the prompts and the decoding (the model's
            digest or name, the endpoint, batching that changes numerics); replies are cached
            under it, so two repliers with the same identity must give the same replies.
        info(): how it generates, for reports (``device``/``threads``, or ``endpoint``/``concurrency``).
        reply(prompts, decoding, done=None): a reply for each prompt, in order. ``done(i, reply)``
            is called as each is ready (any order), so a caller can keep them and resume after a
            crash. It loads the model (or opens the connection) on its first call.
        close(): let go of the model (and its memory); a later ``reply`` loads it again.

    Optional (looked up with ``getattr``; use :func:`stream`): ``stream(prompt, decoding) ->
    Generator[str, None, Reply | None]``, the reply's text in pieces as it is generated (returning
    the whole :class:`Reply` at the end when it can: finish reason and token counts).
    """

    name: str

    def identity(self) -> dict[str, Any]:
        ...

    def info(self) -> dict[str, Any]:
        ...

    def reply(self, prompts: Sequence[Prompt], decoding: Decoding, *, done: Done | None = None) -> list[Reply]:
        ...

    def close(self) -> None:
        ...


def stream(replier: Replier, prompt: Prompt, decoding: Decoding) -> Generator[str, None, Reply | None]:
    """The reply's text in pieces: the replier's own ``stream`` when it has one, else the whole
    reply as one piece. The generator returns the :class:`Reply` when the replier's stream does
    (its finish reason and token counts), else None."""
    own = getattr(replier, "stream", None)
    if callable(own):
        return (yield from own(prompt, decoding))
    (reply,) = replier.reply([prompt], decoding)
    if reply.text:
        yield reply.text
    return reply
