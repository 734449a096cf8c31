"""What a model card says, gathered from the artifact itself (tunepipe.cardfacts)."""

from __future__ import annotations

import json
from pathlib import Path

from tunepipe import cardfacts, modelref


def _model(folder: Path) -> modelref.ModelRef:
    modelref.write(folder, {"backend": "local", "base_model": "smollm2-135m-instruct", "kind": "lora",
                            "adapter": "adapter", "tokenizer": "tokenizer"})
    (folder / "adapter").mkdir()
    (folder / "adapter" / "adapter_config.json").write_text(json.dumps(
        {"r": 16, "lora_alpha": 32, "lora_dropout": 0.05, "target_modules": ["v_proj", "q_proj"]}))
    (folder / "metrics.json").write_text(json.dumps(
        {"kind": "lora", "epochs": [{"epoch": 1}, {"epoch": 2}], "learning_rate": 0.001, "seed": 7,
         "examples": 185, "threads": 2, "device": "cpu"}))
    return modelref.read(folder)


def test_the_training_parameters_come_from_the_artifact_not_the_spec(tmp_path: Path) -> None:
    got = cardfacts.training(_model(tmp_path / "m"))
    assert got == {"kind": "lora", "epochs": 2, "learning_rate": 0.001, "seed": 7, "lora_r": 16,
                   "lora_alpha": 32, "lora_dropout": 0.05, "lora_target_modules": ["q_proj", "v_proj"]}
    assert "threads" not in got and "device" not in got  # how it ran is not what it is


def test_headline_metrics_from_an_evaluate_report(tmp_path: Path) -> None:
    (tmp_path / "metrics.json").write_text(json.dumps({"metrics": {"rouge_l": {
        "tuned": {"value": 0.177}, "base": {"value": 0.132},
        "delta": {"value": 0.045, "ci_low": 0.011, "ci_high": 0.08}}}}))
    assert cardfacts.headline(tmp_path) == {"rouge_l": {"tuned": 0.177, "base": 0.132, "delta": 0.045,
                                                        "low": 0.011, "high": 0.08}}
    assert cardfacts.headline(None) is None and cardfacts.headline(tmp_path / "missing") is None


def test_the_usual_system_prompt_and_its_share(tmp_path: Path) -> None:
    rows = [{"messages": [{"role": "system", "content": "A"}, {"role": "user", "content": "x"}]}] * 3 + \
           [{"messages": [{"role": "system", "content": "B"}]}, {"messages": [{"role": "user", "content": "y"}]}]
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows) + "not json\n")
    assert cardfacts.usual_system([data]) == ("A", 0.6)
    assert cardfacts.usual_system([]) == (None, 0.0)


def test_facts_hold_the_data_digest_and_count(tmp_path: Path) -> None:
    facts = cardfacts.facts(_model(tmp_path / "m"), "gguf", stage="train", pipeline="sarcasm", data_digest="d" * 64)
    assert facts["data"] == {"digest": "d" * 64, "examples": 185}
    assert facts["stage"] == "train" and facts["pipeline"] == "sarcasm" and facts["format"] == "gguf"
