"""The ``train`` stage's own layer: its parameters, their per-backend defaults and cross-field
checks (reported at validation time with file and line), and how it finds its input files.

The backends have their own tests (tests/hf for local training, tests/openai_ft for OpenAI).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunepipe.errors import UserError
from tunepipe.plugins import Artifact
from tunepipe.spec.schema import with_defaults
from tunepipe.stages.train import Train, _jsonl, resolve_params


def params(**given):
    return with_defaults(Train.params_schema, given)


def test_local_is_the_default_backend_with_its_defaults() -> None:
    p = resolve_params("train", params())
    assert (p["backend"], p["model"], p["epochs"], p["batch_size"]) == ("local", "smollm2-135m-instruct", 3, 8)
    assert p["lora"] == {"r": 8, "alpha": 16, "dropout": 0.05, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}


def test_openai_defaults_leave_hyperparameters_to_the_api() -> None:
    p = resolve_params("train", params(backend="openai"))
    assert (p["model"], p["epochs"], p["batch_size"]) == ("gpt-4o-mini-2024-07-18", "auto", "auto")
    assert p["openai"]["api_key_env"] == "OPENAI_API_KEY" and p["openai"]["method"] == "supervised"


def test_given_values_win_over_backend_defaults() -> None:
    p = resolve_params("train", params(model="my/model", epochs=1, batch_size=2, lora={"r": 4}))
    assert (p["model"], p["epochs"], p["batch_size"]) == ("my/model", 1, 2)
    assert p["lora"]["r"] == 4 and p["lora"]["alpha"] == 16  # the rest of LoRA's defaults


def test_lora_true_means_the_defaults_and_false_full_fine_tuning() -> None:
    assert resolve_params("t", params(lora=True))["lora"]["r"] == 8
    assert resolve_params("t", params(lora=False))["lora"] is False


def test_auto_for_the_local_backend_is_its_default() -> None:
    p = resolve_params("t", params(epochs="auto", batch_size="auto"))
    assert (p["epochs"], p["batch_size"]) == (3, 8)


def test_settings_of_the_other_backend_are_refused_directly() -> None:
    with pytest.raises(UserError, match="merge only applies to backend: local"):
        resolve_params("t", params(backend="openai", merge=True))
    with pytest.raises(UserError, match=r"openai\.suffix only applies to backend: openai"):
        resolve_params("t", params(openai={"suffix": "x"}))


def test_validate_reports_wrong_backend_settings_at_their_lines(project) -> None:
    project.write("train.jsonl", "{}\n")
    project.spec("""\
        stages:
          remote:
            uses: train
            inputs: {train: train.jsonl}
            with:
              backend: openai
              learning_rate: 0.001
              workers: 4
              openai: {max_cost_usd: 5}
          local:
            uses: train
            inputs: {train: train.jsonl}
            with:
              openai: {suffix: marv}
        """)
    result = project.run("validate", "p.yaml")
    assert result.exit_code == 2
    assert "p.yaml:7:22: error: stage 'remote' (plugin train) parameter 'learning_rate': only applies to " \
           "backend: local" in result.output
    assert "p.yaml:8:16: error: stage 'remote' (plugin train) parameter 'workers': only applies to " \
           "backend: local" in result.output  # Ray Train workers are the local backend's
    assert "p.yaml:14:24: error: stage 'local' (plugin train) parameter 'openai.suffix': only applies to " \
           "backend: openai" in result.output
    assert "hint: remove it or set backend: openai" in result.output
    assert "Traceback" not in result.output


def test_schema_errors_come_before_cross_field_checks(project) -> None:
    project.write("train.jsonl", "{}\n")
    project.spec("""\
        stages:
          t:
            uses: train
            inputs: {train: train.jsonl}
            with: {backend: openai, epochs: 0, merge: true}
        """)
    result = project.run("validate", "p.yaml")
    assert result.exit_code == 2
    assert "epochs" in result.output and "parameter 'merge'" not in result.output  # one round of fixes at a time


def test_a_valid_openai_spec_validates(project) -> None:
    project.write("train.jsonl", "{}\n")
    project.spec("""\
        stages:
          t:
            uses: train
            inputs: {train: train.jsonl}
            with: {backend: openai, epochs: 2, openai: {method: dpo, beta: 0.1, max_cost_usd: 1.5}}
        """)
    assert "is valid" in project.ok("validate", "p.yaml").output


def test_the_input_file_is_found_in_a_split_output(tmp_path: Path) -> None:
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "train.jsonl").write_text("{}\n")
    assert _jsonl(Artifact(folder, "d", "split.train"), "train") == folder / "train.jsonl"
    single = tmp_path / "examples.jsonl"
    single.write_text("{}\n")
    assert _jsonl(Artifact(single, "d", "examples.jsonl"), "train") == single
    (folder / "extra.jsonl").write_text("{}\n")
    assert _jsonl(Artifact(folder, "d", "split.train"), "train") == folder / "train.jsonl"  # by its name
    (folder / "train.jsonl").rename(folder / "other.jsonl")
    with pytest.raises(UserError, match=r"must hold one JSONL file of examples, found split.train/extra.jsonl, "
                                        r"split.train/other.jsonl"):
        _jsonl(Artifact(folder, "d", "split.train"), "train")


def test_the_stage_is_listed_with_both_backends(project) -> None:
    data = json.loads(project.ok("stages", "--json").stdout)
    train = next(s for s in data if s["name"] == "train")
    assert train["params_schema"]["properties"]["backend"]["enum"] == ["local", "openai"]
    assert set(train["inputs"]) == {"train", "validation", "base_model"} and set(train["outputs"]) == {"model"}
