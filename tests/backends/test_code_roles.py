"""A stage's code fingerprint follows only the backend code of its role: the train stage's key covers
the chosen backend's training code, the evaluate stage's the replier of the backend that trained the
model. Editing how replies are made must never re-run (and pay for) a fine-tuning job."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunepipe.backends.contract import code_modules
from tunepipe.backends.registry import installed
from tunepipe.cache.fingerprint import reached
from tunepipe.plugins import Artifact
from tunepipe.stages.evaluate import Evaluate
from tunepipe.stages.train import Train

TRAINING = {"local": "tunepipe.hf.trainer", "openai": "tunepipe.openai_ft.backend"}
REPLYING = {"local": "tunepipe.hf.replier", "openai": "tunepipe.openai_ft.replier"}


def _closure(stage_module: str, extra: list[str]) -> set[str]:
    out: set[str] = set()
    for m in (stage_module, *extra):
        out |= set(reached(m))
    return out


@pytest.mark.parametrize("backend", ["local", "openai"])
def test_a_train_key_covers_the_chosen_backends_training_code_only(backend: str) -> None:
    code = _closure("tunepipe.stages.train", Train().code_for({"backend": backend}, {}))
    other = next(b for b in TRAINING if b != backend)
    assert TRAINING[backend] in code
    assert not code & {REPLYING[backend], REPLYING[other], TRAINING[other], "tunepipe.openai_ft.chat",
                       "tunepipe.hf.generate", f"tunepipe.backends.{other}"}


@pytest.mark.parametrize("backend", ["local", "openai"])
def test_an_evaluate_key_covers_the_replier_of_the_backend_that_trained_the_model(backend: str,
                                                                                   tmp_path: Path) -> None:
    (tmp_path / "model.json").write_text(json.dumps({"format": "tunepipe-model/1", "backend": backend,
                                                     "base_model": "m"}), encoding="utf-8")
    extra = Evaluate().code_for({}, {"model": [Artifact(tmp_path, "d" * 64, "train.model")]})
    code = _closure("tunepipe.stages.evaluate", extra)
    other = next(b for b in REPLYING if b != backend)
    assert REPLYING[backend] in code
    assert not code & {TRAINING["local"], TRAINING["openai"], REPLYING[other], "tunepipe.openai_ft.jobs",
                       "tunepipe.hf.loop"}


def test_an_unreadable_model_input_adds_no_code(tmp_path: Path) -> None:
    assert Evaluate().code_for({}, {"model": [Artifact(tmp_path, "d" * 64, "x")]}) == []


def test_a_backend_without_code_roles_is_covered_by_its_own_module() -> None:
    local = installed().get("local")
    assert code_modules(local, "train") == ["tunepipe.backends.local", "tunepipe.hf.trainer"]

    class Bare:
        pass

    assert code_modules(Bare(), "reply") == [f"{__name__}"]
