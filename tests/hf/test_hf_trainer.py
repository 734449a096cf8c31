"""train_local on the tiny model: the artifact, determinism, resume, full fine-tuning, merge, errors."""

from __future__ import annotations

import itertools
import json
import logging
import re
import shutil
import threading
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import pytest
import torch
from hf_helpers import chat, chats, make_ctx, params, write_jsonl
from safetensors.torch import load_file

from tunepipe.errors import UserError
from tunepipe.hf import checkpoint
from tunepipe.hf.artifact import LOSS_COLUMNS, read_loss_csv
from tunepipe.hf.batching import collate
from tunepipe.hf.models import load_base, load_model
from tunepipe.hf.render import read_examples
from tunepipe.hf.loop import StopRequested, validation_loss
from tunepipe.hf.settings import settings, warmup_steps
from tunepipe.hf.trainer import train_local
from tunepipe.plugins import Cancelled


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("data")
    return write_jsonl(root / "train.jsonl", chats(12)), write_jsonl(root / "validation.jsonl", chats(4, offset=100))


def run(root: Path, model: Path, train: Path, validation: Path | None, ctx: Any = None, **over: Any
        ) -> tuple[dict[str, Any], Path, Any]:
    ctx = ctx if ctx is not None else make_ctx(root)
    out = root / "out"
    return train_local(ctx, train, validation, params(model, **over), out), out, ctx


def adapter_weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "adapter" / "adapter_model.safetensors"))


def curve(out: Path) -> list[dict[str, Any]]:
    return read_loss_csv(out / "loss.csv")


# --- the artifact -------------------------------------------------------------------------------

def test_a_lora_run_writes_the_model_folder_metrics_and_loss_curve(tiny_model: Path, data: Any, tmp_path: Path,
                                                                   tiny_tokenizer: Any,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from tunepipe.hf import loop

    monkeypatch.setattr(loop, "PROGRESS_INTERVAL", 0.0)  # every note shows: check them all
    train, val = data
    summary, out, ctx = run(tmp_path, tiny_model, train, val)
    # 12 examples, batch 2 -> 6 steps an epoch, 2 epochs
    assert summary["steps"] == 12 and summary["examples"] == 12 and summary["kind"] == "lora"
    assert re.fullmatch(r"\d+\.\d{3}→\d+\.\d{3}", summary["train_loss"])
    assert re.fullmatch(r"\d+\.\d{3}→\d+\.\d{3}", summary["val_loss"])
    assert summary["tokens_per_s"] > 0 and summary["truncated"] == 0
    json.dumps(summary)

    info = json.loads((out / "model.json").read_text())
    assert info == {"format": "tunepipe-model/1", "backend": "local", "base_model": str(tiny_model),
                    "base_source": info["base_source"], "kind": "lora", "adapter": "adapter", "merged": None,
                    "full": None, "tokenizer": "tokenizer", "chat_template": True, "max_seq_length": 256,
                    "device": "cpu", "dtype": "float32"}
    assert info["base_source"]["kind"] == "folder"
    assert (out / "adapter" / "adapter_config.json").is_file() and not (out / "merged").exists()
    adapter_cfg = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert adapter_cfg["r"] == 4 and sorted(adapter_cfg["target_modules"]) == ["k_proj", "o_proj", "q_proj", "v_proj"]

    # the tokenizer is saved with its chat template: inference renders prompts as training did
    from transformers import AutoTokenizer

    saved = AutoTokenizer.from_pretrained(str(out / "tokenizer"), local_files_only=True)
    msgs = chat("Hi?", "Hello.")["messages"]
    assert saved.apply_chat_template(msgs, tokenize=False) == tiny_tokenizer.apply_chat_template(msgs, tokenize=False)

    rows = curve(out)
    assert (out / "loss.csv").read_text().splitlines()[0] == ",".join(LOSS_COLUMNS)
    assert [r["step"] for r in rows] == list(range(1, 13))
    assert [r["epoch"] for r in rows] == [1] * 6 + [2] * 6
    assert [r["step"] for r in rows if r["val_loss"] is not None] == [6, 12]  # eval_every 0: at epoch ends
    assert all(a["tokens"] < b["tokens"] for a, b in itertools.pairwise(rows))  # tokens seen so far
    assert rows[0]["learning_rate"] == 0.0  # linear warmup (10% of 12 steps -> 2) starts from 0

    m = json.loads((out / "metrics.json").read_text())
    assert [e["epoch"] for e in m["epochs"]] == [1, 2]
    assert m["epochs"][1]["val_loss"] == pytest.approx(rows[-1]["val_loss"])
    assert m["val_loss"]["last"] == pytest.approx(rows[-1]["val_loss"]) and m["val_loss"]["first"] == pytest.approx(
        rows[5]["val_loss"])
    assert m["val_loss"]["before"] > m["val_loss"]["last"]  # the base model's, before the first step
    assert summary["val_loss"] == f"{m['val_loss']['before']:.3f}→{m['val_loss']['last']:.3f}"
    assert m["steps"] == 12 and m["tokens"] == rows[-1]["tokens"] and m["examples"] == 12
    assert m["trainable_params"] == 2 * 4 * 4 * (64 + 64) - 2 * 2 * 4 * (64 - 32)  # q,o: 64->64; k,v: 64->32
    assert 0 < m["trainable_params"] < m["total_params"]
    assert m["learning_rate"] == 5e-3 and m["warmup_steps"] == 2 and m["truncated"] == 0
    assert m["validation"]["examples"] == 4 and m["resumed_from_step"] is None
    for key in ("tokens_per_s", "seconds_per_step", "duration_s", "trained_tokens"):
        assert m[key] > 0

    steps = [n for n in ctx.notes.lines if n.startswith("epoch")]
    assert len([n for n in steps if " loss " in n]) == 12
    assert ctx.notes.lines[:2] == ["loading the model", "reading the examples"]
    assert ctx.notes.lines[2] == "validation loss before training 0/2" and ctx.notes.lines[-1] == "saving the model"
    assert all(re.fullmatch(r"epoch \d/2 step \d+/12 (loss \d+\.\d{3} \d+ tok/s \d+:\d\d left|"
                                      r"validation \d+/\d+)", n) for n in steps), steps


def test_progress_notes_come_at_most_twice_a_second(tiny_model: Path, data: Any, tmp_path: Path) -> None:
    train, val = data
    stamps: list[tuple[float, str]] = []
    ctx = make_ctx(tmp_path)
    ctx._progress = lambda note: stamps.append((time.monotonic(), note))
    run(tmp_path, tiny_model, train, val, ctx=ctx, epochs=4, batch_size=1, eval_every=1)
    training = [t for t, note in stamps if note.startswith("epoch")]
    assert len(training) >= 2, stamps  # the run lasts over a second
    assert all(b - a >= 0.5 for a, b in itertools.pairwise(training))


# --- determinism and resume -----------------------------------------------------------------------

def test_the_same_seed_gives_the_same_loss_curve_and_weights(tiny_model: Path, data: Any, tmp_path: Path) -> None:
    train, val = data
    _, a, _ = run(tmp_path / "a", tiny_model, train, val, eval_every=4)
    _, b, _ = run(tmp_path / "b", tiny_model, train, val, eval_every=4)
    _, c, _ = run(tmp_path / "c", tiny_model, train, val, eval_every=4, seed=8)
    assert curve(a) == curve(b)
    wa, wb = adapter_weights(a), adapter_weights(b)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert [r["train_loss"] for r in curve(a)] != [r["train_loss"] for r in curve(c)]


RESUME = {"eval_every": 2, "save_every": 3, "epochs": 3}  # 18 steps; dropout on: the random state matters


def test_an_interrupted_run_resumes_where_it_stopped_and_ends_as_an_uninterrupted_one(
        tiny_model: Path, data: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    train, val = data
    _, straight, _ = run(tmp_path / "straight", tiny_model, train, val, **RESUME)
    ctx = make_ctx(tmp_path / "resumed")
    with pytest.raises(StopRequested):
        train_local(ctx, train, val, params(tiny_model, **RESUME), tmp_path / "resumed" / "out", stop_after_steps=8)
    kept = sorted(p.name for p in (ctx.scratch / "checkpoints").iterdir())
    assert kept == ["step-00000003", "step-00000006"]  # steps 7-8 were lost with the "crash"
    with caplog.at_level(logging.INFO):
        summary, resumed, _ = run(tmp_path / "resumed", tiny_model, train, val, ctx=ctx, **RESUME)
    assert "resuming from step 6" in caplog.text
    assert summary["resumed_from_step"] == 6
    assert curve(resumed) == curve(straight)
    ws, wr = adapter_weights(straight), adapter_weights(resumed)
    assert all(torch.allclose(ws[k], wr[k], rtol=0, atol=1e-7) for k in ws)
    ms, mr = (json.loads((p / "metrics.json").read_text()) for p in (straight, resumed))
    assert ms["epochs"] == mr["epochs"] and ms["tokens"] == mr["tokens"]


def test_a_checkpoint_of_other_parameters_is_not_resumed(tiny_model: Path, data: Any, tmp_path: Path) -> None:
    train, val = data
    ctx = make_ctx(tmp_path)
    with pytest.raises(StopRequested):
        train_local(ctx, train, val, params(tiny_model, **RESUME), tmp_path / "out", stop_after_steps=4)
    assert checkpoint.latest(ctx.scratch, "other") is None
    summary, out, _ = run(tmp_path, tiny_model, train, val, ctx=ctx, **{**RESUME, "learning_rate": 1e-3})
    assert "resumed_from_step" not in summary and len(curve(out)) == 18
    # the run changed only what does not shape training (threads, save_every, merge): it resumes
    ctx2 = make_ctx(tmp_path / "two")
    with pytest.raises(StopRequested):
        train_local(ctx2, train, val, params(tiny_model, **RESUME), tmp_path / "two" / "out", stop_after_steps=4)
    summary, _, _ = run(tmp_path / "two", tiny_model, train, val, ctx=ctx2, **{**RESUME, "save_every": 5,
                                                                            "merge": True, "threads": 2})
    assert summary["resumed_from_step"] == 3


def test_a_run_whose_training_finished_before_a_crash_only_writes_the_artifact(tiny_model: Path, data: Any,
                                                                               tmp_path: Path) -> None:
    train, val = data
    ctx = make_ctx(tmp_path)
    run(tmp_path, tiny_model, train, val, ctx=ctx)
    shutil.rmtree(tmp_path / "out")  # the stage died before its output was published
    summary, out, _ = run(tmp_path, tiny_model, train, val, ctx=ctx)
    assert summary["resumed_from_step"] == 12 and len(curve(out)) == 12 and (out / "adapter").is_dir()


@pytest.mark.parametrize("at, saved", [
    ("epoch 1/3 step 1/18 loss", 1),  # Ctrl-C during step 2's work: step 1 is saved, step 2 redone
    ("epoch 1/3 step 2/18 validation 0/2", 2),  # during step 2's validation: saved with the validation due
])
def test_ctrl_c_saves_a_checkpoint_and_the_next_run_resumes_from_it(
        tiny_model: Path, data: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, at: str, saved: int) -> None:
    from tunepipe.hf import loop

    monkeypatch.setattr(loop, "PROGRESS_INTERVAL", 0.0)  # every note shows: the cancel lands where we say
    train, val = data
    _, straight, _ = run(tmp_path / "straight", tiny_model, train, val, **RESUME)
    ctx = make_ctx(tmp_path / "cancelled")
    notes: list[str] = []

    def progress(note: str) -> None:
        notes.append(note)
        if note.startswith(at):
            ctx._cancel.set()

    ctx._progress = progress
    with pytest.raises(Cancelled):
        train_local(ctx, train, val, params(tiny_model, **RESUME), tmp_path / "cancelled" / "out")
    assert any(n.startswith(at) for n in notes)
    assert [p.name for p in (ctx.scratch / "checkpoints").iterdir()] == [f"step-{saved:08d}"]
    ctx._cancel, ctx._progress = threading.Event(), notes.append
    summary, resumed, _ = run(tmp_path / "cancelled", tiny_model, train, val, ctx=ctx, **RESUME)
    assert summary["resumed_from_step"] == saved
    assert curve(resumed) == curve(straight)
    assert json.loads((resumed / "metrics.json").read_text())["epochs"] == \
        json.loads((straight / "metrics.json").read_text())["epochs"]


def test_gradient_accumulation_gives_the_update_of_one_big_batch(tiny_model: Path, tmp_path: Path) -> None:
    train = write_jsonl(tmp_path / "train.jsonl", chats(4))
    no_dropout = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}
    outs = []
    for bs, acc in ((4, 1), (2, 2), (1, 4)):
        _, out, _ = run(tmp_path / f"b{bs}", tiny_model, train, None, batch_size=bs, gradient_accumulation=acc,
                        lora=no_dropout, epochs=3, warmup=0)
        outs.append(out)
    curves = [[r["train_loss"] for r in curve(o)] for o in outs]
    assert len(curves[0]) == 3
    assert curves[1] == pytest.approx(curves[0], rel=1e-5) and curves[2] == pytest.approx(curves[0], rel=1e-5)
    w = [adapter_weights(o) for o in outs]
    assert all(torch.allclose(w[0][k], w[i][k], atol=1e-6) for i in (1, 2) for k in w[0])


# --- full fine-tuning, merge, loading back ------------------------------------------------------------

class _NoCancel:
    def check_cancelled(self) -> None:
        pass


def _val_loss(model: Any, tok: Any, val: Path) -> float:
    """The validation loss as the trainer computes it (mean over trained tokens, eval mode)."""
    data = read_examples(val, tok, 256)
    return validation_loss(_NoCancel(), model, data, tok.pad_token_id, 2, "cpu", nullcontext, None)  # type: ignore[arg-type]


@torch.no_grad()
def test_load_model_reproduces_the_trained_lora_model_and_its_merged_copy(tiny_model: Path, data: Any,
                                                                         tmp_path: Path) -> None:
    train, val = data
    ctx = make_ctx(tmp_path)
    _, out, _ = run(tmp_path, tiny_model, train, val, ctx=ctx, merge=True, learning_rate=2e-2)
    info = json.loads((out / "model.json").read_text())
    assert info["merged"] == "merged" and (out / "merged" / "config.json").is_file()
    final_val = json.loads((out / "metrics.json").read_text())["val_loss"]["last"]

    shared = ctx.shared("models")
    with_adapter, tok = load_model(out, shared, prefer_merged=False)
    merged, _ = load_model(out, shared)
    base, _ = load_base(str(tiny_model), shared)
    assert type(with_adapter).__name__.startswith("Peft") and not type(merged).__name__.startswith("Peft")
    # the loaded artifact gives the validation loss the trained model gave at its last step
    assert _val_loss(with_adapter, tok, val) == pytest.approx(final_val, rel=1e-5)
    assert _val_loss(merged, tok, val) == pytest.approx(final_val, rel=1e-4)
    batch = collate(read_examples(val, tok, 256).examples, tok.pad_token_id)
    logits = {name: m(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
              for name, m in (("adapter", with_adapter), ("merged", merged), ("base", base))}
    assert torch.allclose(logits["adapter"], logits["merged"], atol=1e-4)
    assert (logits["adapter"] - logits["base"]).abs().max() > 1e-2  # training changed the model


def test_full_fine_tuning_trains_every_weight_and_loads_back(tiny_model: Path, data: Any, tmp_path: Path) -> None:
    train, val = data
    _, out, ctx = run(tmp_path, tiny_model, train, val, lora=False, learning_rate=1e-3, epochs=3)
    info = json.loads((out / "model.json").read_text())
    assert info["kind"] == "full" and info["full"] == "full" and info["adapter"] is None and info["merged"] is None
    assert (out / "full" / "model.safetensors").is_file() and not (out / "adapter").exists()
    m = json.loads((out / "metrics.json").read_text())
    assert m["trainable_params"] == m["total_params"] > 3_000_000
    assert m["epochs"][-1]["val_loss"] < m["epochs"][0]["val_loss"] - 0.2  # full FT learns fast
    assert m["epochs"][-1]["train_loss"] < m["epochs"][0]["train_loss"]
    model, tok = load_model(out, ctx.shared("models"))
    assert _val_loss(model, tok, val) == pytest.approx(m["val_loss"]["last"], rel=1e-5)


def test_the_default_learning_rate_depends_on_the_kind_of_training(tiny_model: Path) -> None:
    assert settings(params(tiny_model, learning_rate=None)).learning_rate == 2e-4
    assert settings(params(tiny_model, learning_rate=None, lora=False)).learning_rate == 2e-5


def test_warmup_is_a_ratio_below_one_and_steps_from_one() -> None:
    assert warmup_steps(0.1, 40) == 4 and warmup_steps(0.0, 40) == 0 and warmup_steps(0.01, 40) == 1
    assert warmup_steps(5, 40) == 5 and warmup_steps(1, 40) == 1 and warmup_steps(100, 40) == 40


@pytest.mark.parametrize("schedule", ["cosine", "constant"])
def test_schedules(tiny_model: Path, data: Any, tmp_path: Path, schedule: str) -> None:
    train, _ = data
    _, out, _ = run(tmp_path, tiny_model, train, None, schedule=schedule, warmup=2, epochs=1)
    lrs = [r["learning_rate"] for r in curve(out)]
    assert lrs[:3] == pytest.approx([0.0, 2.5e-3, 5e-3])
    if schedule == "constant":
        assert lrs[2:] == pytest.approx([5e-3] * 4)
    else:
        assert lrs[2] > lrs[3] > lrs[4] > lrs[5] > 0


# --- data ---------------------------------------------------------------------------------------

def test_without_validation_data_there_is_no_validation_loss(tiny_model: Path, data: Any, tmp_path: Path) -> None:
    train, _ = data
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    for val, sub in ((None, "none"), (empty, "empty")):
        summary, out, _ = run(tmp_path / sub, tiny_model, train, val, eval_every=2)
        assert summary["val_loss"] is None
        assert all(r["val_loss"] is None for r in curve(out))
        m = json.loads((out / "metrics.json").read_text())
        assert m["val_loss"] is None and m["epochs"][0]["val_loss"] is None


def test_rendered_records_and_truncation_through_a_run(tiny_model: Path, tiny_tokenizer: Any,
                                                       tmp_path: Path) -> None:
    from tunepipe.data.chat_template import render

    records = []
    for i, rec in enumerate(chats(6)):
        if i == 2:
            rec["messages"][2]["content"] = "A very long answer. " * 40
        text, spans = render(tiny_tokenizer, rec["messages"])
        records.append({"text": text, "assistant_spans": spans, "tokens": 0, "messages": rec["messages"]})
    train = write_jsonl(tmp_path / "train.jsonl", records)
    summary, out, _ = run(tmp_path, tiny_model, train, None, max_seq_length=96)
    assert summary["truncated"] == 1 and summary["examples"] == 6
    m = json.loads((out / "metrics.json").read_text())
    assert m["train"]["truncated"] == 1 and m["train"]["dropped_truncated"] == 0


# --- errors -------------------------------------------------------------------------------------

def test_a_dpo_record_is_a_user_error_naming_the_record(tiny_model: Path, tmp_path: Path) -> None:
    dpo = {"input": {"messages": [{"role": "user", "content": "Hi"}]},
           "preferred_output": [{"role": "assistant", "content": "Hello"}],
           "non_preferred_output": [{"role": "assistant", "content": "No"}]}
    train = write_jsonl(tmp_path / "train.jsonl", chats(3) + [dpo])
    with pytest.raises(UserError) as e:
        run(tmp_path, tiny_model, train, None)
    assert "train.jsonl record 4" in str(e.value) and "backend: openai" in str(e.value)


def test_a_target_module_not_in_the_model_lists_the_models_linear_layers(tiny_model: Path, data: Any,
                                                                         tmp_path: Path) -> None:
    lora = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "query_key_value"]}
    with pytest.raises(UserError) as e:
        run(tmp_path, tiny_model, data[0], None, lora=lora)
    msg = str(e.value)
    assert "query_key_value" in msg
    for name in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head"):
        assert name in msg


def test_all_linear_targets_every_linear_layer(tiny_model: Path, data: Any, tmp_path: Path) -> None:
    lora = {"r": 2, "alpha": 4, "dropout": 0.0, "target_modules": ["all-linear"]}
    _, out, _ = run(tmp_path, tiny_model, data[0], None, lora=lora, epochs=1)
    cfg = json.loads((out / "adapter" / "adapter_config.json").read_text())
    adapted = {name.rsplit(".", 1)[-1] for name in cfg["target_modules"]}
    assert adapted == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


@pytest.mark.parametrize("model, says", [
    ("./no/such/folder", "no such folder"),
    ("some-org/not-a-model-anyone-has", "local Hugging Face cache"),
])
def test_a_model_that_is_not_here_is_a_user_error(data: Any, tmp_path: Path, model: str, says: str) -> None:
    with pytest.raises(UserError, match=says) as e:
        run(tmp_path, Path(model) if model.startswith(".") else model, data[0], None)  # type: ignore[arg-type]
    assert "offline" in str(e.value) or "folder" in str(e.value)


def test_a_folder_without_a_model_is_a_user_error(data: Any, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="has no config.json"):
        run(tmp_path, tmp_path / "empty", data[0], None)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_asking_for_cuda_without_one_fails_before_loading_anything(data: Any, tmp_path: Path, tiny_model: Path
                                                                   ) -> None:
    with pytest.raises(UserError, match="no CUDA GPU"):
        run(tmp_path, tiny_model, data[0], None, device="cuda")


@pytest.mark.parametrize("over, says", [({"epochs": 0}, "epochs"), ({"batch_size": "2"}, "batch_size"),
                                        ({"schedule": "exp"}, "schedule"), ({"lora": "yes"}, "lora"),
                                        ({"lora": {"r": 0, "alpha": 8, "dropout": 0, "target_modules": ["q_proj"]}},
                                         "lora.r must be a whole number >= 1")])
def test_bad_parameters_are_user_errors(tiny_model: Path, over: dict[str, Any], says: str) -> None:
    with pytest.raises(UserError, match=says):
        settings(params(tiny_model, **over))
