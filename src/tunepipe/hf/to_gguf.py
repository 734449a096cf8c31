"""Write a (merged) Llama-architecture causal LM and its byte-level BPE tokenizer as one GGUF file.

The ``gguf`` package has the writer, the constants, the HF -> GGUF tensor names and the quantizers,
but not llama.cpp's ``convert_hf_to_gguf.py``; this is the part of that converter our models need,
done the same way so that llama.cpp (and Ollama, LM Studio) and transformers' GGUF loader read it:

* Q and K projections are permuted per head (llama.cpp's rotary layout; K with the KV head count);
  transformers undoes exactly this on load, so a missing permutation shows as garbage logits.
* tied embeddings (SmolLM2): no ``output.weight``; llama.cpp then reuses ``token_embd`` and
  transformers sets ``tie_word_embeddings`` from its absence.
* 1-D tensors and norms stay F32; Q8_0 only for matrices whose rows are a multiple of 32 (others
  fall back to F16, as the converter does).
* ``tokenizer.ggml.pre`` names llama.cpp's pre-tokenizer, found as llama.cpp finds it: by hashing
  the tokenization of a fixed text (``get_vocab_base_pre``). An unknown hash is refused, since a
  wrong pre-tokenizer silently splits text differently from training.

Measured on SmolLM2-135M-Instruct with a LoRA adapter merged in, read back by transformers: max
|logit difference| F16 0.035-0.058, Q8_0 0.75-0.84 of logits up to 40 (same 16 greedy tokens); 258 MiB
(F16), 138 MiB (Q8_0).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunepipe.errors import UserError

QUANTS = ("q8_0", "f16", "f32")  # what `quantize` may be; q8_0 is the default
CONVERT_HINT = ("export the model as `merged` and convert that folder with llama.cpp's convert_hf_to_gguf.py "
                "(https://github.com/ggml-org/llama.cpp)")

# llama.cpp's check text and the pre-tokenizers it names by the sha256 of the token ids
# (convert_hf_to_gguf.py, get_vocab_base_pre); only the byte-level ones Llama-architecture models use.
_CHECK_TEXT = (
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis concatenated) ✅ "
    "🦙🦙 3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ "
    "------======= нещо на Български ''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, 'RE you "
    "sure? 'M not sure I'll make it, 'D you like some tea? We'Ve a'lL"
)
_PRE_TOKENIZERS = {
    "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249": "smollm",  # HuggingFaceTB/SmolLM(2)
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",  # Llama 3
    "3ce83efda5659b07b1ad37ca97ca5797ea4285d9b9ab0dc679e4a720c9da7454": "gpt-2",
}


@dataclass(frozen=True)
class GGUFWritten:
    """What :func:`write_gguf` wrote: the file, its quantization, tensor counts per type, bytes."""

    path: Path
    quant: str
    tensor_types: dict[str, int]
    size: int


def check_quant(quant: str | None) -> str:
    """The quantization name, lower case; a UserError for one we do not write."""
    name = (quant or "q8_0").lower()
    if name not in QUANTS:
        raise UserError(f"quantize: {quant!r} is not supported for GGUF export; use one of {', '.join(QUANTS)} "
                        f"(for other types such as q4_k_m, {CONVERT_HINT} and llama-quantize)")
    return name


def write_gguf(model: Any, tok: Any, path: Path, quant: str = "q8_0", *, name: str = "",
               license: str | None = None) -> GGUFWritten:
    """Write ``model`` (a transformers Llama causal LM, float weights) and ``tok`` (a fast byte-level
    BPE tokenizer, with its chat template) to ``path``, through a temporary file beside it."""
    import gguf

    quant = check_quant(quant)
    cfg = model.config
    _check_architecture(cfg)
    writer = gguf.GGUFWriter(None, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    writer.add_type(gguf.GGUFType.MODEL)
    if name:
        writer.add_name(name)
    if license:
        writer.add_license(license)
    _add_hparams(writer, cfg, quant)
    _add_tokenizer(writer, tok, cfg.vocab_size)
    types = _add_tensors(writer, model, quant)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        writer.write_header_to_file(tmp)
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, path)
    finally:
        writer.close()
        tmp.unlink(missing_ok=True)
    return GGUFWritten(path, quant, dict(types), path.stat().st_size)


# --- model -----------------------------------------------------------------------------------------

def _rope(cfg: Any) -> tuple[float, str, float | None]:
    """(theta, scaling type, factor) from a transformers 5 ``rope_parameters`` or older config."""
    params = dict(getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {})
    theta = params.get("rope_theta", getattr(cfg, "rope_theta", None) or 10000.0)
    kind = params.get("rope_type") or params.get("type") or "default"
    return float(theta), str(kind), params.get("factor")


def _check_architecture(cfg: Any) -> None:
    arch = getattr(cfg, "model_type", None)
    if arch != "llama":
        raise UserError(f"GGUF export writes the llama architecture only; this model is {arch!r}: {CONVERT_HINT}")
    kind = _rope(cfg)[1]
    if kind not in ("default", "linear"):
        raise UserError(f"GGUF export does not write {kind!r} rope scaling: {CONVERT_HINT}")


def _add_hparams(writer: Any, cfg: Any, quant: str) -> None:
    import gguf

    heads = cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    theta, kind, factor = _rope(cfg)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(heads)
    writer.add_head_count_kv(getattr(cfg, "num_key_value_heads", None) or heads)
    writer.add_rope_freq_base(theta)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_vocab_size(cfg.vocab_size)
    writer.add_rope_dimension_count(head_dim)
    if kind == "linear" and factor:
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(factor))
    file_types = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                  "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}
    writer.add_file_type(file_types[quant])


def permute(w: Any, n_head: int, n_head_kv: int | None = None) -> Any:
    """llama.cpp's rotary reordering of a Q (or, with ``n_head_kv``, K) weight or bias, per head."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _tensors(model: Any) -> Iterator[tuple[str, Any]]:
    """(HF name, float32 numpy array) of the weights to write: the output head left out when it is
    the input embedding itself, Q and K permuted."""
    import torch

    cfg = model.config
    heads, kv = cfg.num_attention_heads, getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    out_emb, in_emb = model.get_output_embeddings(), model.get_input_embeddings()
    tied = out_emb is not None and out_emb.weight.data_ptr() == in_emb.weight.data_ptr()
    for hf_name, t in model.state_dict().items():
        if tied and hf_name == "lm_head.weight":
            continue
        data = t.detach().to(device="cpu", dtype=torch.float32).numpy()
        if hf_name.endswith(("q_proj.weight", "q_proj.bias")):
            data = permute(data, heads, heads)
        elif hf_name.endswith(("k_proj.weight", "k_proj.bias")):
            data = permute(data, heads, kv)
        yield hf_name, data


def _qtype(gguf_name: str, data: Any, quant: str) -> Any:
    """The ggml type of one tensor, as llama.cpp's converter picks it."""
    from gguf import GGMLQuantizationType as Q

    if data.ndim <= 1 or gguf_name.endswith("_norm.weight") or quant == "f32":
        return Q.F32
    if quant == "q8_0" and data.shape[-1] % 32 == 0:
        return Q.Q8_0
    return Q.F16


def _add_tensors(writer: Any, model: Any, quant: str) -> Counter[str]:
    import gguf

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, model.config.num_hidden_layers)
    types: Counter[str] = Counter()
    for hf_name, data in _tensors(model):
        gguf_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise UserError(f"GGUF export: the tensor {hf_name} has no llama GGUF name: {CONVERT_HINT}")
        qtype = _qtype(gguf_name, data, quant)
        writer.add_tensor(gguf_name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)
        types[qtype.name] += 1
    return types


# --- tokenizer -------------------------------------------------------------------------------------

def _backend(tok: Any) -> dict[str, Any]:
    """The tokenizer's tokenizer.json as a dict; a UserError unless it is byte-level BPE."""
    backend = getattr(tok, "backend_tokenizer", None)
    spec = json.loads(backend.to_str()) if backend is not None else {}
    model = spec.get("model") or {}
    if model.get("type") != "BPE" or "ByteLevel" not in json.dumps(spec.get("pre_tokenizer")):
        raise UserError(f"GGUF export writes byte-level BPE tokenizers (GPT-2 style, as SmolLM2 and Llama 3 "
                        f"use) only; this one is {model.get('type') or type(tok).__name__}: {CONVERT_HINT}")
    return spec


def pre_tokenizer(tok: Any) -> str:
    """llama.cpp's name for the tokenizer's pre-tokenizer (``tokenizer.ggml.pre``)."""
    digest = hashlib.sha256(str(tok.encode(_CHECK_TEXT)).encode()).hexdigest()
    if digest not in _PRE_TOKENIZERS:
        raise UserError(f"GGUF export: llama.cpp's pre-tokenizer for this tokenizer is not known here (check "
                        f"hash {digest[:16]}...; known: {', '.join(sorted(_PRE_TOKENIZERS.values()))}): "
                        f"{CONVERT_HINT}")
    return _PRE_TOKENIZERS[digest]


def _looks_special(token: str) -> bool:
    return token.startswith("<|") and token.endswith("|>")


def _vocabulary(tok: Any, size: int) -> tuple[list[str], list[int]]:
    """Tokens by id and their GGUF types: added special ones CONTROL, other added ones USER_DEFINED,
    ids the tokenizer lacks ``[PADn]`` UNUSED (as llama.cpp's converter writes them)."""
    from gguf import TokenType

    vocab = tok.get_vocab()
    if max(vocab.values()) >= size:
        raise UserError(f"GGUF export: the tokenizer has ids up to {max(vocab.values())} but the model's vocabulary "
                        f"is {size}; the tokenizer does not belong to this model")
    by_id = {i: t for t, i in vocab.items()}
    added = getattr(tok, "added_tokens_decoder", {}) or {}
    tokens, types = [], []
    for i in range(size):
        token = by_id.get(i)
        if token is None:
            tokens.append(f"[PAD{i}]")
            types.append(TokenType.UNUSED)
        elif i in added:
            tokens.append(token)
            types.append(TokenType.CONTROL if added[i].special or _looks_special(token) else TokenType.USER_DEFINED)
        else:
            tokens.append(token)
            types.append(TokenType.NORMAL)
    return tokens, [int(t) for t in types]


def _merges(spec: dict[str, Any]) -> list[str]:
    """``"a b"`` merges; a space inside a part written as U+0120 + 256, as gguf's SpecialVocab does."""
    out = []
    for merge in spec["model"].get("merges") or []:
        if isinstance(merge, str):
            out.append(merge)
        else:
            out.append(" ".join(part.replace(" ", chr(ord(" ") + 256)) for part in merge))
    return out


def _adds(tok: Any) -> tuple[bool, bool]:
    """Whether encoding adds BOS / EOS (llama.cpp adds what these flags say)."""
    ids = tok("a")["input_ids"]
    bos, eos = tok.bos_token_id, tok.eos_token_id
    return bool(ids and bos is not None and ids[0] == bos), bool(ids and eos is not None and ids[-1] == eos)


def _add_tokenizer(writer: Any, tok: Any, size: int) -> None:
    spec = _backend(tok)
    tokens, types = _vocabulary(tok, size)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre_tokenizer(tok))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(_merges(spec))
    for kind in ("bos", "eos", "unk", "pad"):
        token_id = getattr(tok, f"{kind}_token_id", None)
        if isinstance(token_id, int) and 0 <= token_id < size:
            getattr(writer, f"add_{kind}_token_id")(token_id)
    add_bos, add_eos = _adds(tok)
    writer.add_add_bos_token(add_bos)
    writer.add_add_eos_token(add_eos)
    if isinstance(getattr(tok, "chat_template", None), str):
        writer.add_chat_template(tok.chat_template)
