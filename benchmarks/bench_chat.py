"""`pipeline chat --prompt`: time to first token and tokens per second, local model on CPU.

Two views, both on the main job's fine-tuned SmolLM2 (run `pipeline run pipelines/sarcasm.yaml`
first):

* **cold, from outside**: `pipeline chat FILE --prompt P` as a subprocess, its stdout read as bytes
  arrive (this harness's clock, not tunepipe's): start to first reply byte (Python start-up,
  imports, model load, prompt, first token), then first to last reply byte; the reply's tokens
  are counted with the model's tokenizer.
* **warm, in process**: the same replier with the model loaded once, as a REPL turn or a
  server request sees it: time to the first streamed piece, and tokens per second of the rest.

Usage: python benchmarks/bench_chat.py [--file pipelines/sarcasm.yaml] [--tokens 64] [--runs 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

PROMPTS = ["What is the capital of France?", "How many legs does a spider have?",
           "Who wrote Romeo and Juliet?", "What is the boiling point of water?", "Why is the sky blue?"]
ROOT = Path(__file__).resolve().parents[1]


def cold(file: str, prompt: str, tokens: int) -> tuple[float, float, str]:
    """(seconds to the first reply byte, seconds from it to the end, the reply) of one process."""
    cmd = [sys.executable, "-m", "tunepipe", "chat", file, "--prompt", prompt, "--max-new-tokens", str(tokens)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, bufsize=0)
    assert proc.stdout is not None
    chunks: list[tuple[float, bytes]] = []
    while chunk := os.read(proc.stdout.fileno(), 4096):  # the time of each piece as it arrives
        chunks.append((time.perf_counter(), chunk))
    proc.wait()
    text = b"".join(c for _, c in chunks).decode("utf-8", "replace")
    return chunks[0][0] - t0, chunks[-1][0] - chunks[0][0], text


def warm(file: str, tokens: int, runs: int, count: Any) -> list[tuple[float, float, int]]:
    """(seconds to the first piece, seconds for the rest, tokens) per prompt, model loaded once."""
    from tunepipe.replies import Decoding, Prompt
    from tunepipe.session import open_session
    from tunepipe.trained import context, find_trained

    session = open_session(file)
    trained = find_trained(session, None)
    out = []
    with context(session, trained.stage) as ctx:
        replier = trained.backend.replier(ctx, trained.ref, base=False, settings=dict(trained.params))
        "".join(replier.stream(Prompt([{"role": "user", "content": "hi"}]), Decoding(4)))  # load the model
        for prompt in (PROMPTS * runs)[:runs]:
            messages = [{"role": "system", "content": "Marv is a factual chatbot that is also sarcastic."},
                        {"role": "user", "content": prompt}]
            t0 = time.perf_counter()
            pieces = replier.stream(Prompt(messages), Decoding(tokens))
            first = next(pieces)
            t1 = time.perf_counter()
            text = first + "".join(pieces)
            t2 = time.perf_counter()
            out.append((t1 - t0, t2 - t1, count(text)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--file", default="pipelines/sarcasm.yaml")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    from transformers import AutoTokenizer

    from tunepipe.session import open_session
    from tunepipe.trained import find_trained

    tok = AutoTokenizer.from_pretrained(str(find_trained(open_session(args.file), None).ref.folder / "tokenizer"))

    def count(text: str) -> int:
        return len(tok(text.strip(), add_special_tokens=False)["input_ids"])

    rows = []
    for prompt in (PROMPTS * args.runs)[:args.runs]:
        first, rest, reply = cold(args.file, prompt, args.tokens)
        n = count(reply)
        rows.append((first, rest, n))
        print(f"cold  {first:6.2f} s to first byte, {n:3d} tokens in {rest:5.2f} s  {reply.strip()[:60]!r}",
              file=sys.stderr)
    w = warm(args.file, args.tokens, args.runs, count)
    for first, rest, n in w:
        print(f"warm  {first * 1000:6.0f} ms to first piece, {n:3d} tokens in {rest:5.2f} s", file=sys.stderr)

    def rate(rs: list[tuple[float, float, int]]) -> float:
        return statistics.median((n - 1) / rest for _, rest, n in rs if rest > 0 and n > 1)

    print(f"| cold: `pipeline chat --prompt` process | first reply byte {statistics.median(r[0] for r in rows):.2f} s "
          f"(median of {len(rows)}) | {rate(rows):.1f} tokens/s after it |")
    print(f"| warm: model loaded (REPL turn) | first piece {statistics.median(r[0] for r in w) * 1000:.0f} ms "
          f"| {rate(w):.1f} tokens/s after it |")


if __name__ == "__main__":
    main()
