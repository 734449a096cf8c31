"""GGUF export (tunepipe.hf.to_gguf through tunepipe.hf.export) and the Ollama Modelfile, checked by
reading the file back with independent readers: transformers' GGUF loader (model and tokenizer,
which undo llama.cpp's Q/K permutation and rebuild the tokenizer from the metadata) and
gguf.GGUFReader (the metadata and the raw tensors). Real transformers, PEFT and gguf on the tiny
model with a random LoRA adapter merged in; one slow test on the real packaged SmolLM2.

Measured here (tiny model, 2 layers, hidden 64, max |logit| 1.2; max |logit difference| over a ChatML
prompt against the merged float32 model): F32 0 (exact), F16 4.2e-4, Q8_0 1.0e-2, while the smallest
top-1/top-2 margin along the 16 greedy tokens is 0.095, so Q8_0's greedy tokens are not luck.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from test_export import PROMPT, logits, lora_artifact, prompt_ids
from tunepipe import modelref
from tunepipe.errors import UserError
from tunepipe.exports import Exported
from tunepipe.hf.export import export, merged_model
from tunepipe.hf.modelfile import Untranslatable, modelfile, recognize
from tunepipe.hf.to_gguf import permute

pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")

SMOLLM_DEFAULT = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
CHATML_MODELFILE = f'''FROM ./model-q8_0.gguf
TEMPLATE """{{{{- if not .System }}}}<|im_start|>system
{SMOLLM_DEFAULT}<|im_end|>
{{{{ end }}}}{{{{- range .Messages }}}}<|im_start|>{{{{ .Role }}}}
{{{{ .Content }}}}<|im_end|>
{{{{ end }}}}<|im_start|>assistant
"""
PARAMETER stop "<|im_end|>"
SYSTEM """Marv is a factual chatbot that is also sarcastic."""
'''


def load_gguf(folder: Path, name: str) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=name, dtype=torch.float32).eval()


def greedy(model: Any, ids: torch.Tensor, n: int = 16) -> list[int]:
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                             do_sample=False, pad_token_id=2)
    return out[0, ids.shape[1]:].tolist()


@pytest.fixture(scope="module")
def lora(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> modelref.ModelRef:
    return lora_artifact(tmp_path_factory.mktemp("lora") / "model", tiny_model, seed=3)


@pytest.fixture(scope="module")
def merged(lora: modelref.ModelRef) -> tuple[Any, Any]:
    return merged_model(lora, None)


@pytest.fixture(scope="module")
def exported(lora: modelref.ModelRef, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Exported]:
    """The LoRA model exported as GGUF F16 and Q8_0 (the default), once for the module."""
    torch.set_num_threads(1)
    out = {"f16": export(lora, "gguf", tmp_path_factory.mktemp("f16"), quantize="f16"),
           "q8_0": export(lora, "gguf", tmp_path_factory.mktemp("q8"),
                          system="Marv is a factual chatbot that is also sarcastic.")}
    return out


# --- transformers reads it back -----------------------------------------------------------------------

def test_f16_logits_match_the_merged_model(exported: dict[str, Exported], merged: Any) -> None:
    model, tok = merged
    ids = prompt_ids(tok)
    got = logits(load_gguf(exported["f16"].folder, "model-f16.gguf"), ids)
    want = logits(model, ids)
    assert want.abs().max() > 0.5  # not a model whose logits are all near zero
    torch.testing.assert_close(got, want, atol=2e-3, rtol=0)


def test_q8_0_generates_the_same_greedy_tokens(exported: dict[str, Exported], merged: Any) -> None:
    model, tok = merged
    ids = prompt_ids(tok)
    gguf_model = load_gguf(exported["q8_0"].folder, "model-q8_0.gguf")
    torch.testing.assert_close(logits(gguf_model, ids), logits(model, ids), atol=3e-2, rtol=0)
    assert greedy(gguf_model, ids) == greedy(model, ids)


def test_the_tokenizer_read_from_the_gguf_encodes_as_the_original(exported: dict[str, Exported],
                                                                  merged: Any) -> None:
    from transformers import AutoTokenizer

    _, tok = merged
    back = AutoTokenizer.from_pretrained(str(exported["f16"].folder), gguf_file="model-f16.gguf")
    text = tok.apply_chat_template(PROMPT + [{"role": "assistant", "content": "42, 42. Ünïcödé 🦙 tabs\t\tdone"}],
                                   tokenize=False)
    assert back(text)["input_ids"] == tok(text)["input_ids"]
    assert back.apply_chat_template(PROMPT, add_generation_prompt=True) == \
        tok.apply_chat_template(PROMPT, add_generation_prompt=True)
    assert back.eos_token == "<|im_end|>" and back.bos_token_id == tok.bos_token_id


# --- gguf.GGUFReader reads the metadata and tensors ----------------------------------------------------

def test_the_metadata_holds_what_llama_cpp_needs(exported: dict[str, Exported], merged: Any) -> None:
    import gguf

    model, tok = merged
    reader = gguf.GGUFReader(str(exported["f16"].folder / "model-f16.gguf"))

    def field(key: str) -> Any:
        return reader.get_field(key).contents()

    cfg = model.config
    assert field("general.architecture") == "llama"
    assert field("llama.context_length") == cfg.max_position_embeddings
    assert field("llama.embedding_length") == cfg.hidden_size
    assert field("llama.block_count") == cfg.num_hidden_layers
    assert field("llama.feed_forward_length") == cfg.intermediate_size
    assert field("llama.attention.head_count") == cfg.num_attention_heads
    assert field("llama.attention.head_count_kv") == cfg.num_key_value_heads
    assert field("llama.attention.layer_norm_rms_epsilon") == pytest.approx(cfg.rms_norm_eps)
    assert field("llama.rope.dimension_count") == cfg.head_dim
    assert field("llama.rope.freq_base") == pytest.approx(cfg.rope_parameters["rope_theta"])
    assert field("llama.vocab_size") == cfg.vocab_size == len(field("tokenizer.ggml.tokens"))
    assert field("general.file_type") == gguf.LlamaFileType.MOSTLY_F16
    assert field("tokenizer.ggml.model") == "gpt2"
    assert field("tokenizer.ggml.pre") == "smollm"  # llama.cpp's name, by the hash of its check text
    assert len(field("tokenizer.ggml.merges")) > 40_000
    types = field("tokenizer.ggml.token_type")
    assert types[:17] == [gguf.TokenType.CONTROL] * 17 and set(types[17:]) == {gguf.TokenType.NORMAL}
    assert (field("tokenizer.ggml.bos_token_id"), field("tokenizer.ggml.eos_token_id"),
            field("tokenizer.ggml.padding_token_id"), field("tokenizer.ggml.unknown_token_id")) == (1, 2, 2, 0)
    assert field("tokenizer.ggml.add_bos_token") is False
    assert field("tokenizer.chat_template") == tok.chat_template
    tensors = {t.name: t for t in reader.tensors}
    assert "output.weight" not in tensors  # tied to token_embd, as llama.cpp expects it
    assert tensors["blk.0.attn_norm.weight"].tensor_type == gguf.GGMLQuantizationType.F32
    q = model.state_dict()["model.layers.0.self_attn.q_proj.weight"].numpy()
    k = model.state_dict()["model.layers.0.self_attn.k_proj.weight"].numpy()
    stored_q = tensors["blk.0.attn_q.weight"].data.astype("float32")  # F16, in ggml's (rows, cols) order
    stored_k = tensors["blk.0.attn_k.weight"].data.astype("float32")
    assert abs(stored_q - permute(q, cfg.num_attention_heads)).max() < 1e-3
    assert abs(stored_k - permute(k, cfg.num_attention_heads, cfg.num_key_value_heads)).max() < 1e-3
    assert abs(stored_q - q).max() > 1e-2  # permuted, not copied


def test_q8_0_quantizes_matrices_and_keeps_norms_in_f32(exported: dict[str, Exported]) -> None:
    done = exported["q8_0"]
    assert done.files == ("Modelfile", "README.md", "model-q8_0.gguf")
    assert "Q8_0 15" in done.note and "F32 5" in done.note
    f16 = (exported["f16"].folder / "model-f16.gguf").stat().st_size
    assert (done.folder / "model-q8_0.gguf").stat().st_size < 0.7 * f16


# --- the Modelfile and the card --------------------------------------------------------------------------

def test_the_modelfile_of_a_chatml_model(exported: dict[str, Exported]) -> None:
    assert (exported["q8_0"].folder / "Modelfile").read_text() == CHATML_MODELFILE
    assert "with an Ollama Modelfile" in exported["q8_0"].note
    assert "SYSTEM" not in (exported["f16"].folder / "Modelfile").read_text()
    card = (exported["q8_0"].folder / "README.md").read_text()
    assert "- gguf" in card and "quantized as Q8_0" in card and "ollama create my-model -f Modelfile" in card
    assert "library_name" not in card


def test_plain_chatml_and_llama3_templates_translate(lora: modelref.ModelRef) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(lora.folder / "tokenizer"))
    tok.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                         "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    assert modelfile("m.gguf", tok) == ('FROM ./m.gguf\nTEMPLATE """{{- range .Messages }}<|im_start|>{{ .Role }}\n'
                                        '{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n"""\n'
                                        'PARAMETER stop "<|im_end|>"\n')
    llama3 = ("{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
              "{{ m['content'] | trim }}<|eot_id|>{% endfor %}"
              "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")
    fmt = recognize(lambda msgs, gen: tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen,
                                                              chat_template=llama3))
    assert (fmt.family.name, fmt.family.stop, fmt.default_system) == ("llama3", "<|eot_id|>", None)
    with pytest.raises(UserError, match='cannot contain """'):
        modelfile("m.gguf", tok, system='say """hi"""')


def test_an_untranslatable_template_still_gets_its_gguf_but_no_modelfile(lora: modelref.ModelRef,
                                                                          tmp_path: Path) -> None:
    folder = tmp_path / "model"
    shutil.copytree(lora.folder, folder)
    (folder / "tokenizer" / "chat_template.jinja").write_text(
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}")
    done = export(modelref.read(folder, name="train.model"), "gguf", tmp_path / "out", quantize="f32")
    assert done.files == ("README.md", "model-f32.gguf")
    assert "no Ollama Modelfile: the chat template is neither ChatML nor Llama 3" in done.note
    assert not (tmp_path / "out" / "Modelfile").exists()
    with pytest.raises(Untranslatable, match="no chat template"):
        modelfile("m.gguf", type("NoTemplate", (), {"chat_template": None})())


# --- the real model ----------------------------------------------------------------------------------------

@pytest.mark.slow
def test_smollm2_with_an_adapter_exports_to_gguf_that_transformers_runs(
        packaged: tuple[Path, Any, float], tmp_path: Path) -> None:
    """The packaged SmolLM2-135M-Instruct with a random LoRA adapter: F16 and Q8_0 read back by
    transformers give the merged model's greedy text. Measured here: max |logit difference| F16
    0.035-0.058, Q8_0 0.75-0.84 (max |logit| 40); files 258.3 MiB (F16) and 138.1 MiB (Q8_0)."""
    shared, source, _ = packaged
    ref = lora_artifact(tmp_path / "model", Path(source.location), seed=5)
    model, tok = merged_model(ref, shared)
    ids = prompt_ids(tok)
    want, want_tokens = logits(model, ids), greedy(model, ids)
    sizes = {}
    for quant, atol in (("f16", 0.2), ("q8_0", 2.0)):
        done = export(ref, "gguf", tmp_path / quant, shared=shared, quantize=quant)
        gguf_model = load_gguf(done.folder, f"model-{quant}.gguf")
        got = logits(gguf_model, ids)
        print(f"SmolLM2 {quant}: max |logit diff| {(got - want).abs().max().item():.4g} "
              f"(max |logit| {want.abs().max().item():.3g}); {done.note}")
        torch.testing.assert_close(got, want, atol=atol, rtol=0)
        assert greedy(gguf_model, ids) == want_tokens
        sizes[quant] = (done.folder / f"model-{quant}.gguf").stat().st_size
        assert (done.folder / "Modelfile").is_file()
        assert "license: apache-2.0" in (done.folder / "README.md").read_text()
    assert 250e6 < sizes["f16"] < 300e6 and 130e6 < sizes["q8_0"] < 160e6
