"""The local backend's export engine (tunepipe.hf.export): hf-adapter, merged and the refusals, with
the model card; GGUF and the Modelfile are in test_to_gguf.py. Real transformers and PEFT on the
tiny model (tests/support/tiny_model.py), with LoRA adapters whose weights are random (not zero, so
merging them changes the outputs)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import yaml

from tunepipe import modelref
from tunepipe.errors import UserError
from tunepipe.hf.card import base_license, model_card, readme_license
from tunepipe.hf.export import export, merged_model

pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")

sys.path.append(str(Path(__file__).resolve().parents[1] / "evaluation"))  # for eval_helpers
from eval_helpers import local_artifact  # noqa: E402

PROMPT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 12 + 30? Say it twice."}]
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def lora_artifact(folder: Path, base: Path, *, merged: bool = False, seed: int = 0) -> modelref.ModelRef:
    """A LoRA artifact on ``base`` written by the local backend's own writers, its adapter random."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunepipe.hf.artifact import model_json, write_model
    from tunepipe.hf.models import resolve_base

    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(str(base))
    lora = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": TARGETS}
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=TARGETS))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.05)
    write_model(peft_model, tok, SimpleNamespace(lora=lora, model=str(base), merge=merged), folder)
    source = resolve_base(str(base), None).describe()
    modelref.write(folder, model_json(base_model=str(base), base_source=source, kind="lora", merged=merged,
                                      max_seq_length=256, device="cpu", dtype="float32", chat_template=True))
    return modelref.read(folder, name="train.model")


def prompt_ids(tok: Any) -> torch.Tensor:
    return tok.apply_chat_template(PROMPT, add_generation_prompt=True, return_tensors="pt",
                                   return_dict=True)["input_ids"]


def logits(model: Any, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits[0].float()


def front_matter(readme: Path) -> dict[str, Any]:
    text = readme.read_text(encoding="utf-8")
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


@pytest.fixture(scope="module")
def lora(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> modelref.ModelRef:
    return lora_artifact(tmp_path_factory.mktemp("lora") / "model", tiny_model)


@pytest.fixture(scope="module")
def peft_reference(lora: modelref.ModelRef, tiny_model: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """(prompt ids, logits) of the base model with the adapter on, through PEFT."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(lora.folder / "tokenizer"))
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model), dtype=torch.float32)
    ids = prompt_ids(tok)
    base_logits = logits(base, ids)
    model = PeftModel.from_pretrained(base, str(lora.folder / "adapter")).eval()
    out = logits(model, ids)
    assert (out - base_logits).abs().max() > 1e-2  # the adapter matters: merging it is visible
    return ids, out


# --- hf-adapter --------------------------------------------------------------------------------------

def test_the_adapter_export_loads_with_peft_and_carries_a_card(lora: modelref.ModelRef, tiny_model: Path,
                                                               peft_reference: Any, tmp_path: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    done = export(lora, "hf-adapter", tmp_path / "out")
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "chat_template.jinja",
            "README.md"} <= set(done.files)
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model), dtype=torch.float32)
    model = PeftModel.from_pretrained(base, str(tmp_path / "out")).eval()
    ids, expected = peft_reference
    assert torch.equal(prompt_ids(AutoTokenizer.from_pretrained(str(tmp_path / "out"))), ids)
    torch.testing.assert_close(logits(model, ids), expected, atol=0, rtol=0)
    meta = front_matter(tmp_path / "out" / "README.md")
    assert meta["library_name"] == "peft" and meta["pipeline_tag"] == "text-generation"
    assert meta["tags"][:3] == ["tunepipe", "fine-tuned", "lora"]
    assert meta["base_model"] == tiny_model.name and "base_model_relation" not in meta  # a local folder: its name
    assert str(tiny_model) not in (tmp_path / "out" / "README.md").read_text()


# --- merged --------------------------------------------------------------------------------------------

NO_PEFT = textwrap.dedent("""
    import sys
    sys.modules["peft"] = None  # `import peft` raises ImportError
    import torch
    from transformers import AutoModelForCausalLM
    torch.set_num_threads(1)
    model = AutoModelForCausalLM.from_pretrained(sys.argv[1])
    assert model.dtype == torch.float32, model.dtype
    ids = torch.load(sys.argv[2])
    with torch.no_grad():
        torch.save(model(ids).logits[0], sys.argv[3])
    print(type(model).__name__)
""")


def load_without_peft(folder: Path, ids: torch.Tensor, work: Path) -> torch.Tensor:
    torch.save(ids, work / "ids.pt")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    run = subprocess.run([sys.executable, "-c", NO_PEFT, str(folder), str(work / "ids.pt"), str(work / "out.pt")],
                         capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.strip() == "LlamaForCausalLM"
    return torch.load(work / "out.pt")


def test_a_lora_model_merged_now_loads_without_peft_and_matches_base_plus_adapter(
        lora: modelref.ModelRef, peft_reference: Any, tmp_path: Path) -> None:
    done = export(lora, "merged", tmp_path / "out", card={"pipeline": "marv.yaml", "stage": "train"})
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "chat_template.jinja", "README.md"} <= set(done.files)
    assert not any("adapter" in f for f in done.files)
    assert "merged in now" in done.note
    ids, expected = peft_reference
    got = load_without_peft(tmp_path / "out", ids, tmp_path)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
    meta = front_matter(tmp_path / "out" / "README.md")
    assert meta["library_name"] == "transformers"
    card = (tmp_path / "out" / "README.md").read_text()
    assert "AutoModelForCausalLM.from_pretrained" in card and "pipeline `marv.yaml`, stage `train`" in card


def test_a_stored_merged_copy_is_exported_as_it_is(tmp_path: Path, tiny_model: Path) -> None:
    ref = lora_artifact(tmp_path / "model", tiny_model, merged=True, seed=1)
    done = export(ref, "merged", tmp_path / "out")
    assert "merged/ folder" in done.note
    for name in ("model.safetensors", "config.json"):
        assert (tmp_path / "out" / name).read_bytes() == (ref.folder / "merged" / name).read_bytes()
    assert (tmp_path / "out" / "chat_template.jinja").is_file()


def test_a_fully_fine_tuned_model_exports_its_full_folder_as_merged(tmp_path: Path, tiny_model: Path) -> None:
    ref = modelref.read(local_artifact(tmp_path / "model", tiny_model), name="train.model")
    done = export(ref, "merged", tmp_path / "out")
    assert "full/ folder" in done.note
    assert (tmp_path / "out" / "model.safetensors").read_bytes() == (tiny_model / "model.safetensors").read_bytes()
    assert front_matter(tmp_path / "out" / "README.md")["tags"] == ["tunepipe", "fine-tuned", "full"]
    with pytest.raises(UserError, match="was fully fine-tuned .* no LoRA adapter .* export it as merged"):
        export(ref, "hf-adapter", tmp_path / "other")


def test_merged_model_in_memory_equals_peft(lora: modelref.ModelRef, peft_reference: Any) -> None:
    model, _ = merged_model(lora, None)
    assert not hasattr(model, "peft_config") and type(model).__name__ == "LlamaForCausalLM"
    ids, expected = peft_reference
    torch.testing.assert_close(logits(model, ids), expected, atol=1e-4, rtol=0)


# --- refusals ---------------------------------------------------------------------------------------------

def qwen2_artifact(folder: Path, tiny_model: Path) -> modelref.ModelRef:
    """A full artifact whose model is a tiny Qwen2 on the same tokenizer."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    base = folder.parent / "qwen2"
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=49152, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True)
    Qwen2ForCausalLM(config).save_pretrained(str(base))
    for f in tiny_model.iterdir():
        if f.name.startswith(("tokenizer", "chat_template")):
            shutil.copy(f, base / f.name)
    return modelref.read(local_artifact(folder, base), name="train.model")


def test_a_non_llama_architecture_is_refused_for_gguf_with_the_converter_named(tmp_path: Path,
                                                                                tiny_model: Path) -> None:
    ref = qwen2_artifact(tmp_path / "model", tiny_model)
    with pytest.raises(UserError, match=r"llama architecture only; this model is 'qwen2'.*export the model as "
                                        r"`merged`.*convert_hf_to_gguf\.py"):
        export(ref, "gguf", tmp_path / "out")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    assert "model.safetensors" in export(ref, "merged", tmp_path / "merged").files  # merged still works


def test_unknown_formats_and_misplaced_options_are_refused(lora: modelref.ModelRef, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="unknown export format 'onnx': use one of hf-adapter, merged, gguf"):
        export(lora, "onnx", tmp_path / "out")
    with pytest.raises(UserError, match="quantize applies to the gguf export only, not to merged"):
        export(lora, "merged", tmp_path / "out", quantize="q8_0")
    with pytest.raises(UserError, match="quantize: 'q4_k_m' is not supported .* q8_0, f16, f32"):
        export(lora, "gguf", tmp_path / "out", quantize="q4_k_m")
    with pytest.raises(TypeError, match="unknown options: colour"):
        export(lora, "merged", tmp_path / "out", colour="red")
    assert not (tmp_path / "out").exists()


# --- the model card ------------------------------------------------------------------------------------

def test_the_card_states_the_facts_with_front_matter_the_hub_reads() -> None:
    text = model_card({
        "base_model": "smollm2-135m-instruct", "license": "apache-2.0", "format": "merged", "kind": "lora",
        "data": {"digest": "sha256:ab12", "examples": 120, "name": "marv"},
        "training": {"epochs": 3, "learning_rate": 0.0002},
        "metrics": {"judge": {"base": 0.31, "tuned": 0.72, "delta": 0.41, "low": 0.3, "high": 0.52},
                    "exact|match": {"base": 0.1, "tuned": 0.2, "delta": 0.1}},
        "pipeline": "marv.yaml", "stage": "train", "tunepipe_version": "9.9.9"})
    meta = yaml.safe_load(text.split("---\n")[1])
    assert meta == {"base_model": "HuggingFaceTB/SmolLM2-135M-Instruct", "base_model_relation": "finetune",
                    "license": "apache-2.0", "library_name": "transformers", "pipeline_tag": "text-generation",
                    "tags": ["tunepipe", "fine-tuned", "lora"]}
    assert "| judge | 0.31 | 0.72 | 0.41 | 0.3 to 0.52 |" in text
    assert "| exact\\|match | 0.1 | 0.2 | 0.1 |  |" in text
    assert "| learning_rate | 0.0002 |" in text and "- training examples: 120" in text
    assert "`sha256:ab12`" in text and "tunepipe 9.9.9, pipeline `marv.yaml`, stage `train`" in text
    assert "## Evaluation" not in model_card({"base_model": "m", "format": "merged", "metrics": None})


def test_a_card_holds_only_the_facts_given(tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ref = modelref.read(local_artifact(tmp_path / "model", tiny_model), name="train.model")
    info = json.loads((ref.folder / "model.json").read_text())
    (ref.folder / "model.json").write_text(json.dumps({**info, "api_key": "sk-live-SECRET"}))
    monkeypatch.setenv("OPENAI_API_KEY", "env-SECRET")
    export(modelref.read(ref.folder), "merged", tmp_path / "out")
    assert "SECRET" not in (tmp_path / "out" / "README.md").read_text()


def test_the_base_license_is_read_offline_from_what_lies_on_disk(tmp_path: Path, tiny_model: Path) -> None:
    packaged = modelref.ModelRef(tmp_path, {"backend": "local", "base_model": "smollm2-135m-instruct"})
    assert base_license(packaged) == "apache-2.0"  # general.license of the packaged GGUF
    folder = tmp_path / "base"
    shutil.copytree(tiny_model, folder)
    local = modelref.ModelRef(tmp_path, {"backend": "local", "base_model": str(folder),
                                         "base_source": {"kind": "folder", "location": str(folder)}})
    assert base_license(local) is None
    (folder / "README.md").write_text("---\nlicense: mit\ntags: [x]\n---\n# A model\n")
    assert base_license(local) == "mit"
    assert readme_license("# no front matter") is None
