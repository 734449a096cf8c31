"""Helpers of the evaluate stage's tests (fixtures are in conftest.py; tests/stages imports this too)."""

from __future__ import annotations

import json
import shutil
import struct
import zlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import stage_ctx
from marv_qa import QA, SYSTEM, chat  # noqa: F401  (the tests import them from here)


def chats(n: int) -> list[dict[str, Any]]:
    return [chat(*QA[i % len(QA)]) for i in range(n)]


def write_jsonl(path: Path, records: Iterable[Mapping[str, Any] | str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
    return path


def make_ctx(root: Path, name: str = "evaluate", shared: Path | None = None) -> Any:
    """A StageContext like the runner's, with the evaluate stage's output ``report``."""
    return stage_ctx.make_ctx(root, name, "report", shared)


def params(**over: Any) -> dict[str, Any]:
    """The evaluate stage's parameters with the schema's defaults (as the runner hands them)."""
    from tunepipe.spec.schema import with_defaults
    from tunepipe.stages.evaluate import Evaluate

    return with_defaults(Evaluate.params_schema, over)


def artifact(path: Path, name: str, digest: str = "") -> Any:
    from tunepipe.plugins import Artifact

    return Artifact(path, digest or f"digest-of-{name}", name)


def local_artifact(folder: Path, tiny_model: Path, *, loss: bool = True) -> Path:
    """A train artifact of kind full whose weights are the tiny model (as the local backend writes it)."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copytree(tiny_model, folder / "full", dirs_exist_ok=True)
    shutil.copytree(tiny_model, folder / "tokenizer", dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("*.safetensors", "config.json", "generation_config.json"))
    info = {"format": "tunepipe-model/1", "backend": "local", "base_model": str(tiny_model),
            "base_source": {"kind": "folder", "location": str(tiny_model), "identity": "folder:tiny"},
            "kind": "full", "adapter": None, "merged": None, "full": "full", "tokenizer": "tokenizer",
            "chat_template": True, "max_seq_length": 256, "device": "cpu", "dtype": "float32"}
    (folder / "model.json").write_text(json.dumps(info))
    if loss:
        lines = ["step,epoch,train_loss,val_loss,learning_rate,tokens"]
        for s in range(1, 13):
            val = f"{2.6 - 0.1 * s:.3f}" if s % 4 == 0 else ""
            lines.append(f"{s},{1 + (s - 1) // 6},{3.0 - 0.15 * s + 0.05 * (s % 2):.3f},{val},0.001,{40 * s}")
        (folder / "loss.csv").write_text("\n".join(lines) + "\n")
        (folder / "metrics.json").write_text(json.dumps({"kind": "full", "steps": 12,
                                                         "train_loss": {"first": 2.9, "last": 1.2}}))
    return folder


def openai_artifact(folder: Path, base: str = "gpt-4o-mini-2024-07-18",
                    tuned: str = "ft:gpt-4o-mini-2024-07-18:aimock:marv:abc123") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.json").write_text(json.dumps({"format": "tunepipe-model/1", "backend": "openai",
                                                   "base_model": base, "fine_tuned_model": tuned}))
    (folder / "loss.csv").write_text("step,train_loss,valid_loss\n1,2.5,\n2,2.1,2.3\n3,1.7,\n4,1.4,1.9\n")
    (folder / "metrics.json").write_text(json.dumps({"steps": 4, "final_train_loss": 1.4, "final_valid_loss": 1.9}))
    return folder


def chat_fixtures(pairs: Iterable[tuple[str, str, str]]) -> list[dict[str, Any]]:
    """aimock chat fixtures: (model, substring of the last user message, reply)."""
    return [{"match": {"model": model, "userMessage": user}, "response": {"content": reply}}
            for model, user, reply in pairs]


# --- PNG: decode enough to tell a blank screenshot from a rendered page -----------------------------

def png_pixels(path: Path, max_rows: int | None = None) -> tuple[int, int, int, list[bytes]]:
    """(width, height, channels, the first ``max_rows`` rows of raw RGB(A) bytes) of an 8-bit
    non-interlaced PNG (what Chromium writes); pure Python, so keep ``max_rows`` modest."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG file"
    pos, idat, width = 8, b"", 0
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", body)
            assert depth == 8 and color in (2, 6) and interlace == 0, (depth, color, interlace)
            channels = 3 if color == 2 else 4
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    raw = zlib.decompress(idat)
    stride = width * channels
    rows: list[bytes] = []
    prev = bytearray(stride)
    i = 0
    for _ in range(height if max_rows is None else min(height, max_rows)):
        ftype, line = raw[i], bytearray(raw[i + 1:i + 1 + stride])
        i += 1 + stride
        for x in range(stride):
            a = line[x - channels] if x >= channels else 0
            b, c = prev[x], prev[x - channels] if x >= channels else 0
            if ftype == 1:
                line[x] = (line[x] + a) & 255
            elif ftype == 2:
                line[x] = (line[x] + b) & 255
            elif ftype == 3:
                line[x] = (line[x] + (a + b) // 2) & 255
            elif ftype == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[x] = (line[x] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(bytes(line))
        prev = line
    return width, height, channels, rows
