"""End to end on the real SmolLM2-135M-Instruct (the packaged GGUF, converted once): LoRA on the
sarcastic-Marv chats lowers the validation loss."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hf_helpers import make_ctx, params, write_jsonl

MARV = Path(__file__).resolve().parents[2] / "pipelines" / "data" / "marv.jsonl"


def marv_chats() -> list[dict[str, Any]]:
    """The well-formed chat examples of marv.jsonl (the file holds a malformed line on purpose)."""
    out = []
    for line in MARV.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and isinstance(rec.get("messages"), list):
            out.append({"messages": rec["messages"]})
    return out


@pytest.mark.slow
def test_lora_on_the_real_model_lowers_the_validation_loss(packaged: Any, tmp_path: Path) -> None:
    from tunepipe.hf.trainer import train_local

    shared, _source, _ = packaged
    records = marv_chats()
    assert len(records) >= 52
    train = write_jsonl(tmp_path / "train.jsonl", records[:40])
    val = write_jsonl(tmp_path / "validation.jsonl", records[40:52])
    ctx = make_ctx(tmp_path, shared=shared.parent)
    lora = {"r": 8, "alpha": 16, "dropout": 0.05, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}
    summary = train_local(ctx, train, val, params("smollm2-135m-instruct", lora=lora, learning_rate=1e-3,
                                                  batch_size=4, epochs=2, eval_every=5, threads=1),
                          tmp_path / "out")
    m = json.loads((tmp_path / "out" / "metrics.json").read_text())
    print(json.dumps(summary), f"{m['seconds_per_step']} s/step")
    assert summary["steps"] == 20 and summary["examples"] == 40 and summary["truncated"] == 0
    assert m["trainable_params"] == 921_600  # r=8 on q, k, v, o of 30 layers (the notes' figure)
    val_losses = [e["val_loss"] for e in m["epochs"]]
    assert m["val_loss"]["before"] > val_losses[0] > val_losses[1]
    assert val_losses[1] < 0.95 * m["val_loss"]["before"]  # measured: 3.19 -> 3.01 -> 2.88
    assert m["epochs"][1]["train_loss"] < m["epochs"][0]["train_loss"]
    info = json.loads((tmp_path / "out" / "model.json").read_text())
    assert info["base_model"] == "smollm2-135m-instruct" and info["base_source"]["kind"] == "packaged"
