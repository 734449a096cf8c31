"""A training process killed with SIGKILL in the middle resumes from its last checkpoint and ends
exactly where an uninterrupted run ends."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hf_helpers import chats, make_ctx, params, write_jsonl

from tunepipe.hf.artifact import read_loss_csv
from tunepipe.hf.trainer import train_local

HERE = Path(__file__).resolve().parent

CHILD = """
import json, sys
from pathlib import Path
import torch
torch.set_num_threads(1)
from hf_helpers import make_ctx
from tunepipe.hf.trainer import train_local
root, train, val, params = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), json.loads(sys.argv[4])
train_local(make_ctx(root), train, val, params, root / "out")
print("finished")
"""


def _steps(scratch: Path) -> list[int]:
    folder = scratch / "checkpoints"
    if not folder.is_dir():
        return []
    return sorted(int(p.name.split("-")[1]) for p in folder.glob("step-*"))


@pytest.mark.slow
def test_a_run_killed_with_sigkill_resumes_and_ends_as_an_uninterrupted_one(tiny_model: Path, tmp_path: Path) -> None:
    train = write_jsonl(tmp_path / "train.jsonl", chats(12))
    val = write_jsonl(tmp_path / "validation.jsonl", chats(4, offset=50))
    p = params(tiny_model, epochs=20, save_every=5, eval_every=10)  # 120 steps
    straight_out = tmp_path / "straight" / "out"
    train_local(make_ctx(tmp_path / "straight"), train, val, p, straight_out)

    root = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), str(HERE.parent / "support"),
                                                         os.environ.get("PYTHONPATH", "")]),
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(root), str(train), str(val), json.dumps(p)],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 180
    try:
        while time.monotonic() < deadline and child.poll() is None and not any(s >= 20 for s in _steps(root / "scratch")):
            time.sleep(0.01)
        assert child.poll() is None, child.stdout.read().decode() if child.stdout else ""
        os.kill(child.pid, signal.SIGKILL)  # mid-training, maybe mid-checkpoint
    finally:
        if child.poll() is None:
            child.kill()
        child.wait()
    assert child.returncode == -signal.SIGKILL
    assert not (root / "out" / "model.json").exists()
    killed_at = max(_steps(root / "scratch"))
    assert 20 <= killed_at < 120

    summary = train_local(make_ctx(root), train, val, p, root / "out")
    assert summary["resumed_from_step"] >= 20
    assert read_loss_csv(root / "out" / "loss.csv") == read_loss_csv(straight_out / "loss.csv")
    from safetensors.torch import load_file

    a = load_file(str(straight_out / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(root / "out" / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all((a[k] - b[k]).abs().max() <= 1e-7 for k in a)
