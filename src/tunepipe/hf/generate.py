"""Replies from a local model: batched generation with left padding through the chat template.

The local replier (:mod:`tunepipe.hf.replier`) renders both a trained model's prompts and its
base's with the **trained artifact's tokenizer** (the chat template training used), so base and
tuned see the very same prompt tokens. Decoding is one explicit ``GenerationConfig``
(the model's own generation defaults are not used), and torch's generator is seeded with
``decoding.seed`` before each side, so both sides decode alike. ``temperature: 0`` is greedy.

Prompts are sorted by length (longest first: an out-of-memory error shows on the first batch) and
batched ``batch_size`` at a time; a prompt longer than the model's context minus ``max_new_tokens``
keeps its last tokens (counted as ``truncated_prompt``).

:func:`stream_local` generates one reply in pieces as its tokens come, with the same configuration,
stop tokens and truncation, so its pieces join to the text generate_local gives that prompt alone.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Generator, Sequence
from typing import Any

from tunepipe.errors import StageInputError
from tunepipe.replies import Decoding, Prompt, Reply


def render_prompt(tok: Any, prompt: Prompt) -> str:
    from tunepipe.hf.render import template_message

    kwargs = {"tools": prompt.tools} if prompt.tools else {}
    try:
        return tok.apply_chat_template([template_message(m) for m in prompt.messages], tokenize=False,
                                       add_generation_prompt=True, **kwargs)
    except Exception as e:  # a template's raise_exception, a jinja error
        raise StageInputError(f"{prompt.where or 'a prompt'}: the model's chat template cannot render this "
                              f"prompt: {type(e).__name__}: {e}") from None


def stop_ids(tok: Any, model: Any) -> list[int]:
    """Token ids that end a reply: the tokenizer's end of sequence, the model's, and the chat
    template's end of turn when the vocabulary has one."""
    ids: list[int] = []

    def add(value: Any) -> None:
        if isinstance(value, int):
            ids.append(value)
        elif isinstance(value, (list, tuple)):
            ids.extend(v for v in value if isinstance(v, int))

    add(tok.eos_token_id)
    gen = getattr(model, "generation_config", None)
    if gen is not None:
        add(getattr(gen, "eos_token_id", None))
    vocab = tok.get_vocab()
    for marker in ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>"):
        if marker in vocab:
            ids.append(vocab[marker])
    return list(dict.fromkeys(ids))


def context_length(model: Any) -> int | None:
    cfg = getattr(model, "config", None)
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(cfg, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def generation_config(tok: Any, model: Any, decoding: Decoding) -> tuple[Any, list[int]]:
    """The one explicit ``GenerationConfig`` of ``decoding`` (not the model's own defaults) and the
    ids that end a reply; generate_local and stream_local share it, so both decode alike."""
    from transformers import GenerationConfig

    stops = stop_ids(tok, model)
    pad = tok.pad_token_id if tok.pad_token_id is not None else stops[0] if stops else 0
    config = GenerationConfig(max_new_tokens=decoding.max_new_tokens, do_sample=not decoding.greedy,
                              pad_token_id=pad, eos_token_id=stops or None,
                              **({} if decoding.greedy else {"temperature": decoding.temperature,
                                                             "top_p": decoding.top_p, "top_k": 0}))
    return config, stops


def prompt_ids(tok: Any, prompt: Prompt) -> list[int]:
    """The prompt's tokens as rendered through the chat template (before any truncation)."""
    return tok(render_prompt(tok, prompt), add_special_tokens=False)["input_ids"]


def fitted_ids(ids: list[int], model: Any, decoding: Decoding) -> tuple[list[int], bool]:
    """``ids`` cut to their last tokens when they leave no room for ``max_new_tokens`` in the
    model's context, and whether they were cut."""
    limit = context_length(model)
    room = None if limit is None else max(1, limit - decoding.max_new_tokens)
    if room is not None and len(ids) > room:
        return ids[-room:], True
    return ids, False


def finished_reply(tok: Any, new: Sequence[int], stops: Sequence[int], prompt_tokens: int, seconds: float,
                   truncated: bool) -> Reply:
    """The Reply of generated tokens ``new``: up to the first stop token (counted, not shown)."""
    ended = next((k for k, t in enumerate(new) if t in stops), None)
    kept = list(new) if ended is None else list(new[:ended])
    text = tok.decode(kept, skip_special_tokens=True).strip()
    return Reply(text, prompt_tokens, len(kept) + (0 if ended is None else 1), seconds,
                 "length" if ended is None else "stop", truncated_prompt=truncated)


def generate_local(model: Any, tok: Any, prompts: Sequence[Prompt], decoding: Decoding, *, batch_size: int,
                   device: str, done: Callable[[int, Reply], None],
                   check_cancelled: Callable[[], None] = lambda: None,
                   progress: Callable[[int], None] = lambda _n: None) -> None:
    """Generate a reply for each prompt and hand it to ``done(i, reply)`` (``i``: the prompt's
    position) as each batch finishes (so a caller can keep them for a resume)."""
    import torch

    if not prompts:
        return
    config, stops = generation_config(tok, model, decoding)
    pad = config.pad_token_id
    encoded = [(i, *fitted_ids(prompt_ids(tok, prompt), model, decoding)) for i, prompt in enumerate(prompts)]
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i][1]))
    torch.manual_seed(decoding.seed)
    finished = 0
    for start in range(0, len(order), batch_size):
        check_cancelled()
        batch = [encoded[i] for i in order[start:start + batch_size]]
        width = max(len(ids) for _, ids, _ in batch)
        input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, (_, ids, _) in enumerate(batch):  # left padding: the prompts end where generation starts
            input_ids[row, width - len(ids):] = torch.tensor(ids, dtype=torch.long)
            mask[row, width - len(ids):] = 1
        t0 = time.monotonic()
        with torch.inference_mode():
            out = model.generate(input_ids=input_ids.to(device), attention_mask=mask.to(device),
                                 generation_config=config)
        seconds = time.monotonic() - t0
        for row, (i, ids, truncated) in enumerate(batch):
            done(i, finished_reply(tok, out[row, width:].tolist(), stops, len(ids), seconds, truncated))
        finished += len(batch)
        progress(finished)


def stream_local(model: Any, tok: Any, prompt: Prompt, decoding: Decoding, *,
                 device: str) -> Generator[str, None, Reply]:
    """The reply to ``prompt`` in pieces as its tokens are generated; the generator returns the
    :class:`Reply` (``StopIteration.value``). The pieces join to generate_local's text for this
    prompt alone: the same config, seed, stop tokens and truncation, and ``generate`` itself runs
    (in a thread, handing each token over a queue). Closing the generator stops ``generate`` after
    the token in progress (a stopping criterion) and joins the thread."""
    import torch
    from transformers import StoppingCriteriaList

    config, stops = generation_config(tok, model, decoding)
    ids, truncated = fitted_ids(prompt_ids(tok, prompt), model, decoding)
    tokens: queue.Queue[Any] = queue.Queue()
    stop = threading.Event()

    def work() -> None:
        try:
            torch.manual_seed(decoding.seed)
            with torch.inference_mode():
                model.generate(input_ids=torch.tensor([ids], device=device),
                               attention_mask=torch.ones((1, len(ids)), dtype=torch.long, device=device),
                               generation_config=config, streamer=_Tokens(tokens),
                               stopping_criteria=StoppingCriteriaList([_Until(stop)]))
        except BaseException as e:  # noqa: BLE001 - raised again in the consumer's thread
            tokens.put(e)
        tokens.put(None)

    t0 = time.monotonic()
    thread = threading.Thread(target=work, name="tunepipe-stream", daemon=True)
    thread.start()
    new: list[int] = []
    text = _Text(tok)
    try:
        while (token := tokens.get()) is not None:
            if isinstance(token, BaseException):
                raise token
            new.append(token)
            if token in stops:
                break
            if piece := text.add(token):
                yield piece
    finally:
        stop.set()
        thread.join()
    reply = finished_reply(tok, new, stops, len(ids), time.monotonic() - t0, truncated)
    if rest := text.rest(reply.text):
        yield rest
    return reply


class _Tokens:
    """A ``generate`` streamer that puts each new token id on a queue (the prompt's are skipped)."""

    def __init__(self, out: queue.Queue[Any]) -> None:
        self.out, self.prompt_seen = out, False

    def put(self, value: Any) -> None:
        if self.prompt_seen:
            for token in value.reshape(-1).tolist():
                self.out.put(token)
        self.prompt_seen = True

    def end(self) -> None:
        pass


class _Until:
    """A stopping criterion (``generate`` only calls it): true for every row once ``event`` is set."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


class _Text:
    """The reply's text as tokens come, handed out so that the pieces join to the final stripped
    text: leading whitespace is dropped, trailing whitespace and an unfinished UTF-8 character
    (decoded as U+FFFD) are held back until more text follows."""

    def __init__(self, tok: Any) -> None:
        self.tok, self.kept, self.sent = tok, [], ""

    def add(self, token: int) -> str:
        self.kept.append(token)
        safe = self.tok.decode(self.kept, skip_special_tokens=True).strip().rstrip("\ufffd").rstrip()
        if len(safe) <= len(self.sent) or not safe.startswith(self.sent):
            return ""
        piece, self.sent = safe[len(self.sent):], safe
        return piece

    def rest(self, final: str) -> str:
        """What is left of ``final`` (the Reply's text) after the pieces sent."""
        return final[len(self.sent):] if final.startswith(self.sent) else ""


def release() -> None:
    """Collect a dropped model (and its GPU memory) before the next one loads."""
    import gc

    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:  # pragma: no cover
        pass
