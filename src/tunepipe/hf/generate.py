"""Replies from a local model: batched generation with left padding through the chat template.

The local replier (:mod:`tunepipe.hf.replier`) renders both a trained model's prompts and its
base's with the **trained artifact's tokenizer** (the chat template training used), so base and
tuned see the very same prompt tokens. Decoding is one explicit ``GenerationConfig``
(the model's own generation defaults are not used), and torch's generator is seeded with
``decoding.seed`` before each side, so both sides decode alike. ``temperature: 0`` is greedy.

Prompts are sorted by length (longest first: an out-of-memory error shows on the first batch) and
batched ``batch_size`` at a time; a prompt longer than the model's context minus ``max_new_tokens``
keeps its last tokens (counted as ``truncated_prompt``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
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


def generate_local(model: Any, tok: Any, prompts: Sequence[Prompt], decoding: Decoding, *, batch_size: int,
                   device: str, done: Callable[[int, Reply], None],
                   check_cancelled: Callable[[], None] = lambda: None,
                   progress: Callable[[int], None] = lambda _n: None) -> None:
    """Generate a reply for each prompt and hand it to ``done(i, reply)`` (``i``: the prompt's
    position) as each batch finishes (so a caller can keep them for a resume)."""
    import torch
    from transformers import GenerationConfig

    if not prompts:
        return
    stops = stop_ids(tok, model)
    pad = tok.pad_token_id if tok.pad_token_id is not None else stops[0] if stops else 0
    config = GenerationConfig(max_new_tokens=decoding.max_new_tokens, do_sample=not decoding.greedy,
                              pad_token_id=pad, eos_token_id=stops or None,
                              **({} if decoding.greedy else {"temperature": decoding.temperature,
                                                             "top_p": decoding.top_p, "top_k": 0}))
    limit = context_length(model)
    room = None if limit is None else max(1, limit - decoding.max_new_tokens)
    encoded: list[tuple[int, list[int], bool]] = []
    for i, prompt in enumerate(prompts):
        ids = tok(render_prompt(tok, prompt), add_special_tokens=False)["input_ids"]
        truncated = room is not None and len(ids) > room
        encoded.append((i, ids[-room:] if truncated and room else ids, truncated))
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
            new = out[row, width:].tolist()
            ended = next((k for k, t in enumerate(new) if t in stops), None)
            kept = new if ended is None else new[:ended]
            text = tok.decode(kept, skip_special_tokens=True).strip()
            done(i, Reply(text, len(ids), len(kept) + (0 if ended is None else 1), seconds,
                                 "length" if ended is None else "stop", truncated_prompt=truncated))
        finished += len(batch)
        progress(finished)


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
