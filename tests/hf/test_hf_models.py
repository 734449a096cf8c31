"""Base models: the packaged GGUF converted once into the shared cache, folders, hub ids; artifacts."""

from __future__ import annotations

import json
import os
import shutil
import stat
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from tunepipe.errors import UserError
from tunepipe.hf.models import (
    CONVERTED_MARKER,
    check_target_modules,
    linear_layer_names,
    load_model,
    resolve_base,
)
from tunepipe.modelref import read as read_model_reference

PACKAGED = "smollm2-135m-instruct"


def test_the_light_modules_import_no_torch_or_transformers() -> None:
    import subprocess
    import sys

    code = ("import sys; import tunepipe.hf, tunepipe.hf.models, tunepipe.hf.render, tunepipe.hf.batching, "
            "tunepipe.hf.device, tunepipe.hf.checkpoint, tunepipe.hf.artifact; "
            "heavy = [m for m in ('torch', 'transformers', 'peft') if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_linear_layers_of_a_llama_model(tiny_model: Path) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model), local_files_only=True)
    assert linear_layer_names(model) == ["down_proj", "gate_proj", "k_proj", "lm_head", "o_proj", "q_proj", "up_proj",
                                         "v_proj"]
    assert check_target_modules(model, ["q_proj", "v_proj"]) == ["q_proj", "v_proj"]
    assert check_target_modules(model, "all-linear") == ["all-linear"]
    assert check_target_modules(model, ["self_attn.q_proj"]) == ["self_attn.q_proj"]
    with pytest.raises(UserError, match="query_key_value, not in this model; its linear layers are: down_proj"):
        check_target_modules(model, ["q_proj", "query_key_value"])
    with pytest.raises(UserError, match="is empty"):
        check_target_modules(model, [])


def test_a_folder_resolves_to_itself_with_an_identity_of_its_weights(tiny_model: Path, tmp_path: Path) -> None:
    a = resolve_base(str(tiny_model), None)
    assert a.kind == "folder" and a.location == str(tiny_model.resolve()) and a.converted_in is None
    copy = tmp_path / "copy"
    shutil.copytree(tiny_model, copy)  # keeps sizes and times
    assert resolve_base(str(copy), None).identity == a.identity
    os.utime(copy / "model.safetensors", ns=(1, 1))  # weights rewritten
    assert resolve_base(str(copy), None).identity != a.identity


@pytest.mark.parametrize("spec, says", [
    ("", "give a packaged model name"),
    ("./missing-model", "no such folder or .gguf file"),
    ("missing.gguf", "no such folder or .gguf file"),
    ("HuggingFaceTB/Not-A-Real-Model-xyz", "not in the local Hugging Face cache|local Hugging Face cache"),
])
def test_models_that_cannot_be_found_are_user_errors(spec: str, says: str) -> None:
    with pytest.raises(UserError, match=says):
        resolve_base(spec, None)


def test_a_hub_id_loads_from_the_local_hugging_face_cache_only(tiny_model: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    from tunepipe.hf.models import load_base

    # the layout huggingface_hub writes: models--org--name/{refs/main, snapshots/<revision>/...}
    repo = tmp_path / "hub" / "models--tiny-org--tiny-llama"
    shutil.copytree(tiny_model, repo / "snapshots" / "0123abc")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abc")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    source = resolve_base("tiny-org/tiny-llama", None)
    assert source.kind == "hub" and source.location == "tiny-org/tiny-llama"
    assert source.identity == "hub:tiny-org/tiny-llama@0123abc"
    model, tok = load_base("tiny-org/tiny-llama", None)
    assert model.config.hidden_size == 64 and tok.chat_template
    with pytest.raises(UserError, match="Runs are offline and never download"):
        resolve_base("tiny-org/other-model", None)


def test_a_trained_model_folder_needs_its_model_json(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="has no model.json"):
        load_model(tmp_path, None)
    (tmp_path / "model.json").write_text(json.dumps({"format": "tunepipe-model/0"}))
    with pytest.raises(UserError, match="train the model again"):
        read_model_reference(tmp_path)


# --- the packaged model (real GGUF; slow) --------------------------------------------------------

@pytest.mark.slow
def test_the_packaged_model_is_converted_once_into_the_shared_cache(packaged: Any) -> None:
    from tunepipe.data.models import packaged_model_file
    from tunepipe.hf.models import file_sha256

    shared, source, seconds = packaged
    digest = file_sha256(packaged_model_file(PACKAGED))
    folder = Path(source.location)
    assert folder == shared / f"{PACKAGED}-{digest[:16]}"
    assert source.kind == "packaged" and source.identity == f"gguf:{digest}" and source.converted_in is not None
    assert json.loads((folder / CONVERTED_MARKER).read_text())["sha256"] == digest
    names = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= names
    assert not [p for p in shared.iterdir() if p.name.startswith(".")]  # no temporary folder left
    for p in [folder, *folder.iterdir()]:
        assert stat.S_IMODE(p.stat().st_mode) & 0o044 == 0o044  # others sharing the cache can read it
    print(f"conversion: {seconds:.1f} s")

    again_started = time.monotonic()
    again = resolve_base(PACKAGED, shared)
    assert again.location == source.location and again.converted_in is None
    assert time.monotonic() - again_started < 2


@pytest.mark.slow
def test_the_converted_weights_are_the_dequantized_gguf_tensors(packaged: Any) -> None:
    import gguf
    import numpy as np
    from safetensors.torch import load_file

    from tunepipe.data.models import packaged_model_file

    _shared, source, _ = packaged
    folder = Path(source.location)
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "llama" and config["num_hidden_layers"] == 30 and config["tie_word_embeddings"]
    assert "quantization_config" not in config
    weights = load_file(str(folder / "model.safetensors"))
    assert sum(t.numel() for t in weights.values()) == 134_515_008  # 134.5 M; the head is the tied embedding
    assert all(t.dtype == torch.float32 for t in weights.values())
    reader = gguf.GGUFReader(str(packaged_model_file(PACKAGED)))
    tensors = {t.name: t for t in reader.tensors}
    # tensors transformers does not permute (q and k are un-permuted for rotary embeddings)
    for gguf_name, hf_name in (("token_embd.weight", "model.embed_tokens.weight"),
                               ("blk.0.ffn_down.weight", "model.layers.0.mlp.down_proj.weight"),
                               ("blk.29.attn_v.weight", "model.layers.29.self_attn.v_proj.weight"),
                               ("blk.3.attn_norm.weight", "model.layers.3.input_layernorm.weight"),
                               ("output_norm.weight", "model.norm.weight")):
        t = tensors[gguf_name]
        expected = gguf.dequantize(t.data, t.tensor_type).reshape(tuple(reversed([int(d) for d in t.shape])))
        assert np.array_equal(weights[hf_name].numpy(), expected.astype(np.float32)), hf_name


@pytest.mark.slow
@torch.no_grad()
def test_the_converted_model_speaks(packaged: Any) -> None:
    from tunepipe.hf.models import load_base

    shared, _source, _ = packaged
    model, tok = load_base(PACKAGED, shared)
    msgs = [{"role": "user", "content": "What is 2 + 2? Answer with a number."}]
    ids = torch.tensor([tok.apply_chat_template(msgs, tokenize=True, return_dict=False, add_generation_prompt=True)])
    out = model.generate(ids, max_new_tokens=12, do_sample=False)
    reply = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    assert "4" in reply, reply


@pytest.mark.slow
def test_a_run_waits_for_another_runs_conversion_and_reuses_it(packaged: Any, tmp_path: Path) -> None:
    from filelock import FileLock

    _, source, _ = packaged
    done = Path(source.location)
    shared = tmp_path / "models"
    shared.mkdir()
    other = FileLock(str(shared / f"{done.name}.lock"))
    other.acquire()  # another run is converting
    said: list[str] = []
    result: list[Any] = []
    t = threading.Thread(target=lambda: result.append(resolve_base(PACKAGED, shared, say=said.append)))
    t.start()
    deadline = time.monotonic() + 20
    while not said and time.monotonic() < deadline:
        time.sleep(0.05)
    assert said == ["waiting for another run converting SmolLM2-135M-Instruct.Q4_1.gguf"]
    assert t.is_alive()
    shutil.copytree(done, shared / done.name)  # the other run publishes its conversion
    other.release()
    t.join(20)
    assert result and result[0].location == str(shared / done.name) and result[0].converted_in is None
