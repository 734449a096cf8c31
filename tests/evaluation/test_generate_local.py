"""Local generation with the tiny test models: chat template, left padding, decoding, truncation,
and the evaluate run through the local backend."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from eval_helpers import (
    QA,
    SYSTEM,
    artifact,
    chats,
    local_artifact,
    make_ctx,
    params,
    write_jsonl,
)

from tunepipe.evaluation.examples import Example
from tunepipe.hf.generate import generate_local, render_prompt, stop_ids
from tunepipe.replies import Decoding, Reply


@pytest.fixture(scope="module")
def loaded(varied_a: Path) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(1)
    tok = AutoTokenizer.from_pretrained(str(varied_a), local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(str(varied_a), local_files_only=True).eval()
    return model, tok


def examples(n: int = 6) -> list[Example]:
    # prompts of different lengths, so that a batch needs padding
    return [Example(i, i + 1, [{"role": "system", "content": SYSTEM}, {"role": "user", "content": " ".join([q] * (1 + i % 3))}],
                    a) for i, (q, a) in enumerate((QA * 2)[:n])]


def run(model: Any, tok: Any, exs: list[Example], decoding: Decoding, batch_size: int) -> dict[int, Reply]:
    out: dict[int, Reply] = {}
    generate_local(model, tok, [ex.as_prompt() for ex in exs], decoding, batch_size=batch_size, device="cpu",
                   done=out.__setitem__)
    return out


def test_the_prompt_is_rendered_through_the_chat_template_with_the_generation_prompt(loaded: tuple[Any, Any]) -> None:
    _, tok = loaded
    text = render_prompt(tok, examples(1)[0].as_prompt())
    assert text.startswith(f"<|im_start|>system\n{SYSTEM}<|im_end|>")
    assert text.endswith("<|im_start|>assistant\n")
    assert tok.convert_tokens_to_ids("<|im_end|>") in stop_ids(tok, loaded[0])


def test_left_padded_batches_give_the_same_replies_as_one_at_a_time(loaded: tuple[Any, Any]) -> None:
    model, tok = loaded
    exs = examples(6)
    decoding = Decoding(max_new_tokens=10)
    one = run(model, tok, exs, decoding, 1)
    for size in (3, 6):
        assert {i: r.text for i, r in run(model, tok, exs, decoding, size).items()} == {i: r.text for i, r in one.items()}
    assert len({r.text for r in one.values()}) > 1 and all(r.text for r in one.values())
    for i, r in one.items():
        assert r.prompt_tokens == len(tok(render_prompt(tok, exs[i].as_prompt()), add_special_tokens=False)["input_ids"])
        assert 1 <= r.completion_tokens <= 10
        assert r.finish in ("stop", "length") and (r.finish == "stop" or r.completion_tokens == 10)
        assert r.latency_s > 0 and not r.truncated_prompt


def test_greedy_is_deterministic_and_sampling_follows_the_seed(loaded: tuple[Any, Any]) -> None:
    model, tok = loaded
    exs = examples(3)
    greedy = Decoding(max_new_tokens=8)
    assert [r.text for r in run(model, tok, exs, greedy, 3).values()] == \
           [r.text for r in run(model, tok, exs, greedy, 3).values()]
    sample = Decoding(max_new_tokens=8, temperature=1.0, top_p=0.9, seed=11)
    first = {i: r.text for i, r in run(model, tok, exs, sample, 3).items()}
    assert {i: r.text for i, r in run(model, tok, exs, sample, 3).items()} == first
    other = {i: r.text for i, r in run(model, tok, exs, Decoding(8, 1.0, 0.9, seed=12), 3).items()}
    greedy_texts = {i: r.text for i, r in run(model, tok, exs, greedy, 3).items()}
    assert other != first and first != greedy_texts


def test_a_prompt_longer_than_the_context_keeps_its_last_tokens(loaded: tuple[Any, Any]) -> None:
    model, tok = loaded
    long = Example(0, 1, [{"role": "user", "content": "word " * 200}], "ref")
    before = model.config.max_position_embeddings
    model.config.max_position_embeddings = 48
    try:
        reply = run(model, tok, [long], Decoding(max_new_tokens=8), 1)[0]
    finally:
        model.config.max_position_embeddings = before
    assert reply.truncated_prompt and reply.prompt_tokens == 40  # 48 - 8 new tokens


def test_evaluate_through_the_local_backend(varied_a: Path, varied_b: Path, tmp_path: Path) -> None:
    from tunepipe.evaluation.run import evaluate

    model = local_artifact(tmp_path / "model", varied_a)
    shutil.rmtree(model / "full")
    shutil.copytree(varied_b, model / "full")  # the "fine-tuned" weights differ from the base's
    info = json.loads((model / "model.json").read_text())
    info["base_model"] = "smollm2-135m-instruct"  # the spec the base came from; base_source says where it is
    (model / "model.json").write_text(json.dumps(info))
    data = write_jsonl(tmp_path / "validation.jsonl", chats(5))
    inputs = {"model": artifact(model, "train.model"), "examples": artifact(data, "split.validation")}
    p = params(metrics=["token_f1", "rouge_l", "bleu", "length_ratio"], decoding={"max_new_tokens": 8},
               batch_size=2, device="cpu", threads=1, bootstrap={"samples": 200},
               gates=["tuned.rouge_l >= 0", "delta.length_ratio.ci_high >= -10"])
    ctx = make_ctx(tmp_path / "run")
    summary = evaluate(ctx, inputs, p)
    assert summary["examples"] == 5 and summary["gates"] == "2/2 passed"
    out = ctx.output("report")
    doc = json.loads((out / "metrics.json").read_text())
    assert doc["backend"] == "local" and doc["generation"]["device"] == "cpu"
    assert doc["models"] == {"tuned": "smollm2-135m-instruct fine-tuned (full, train.model)",
                             "base": "smollm2-135m-instruct"}
    assert doc["generation"]["base"]["generated"] == 5 and doc["generation"]["tuned"]["generated"] == 5
    rows = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert sorted(r["index"] for r in rows) == list(range(5))
    assert any(r["base"]["reply"] != r["tuned"]["reply"] for r in rows)
    assert all(r["tuned"]["completion_tokens"] <= 8 for r in rows)
    deltas = [r["delta"]["rouge_l"] for r in rows]
    assert deltas == sorted(deltas)  # worst regressions first
    assert {"report.html", "report.md", "metrics.json", "predictions.jsonl"} <= {p.name for p in out.iterdir()}
    assert "loss-chart" in (out / "report.html").read_text()

    # only a gate changes: the replies come from the shared cache, no model is loaded
    ctx2 = make_ctx(tmp_path / "run2", shared=tmp_path / "run" / "shared")
    evaluate(ctx2, inputs, {**p, "gates": ["tuned.token_f1 >= 0"]})
    doc2 = json.loads((ctx2.output("report") / "metrics.json").read_text())
    assert doc2["generation"]["tuned"]["reused"] == 5 and doc2["generation"]["base"]["generated"] == 0
    assert not any("loading" in n for n in ctx2._progress.lines)
    assert doc2["metrics"]["rouge_l"] == doc["metrics"]["rouge_l"]


# --- the local replier's stream and token counts ------------------------------------------------

@pytest.fixture
def local_replier(varied_a: Path, tmp_path: Path) -> Any:
    from tunepipe import modelref
    from tunepipe.hf.replier import LocalReplier

    ref = modelref.read(local_artifact(tmp_path / "model", varied_a), name="train.model")
    return LocalReplier(make_ctx(tmp_path / "run"), ref, base=False, settings={"device": "cpu", "threads": 1})


def streamed(replier: Any, prompt: Any, decoding: Decoding) -> tuple[list[str], Reply]:
    pieces, gen = [], replier.stream(prompt, decoding)
    while True:
        try:
            pieces.append(next(gen))
        except StopIteration as end:
            return pieces, end.value


@pytest.mark.parametrize("decoding", [Decoding(max_new_tokens=24), Decoding(24, temperature=1.0, top_p=0.9, seed=5)])
def test_the_local_stream_joins_to_the_reply(local_replier: Any, decoding: Decoding) -> None:
    exs = examples(3)
    for ex in exs:
        prompt = ex.as_prompt()
        (whole,) = local_replier.reply([prompt], decoding)
        pieces, reply = streamed(local_replier, prompt, decoding)
        assert len(pieces) > 3 and all(pieces) and "".join(pieces) == whole.text
        assert (reply.text, reply.prompt_tokens, reply.completion_tokens, reply.finish) == \
               (whole.text, whole.prompt_tokens, whole.completion_tokens, whole.finish)
        assert local_replier.prompt_tokens(prompt) == whole.prompt_tokens


def test_the_local_stream_loads_lazily_and_closing_it_stops_generation(local_replier: Any) -> None:
    import threading
    import time

    gen = local_replier.stream(examples(1)[0].as_prompt(), Decoding(max_new_tokens=1500))
    assert local_replier._model is None  # nothing happens before the first piece is asked for
    assert next(gen) and any(t.name == "tunepipe-stream" for t in threading.enumerate())
    t0 = time.monotonic()
    gen.close()
    assert time.monotonic() - t0 < 1 and not any(t.name == "tunepipe-stream" for t in threading.enumerate())


def test_prompt_tokens_need_only_the_tokenizer_and_the_context_is_the_models(local_replier: Any) -> None:
    prompt = examples(1)[0].as_prompt()
    assert local_replier.prompt_tokens(prompt) == len(local_replier._tok(render_prompt(local_replier._tok, prompt),
                                                                         add_special_tokens=False)["input_ids"])
    assert local_replier._model is None
    assert local_replier.context_length() == 2048 and local_replier._model is not None


def test_the_local_stream_truncates_a_long_prompt_as_reply_does(local_replier: Any) -> None:
    long = Example(0, 1, [{"role": "user", "content": "word " * 200}], "ref").as_prompt()
    local_replier.context_length()  # loads the model
    local_replier._model.config.max_position_embeddings = 48
    pieces, reply = streamed(local_replier, long, Decoding(max_new_tokens=8))
    (whole,) = local_replier.reply([long], Decoding(max_new_tokens=8))
    assert reply.truncated_prompt and reply.prompt_tokens == 40 and "".join(pieces) == whole.text == reply.text
