"""An Ollama ``Modelfile`` for an exported GGUF, its TEMPLATE translated from the chat template.

Jinja chat templates cannot be translated in general, so this recognizes families by behaviour:
the tokenizer's own template renders a few probe conversations, and a family is chosen only when
its reference rendering gives the very same text for all of them (ChatML, as SmolLM2 uses, and
Llama 3). A template that renders a default system prompt when none is given (SmolLM2's does) gets
it in the Go template too. Anything else raises :class:`Untranslatable`: the GGUF still works in
llama.cpp, which reads the Jinja template from the file itself.

Ollama hands the template all messages, system ones included, and ``.System`` (all system texts
joined, or the Modelfile's SYSTEM when the request has none), so the messages are rendered in
order and ``.System`` only tells whether a default system prompt is due.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from tunepipe.errors import UserError

Message = dict[str, str]
Render = Callable[[Sequence[Message], bool], str]  # (messages, add_generation_prompt) -> text

_S, _U, _A, _U2 = "SYS-7f3a", "USER-7f3a", "ASSISTANT-7f3a", "AGAIN-7f3a"
PROBES: tuple[tuple[tuple[Message, ...], bool], ...] = (
    (({"role": "system", "content": _S}, {"role": "user", "content": _U}), True),
    (({"role": "user", "content": _U},), True),
    (({"role": "system", "content": _S}, {"role": "user", "content": _U}, {"role": "assistant", "content": _A},
      {"role": "user", "content": _U2}), True),
    (({"role": "user", "content": _U}, {"role": "assistant", "content": _A}), False),
)


class Untranslatable(Exception):
    """The chat template matches no family this module can write as an Ollama template."""


@dataclass(frozen=True)
class Family:
    """A chat format: how one message and the generation prompt are rendered, and where a turn ends."""

    name: str
    turn: str  # with {role} and {content}
    generation: str  # what add_generation_prompt appends
    stop: str  # the end-of-turn token
    system_block: str  # how a (default) system message is rendered: turn with role system


def _family(name: str, start: str, middle: str, end: str) -> Family:
    turn = f"{start}{{role}}{middle}{{content}}{end}"
    return Family(name, turn, f"{start}assistant{middle}", end.strip(), turn.replace("{role}", "system"))


FAMILIES = (
    _family("chatml", "<|im_start|>", "\n", "<|im_end|>\n"),
    _family("llama3", "<|start_header_id|>", "<|end_header_id|>\n\n", "<|eot_id|>"),
)


@dataclass(frozen=True)
class ChatFormat:
    """A recognized template: its family, the default system prompt it adds (or None), and a
    literal prefix it starts with (a BOS text the tokenizer does not add itself)."""

    family: Family
    default_system: str | None
    prefix: str = ""


def reference(fmt: ChatFormat, messages: Sequence[Message], generation: bool) -> str:
    """What a template of this format renders."""
    f = fmt.family
    text = fmt.prefix
    if fmt.default_system is not None and (not messages or messages[0]["role"] != "system"):
        text += f.system_block.format(content=fmt.default_system)
    text += "".join(f.turn.format(role=m["role"], content=m["content"]) for m in messages)
    return text + (f.generation if generation else "")


def recognize(render: Render, prefix: str = "") -> ChatFormat:
    """The format of the template behind ``render``; ``prefix``: a literal start the template may
    render (the BOS text). Raises Untranslatable with the reason."""
    try:
        rendered = [render(list(messages), gen) for messages, gen in PROBES]
    except Exception as e:  # a template that refuses a probe (e.g. no system role) is not ours
        raise Untranslatable(f"the chat template failed on a plain conversation ({e})") from None
    for family in FAMILIES:
        for start in dict.fromkeys(("", prefix)):
            fmt = _with_default(family, start, rendered[1])
            if fmt and all(reference(fmt, list(m), g) == r for (m, g), r in zip(PROBES, rendered)):
                return fmt
    raise Untranslatable("the chat template is neither ChatML nor Llama 3 (compared by rendering sample "
                         "conversations)")


def _with_default(family: Family, prefix: str, user_only: str) -> ChatFormat | None:
    """The format whose default system prompt explains how the template rendered a lone user turn."""
    plain = ChatFormat(family, None, prefix)
    if reference(plain, [{"role": "user", "content": _U}], True) == user_only:
        return plain
    before, _, after = family.system_block.partition("{content}")
    found = re.match(re.escape(prefix + before) + "(.*?)" + re.escape(after), user_only, re.S)
    return ChatFormat(family, found.group(1), prefix) if found else None


# --- the Modelfile ---------------------------------------------------------------------------------

def go_template(fmt: ChatFormat) -> str:
    """The Ollama (Go text/template) TEMPLATE of a format."""
    f = fmt.family
    turn = f.turn.format(role="{{ .Role }}", content="{{ .Content }}")
    text = fmt.prefix
    if fmt.default_system is not None:
        _check_literal(fmt.default_system, "the chat template's default system prompt")
        text += "{{- if not .System }}" + f.system_block.format(content=fmt.default_system) + "{{ end }}"
    return text + "{{- range .Messages }}" + turn + "{{ end }}" + f.generation


def _check_literal(text: str, what: str) -> None:
    if "{{" in text or "}}" in text or '"""' in text:
        raise Untranslatable(f'{what} contains {{{{, }}}} or """, which a Modelfile cannot hold as text')


def modelfile(gguf_name: str, tok: Any, system: str | None = None) -> str:
    """The Modelfile text for ``gguf_name`` (beside it) and the tokenizer's chat template.
    Untranslatable when the template is missing or unknown; a UserError for a system prompt that
    a Modelfile cannot quote."""
    if not isinstance(getattr(tok, "chat_template", None), str):
        raise Untranslatable("the tokenizer has no chat template")
    if system is not None and '"""' in system:
        raise UserError('system: a Modelfile quotes the system prompt in """ ... """, so the prompt cannot '
                        'contain """; rephrase it')

    def render(messages: Sequence[Message], generation: bool) -> str:
        return tok.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=generation)

    fmt = recognize(render, tok.bos_token if isinstance(tok.bos_token, str) else "")
    if fmt.prefix and _adds_bos(tok):  # llama.cpp adds BOS itself (add_bos_token in the GGUF)
        fmt = replace(fmt, prefix="")
    lines = [f"FROM ./{gguf_name}", f'TEMPLATE """{go_template(fmt)}"""', f'PARAMETER stop "{fmt.family.stop}"']
    if system:
        lines.append(f'SYSTEM """{system}"""')
    return "\n".join(lines) + "\n"


def _adds_bos(tok: Any) -> bool:
    ids = tok("a")["input_ids"]
    return bool(ids) and ids[0] == tok.bos_token_id
