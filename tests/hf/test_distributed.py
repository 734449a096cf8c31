"""workers: N on Ray Train (tunepipe.hf.distributed): real TorchTrainer workers on the in-process
Ray instance (2 CPUs), the tiny model, and the errors of workers without Ray."""

from __future__ import annotations

import json
import math
import os
import re
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from hf_helpers import chats, make_ctx, params, write_jsonl
from ray_local import ray_local  # noqa: F401  (the session's Ray instance)
from safetensors.torch import load_file

from tunepipe.errors import UserError
from tunepipe.hf.artifact import read_loss_csv
from tunepipe.hf.models import load_model
from tunepipe.hf.trainer import train_local
from tunepipe.plugins import Cancelled
from tunepipe.spec.schema import with_defaults
from tunepipe.stages.train import Train


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("data")
    return write_jsonl(root / "train.jsonl", chats(12)), write_jsonl(root / "validation.jsonl", chats(4, offset=100))


def files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


NO_DROPOUT = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}


@pytest.mark.ray_train
def test_two_ray_train_workers_train_the_same_model_one_process_would(tiny_model: Path, data: Any, tmp_path: Path,
                                                                      caplog: pytest.LogCaptureFixture,
                                                                      ray_local: Any) -> None:  # noqa: F811
    train, val = data
    # one process, two batches of 2 per step (accumulated) ...
    solo_ctx = make_ctx(tmp_path / "solo")
    train_local(solo_ctx, train, val, params(tiny_model, lora=NO_DROPOUT, gradient_accumulation=2, eval_every=2),
                tmp_path / "solo" / "out")
    # ... and two workers with a batch of 2 each: the same examples per step, the same loss normalisation
    ctx = make_ctx(tmp_path / "ray")
    ctx.engine = "ray"
    out = tmp_path / "ray" / "out"
    summary = train_local(ctx, train, val, params(tiny_model, lora=NO_DROPOUT, workers=2, eval_every=2), out)

    solo_out = tmp_path / "solo" / "out"
    assert files(out) == files(solo_out)  # model.json, adapter/, tokenizer/, metrics.json, loss.csv
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["workers"] == 2 and summary["workers"] == 2
    # 12 examples in batches of 2 = 6 batches an epoch, 2 per optimizer step: 3 steps an epoch, 2 epochs
    assert metrics["steps"] == summary["steps"] == 6 and metrics["batch_size"] == 2
    # each worker trained on its own half of every epoch: 3 batches of 2 examples, twice
    assert [(r["rank"], r["batches"], r["examples"]) for r in metrics["ranks"]] == [(0, 6, 12), (1, 6, 12)]
    assert sum(r["trained_tokens"] for r in metrics["ranks"]) == metrics["trained_tokens"]

    curve, solo = read_loss_csv(out / "loss.csv"), read_loss_csv(solo_out / "loss.csv")
    assert [r["step"] for r in curve] == [1, 2, 3, 4, 5, 6]
    assert [r["tokens"] for r in curve] == [r["tokens"] for r in solo]  # tokens count every worker's
    assert all(math.isfinite(r["train_loss"]) for r in curve)
    assert metrics["epochs"][1]["train_loss"] < metrics["epochs"][0]["train_loss"]
    assert metrics["val_loss"]["last"] < metrics["val_loss"]["before"]
    for mine, theirs in zip(curve, solo, strict=True):  # DDP's average is the one-process gradient
        assert mine["train_loss"] == pytest.approx(theirs["train_loss"], rel=1e-4)
        assert (mine["val_loss"] is None) == (theirs["val_loss"] is None)
        if mine["val_loss"] is not None:
            assert mine["val_loss"] == pytest.approx(theirs["val_loss"], rel=1e-4)
    weights = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    solo_weights = load_file(str(solo_out / "adapter" / "adapter_model.safetensors"))
    assert weights.keys() == solo_weights.keys()
    assert all(torch.allclose(weights[k], solo_weights[k], atol=1e-5) for k in weights)

    # the artifact loads and generates like any local model
    model, tok = load_model(out, None)
    prompt = tok.apply_chat_template([{"role": "user", "content": "Who is Marv?"}], add_generation_prompt=True,
                                     tokenize=True, return_dict=False)
    with torch.no_grad():
        generated = model.generate(torch.tensor([prompt]), max_new_tokens=5, do_sample=False)
    assert generated.shape[1] == len(prompt) + 5

    # rank 0's progress and log reached the stage; Ray Train kept its checkpoints in the stage's scratch folder
    assert "saving the model" in ctx.notes.lines and ctx.notes.lines[-1] == "copying the model"
    logged = [r.getMessage() for r in caplog.records if r.name == ctx.log.name]
    assert any(m.startswith("epoch 2 step 6/6: loss") for m in logged), logged
    assert list((ctx.scratch / "ray-train").glob("train-*/checkpoint_*"))


@pytest.mark.slow
@pytest.mark.ray_train
def test_a_cancelled_ray_train_run_resumes_from_its_checkpoint(tiny_model: Path, tmp_path: Path,
                                                               ray_local: Any) -> None:  # noqa: F811
    train = write_jsonl(tmp_path / "data" / "train.jsonl", chats(48))
    val = write_jsonl(tmp_path / "data" / "validation.jsonl", chats(4, offset=100))
    over = {"lora": NO_DROPOUT, "epochs": 3, "save_every": 0}  # 36 steps, a checkpoint each epoch and on cancel
    ctx = make_ctx(tmp_path / "ray")
    ctx.engine = "ray"

    def cancel_once_training(note: str) -> None:  # Ctrl-C as soon as rank 0 shows a training step
        ctx.notes(note)
        if re.match(r"epoch \d/3 step [1-9]", note):
            ctx._cancel.set()

    ctx._progress = cancel_once_training
    with pytest.raises(Cancelled):
        train_local(ctx, train, val, params(tiny_model, workers=2, **over), tmp_path / "ray" / "out")

    again = make_ctx(tmp_path / "ray")  # the same stage run again: the same key, the same scratch folder
    again.engine = "ray"
    out = tmp_path / "ray" / "out"
    summary = train_local(again, train, val, params(tiny_model, workers=2, **over), out)
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0 < summary["resumed_from_step"] < 36 == metrics["steps"]
    # the shares count both sessions: 24 batches of 2 an epoch, every other one to each worker
    assert [(r["batches"], r["examples"]) for r in metrics["ranks"]] == [(36, 72), (36, 72)]
    # it ends where one uninterrupted process ends
    solo = make_ctx(tmp_path / "solo")
    train_local(solo, train, val, params(tiny_model, gradient_accumulation=2, **over), tmp_path / "solo" / "out")
    curve, reference = read_loss_csv(out / "loss.csv"), read_loss_csv(tmp_path / "solo" / "out" / "loss.csv")
    assert [r["step"] for r in curve] == list(range(1, 37))
    assert [r["train_loss"] for r in curve] == pytest.approx([r["train_loss"] for r in reference], rel=1e-4)


def test_a_worker_on_a_node_without_the_stage_nodes_files_gets_a_copy(tiny_model: Path, data: Any,
                                                                       tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                       ray_local: Any) -> None:  # noqa: F811
    from tunepipe.hf import node_files, ray_link
    from tunepipe.hf.models import BaseSource, load_tokenizer, resolve_base

    monkeypatch.setattr(node_files, "_node_cache", lambda: tmp_path / "node")
    link = ray_link.start_link(ray_local)
    try:
        seen = resolve_base(str(tiny_model), None)
        # as a worker on another node sees it: the stage's folder is not there
        elsewhere = BaseSource(seen.spec, seen.kind, str(tmp_path / "not-on-this-node"), seen.identity)
        local = node_files.model_source(ray_local, {"source": elsewhere, "origin": str(tiny_model), "link": link})
        copy = Path(local.location)
        assert local.kind == "folder" and local.identity == seen.identity and copy.parent == tmp_path / "node"
        assert files(copy) == files(tiny_model)
        assert (copy / "model.safetensors").read_bytes() == (tiny_model / "model.safetensors").read_bytes()
        assert load_tokenizer(local).chat_template
        # the next worker on this node reuses the copy, and the use keeps it from being pruned
        os.utime(copy, (time.time() - 30 * 86400,) * 2)
        again = node_files.model_source(ray_local, {"source": elsewhere, "origin": str(tiny_model), "link": link})
        assert Path(again.location) == copy and time.time() - copy.stat().st_mtime < 60
        # where the stage's folder is visible, the worker loads it in place
        assert node_files.model_source(ray_local, {"source": seen, "origin": str(tiny_model), "link": link}) is seen

        train, _ = data
        from tunepipe.hf.models import file_sha256

        digest = file_sha256(train)
        assert node_files.data_file(ray_local, link, (str(train), digest)) == train
        moved = node_files.data_file(ray_local, link, (str(train), "0" * 64))  # not the same bytes here
        assert moved.name == "train.jsonl" and moved.read_bytes() == train.read_bytes()
    finally:
        ray_local.kill(link)


def test_a_node_s_copies_unused_for_a_week_and_copies_left_half_written_are_pruned(tmp_path: Path) -> None:
    from tunepipe.hf.node_files import prune_node_cache

    now = time.time()
    ages = {"model-old": 8 * 86400, "model-recent": 6 * 86400, ".data-killed.tmp": 25 * 3600,
            ".model-writing.tmp": 3600}
    for name, age in ages.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "f").write_bytes(b"x")
        os.utime(tmp_path / name, (now - age, now - age))
    assert sorted(prune_node_cache(tmp_path, now)) == [".data-killed.tmp", "model-old"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".model-writing.tmp", "model-recent"]
    assert prune_node_cache(tmp_path / "absent", now) == []  # no folder yet: nothing to do


def test_more_workers_than_the_cluster_holds_is_a_user_error(tiny_model: Path, data: Any, tmp_path: Path,
                                                              ray_local: Any) -> None:  # noqa: F811
    train, val = data
    ctx = make_ctx(tmp_path)
    ctx.engine = "ray"
    with pytest.raises(UserError, match=r"^workers: 3 needs more than the Ray cluster has \(3 CPUs, "
                                        r"the cluster has 2; each worker takes 1 CPU\)\. Lower workers"):
        train_local(ctx, train, val, params(tiny_model, workers=3, threads=None), tmp_path / "out")
    with pytest.raises(UserError, match=r"\(4 CPUs, the cluster has 2; each worker takes 2 CPUs\)"):
        train_local(ctx, train, val, params(tiny_model, workers=2, threads=2), tmp_path / "out")


# --- without Ray --------------------------------------------------------------------------------

def test_workers_with_the_local_executor_say_to_use_ray(tiny_model: Path, data: Any, tmp_path: Path) -> None:
    train, val = data
    ctx = make_ctx(tmp_path)  # engine "local"
    with pytest.raises(UserError) as info:
        train_local(ctx, train, val, params(tiny_model, workers=2), tmp_path / "out")
    message = str(info.value)
    assert message.startswith("workers: 2 trains on") and "--executor ray" in message and "workers: 1" in message
    assert not any((tmp_path / "out").iterdir())  # nothing written


def test_a_coordinating_stage_asks_the_cluster_for_no_cpu() -> None:
    plugin = Train()

    def p(**given: Any) -> dict[str, Any]:
        return with_defaults(Train.params_schema, given)

    assert plugin.resources(p(workers=2)) == {"cpus": 0}  # its workers take the CPUs
    assert plugin.resources(p()) == {} and plugin.resources(p(workers=1)) == {}  # it trains itself: the default
    assert plugin.resources(p(backend="openai")) == {}
    assert p()["workers"] == 1
