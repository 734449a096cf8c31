"""Benchmark: the OpenAI-compatible server's throughput with 1, 4 and 16 concurrent clients.

The server (``tunepipe.serve.run_server``, a LocalReplier on the packaged SmolLM2-135M-Instruct,
converted from its GGUF once into ``--models``) runs in its own process, as a user runs it; the
clients are threads using the official ``openai`` SDK. Every request asks one of a fixed set of 16
prompts, greedy, at most ``--max-tokens`` tokens. Per concurrency: requests/s, p50/p95 latency and
completion tokens/s; then the time to a stream's first piece with one client. Run with:

    python benchmarks/bench_serve.py [--requests 16] [--max-tokens 64] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

QUESTIONS = [
    "What's the capital of France?", "Who wrote 'Romeo and Juliet'?", "How far is the Moon?", "What is 2 + 2?",
    "Who painted the Mona Lisa?", "What is the boiling point of water?", "How many legs does a spider have?",
    "What's the largest ocean?", "Why is the sky blue?", "What is photosynthesis?", "Who was Ada Lovelace?",
    "How do vaccines work?", "What is a black hole?", "Name three prime numbers.", "What does DNA stand for?",
    "How long is a marathon?",
]
SYSTEM = "Marv is a factual chatbot that is also sarcastic."
MODEL = "smollm2-135m-instruct"


def make_artifact(models: Path, out: Path) -> Path:
    """A model reference (kind full) whose weights and tokenizer are the converted packaged base."""
    from tunepipe import modelref
    from tunepipe.hf.models import resolve_base

    source = resolve_base(MODEL, models, say=lambda s: print(s, file=sys.stderr))
    modelref.write(out, {"backend": "local", "base_model": MODEL, "kind": "full", "full": source.location,
                         "tokenizer": source.location, "chat_template": True})
    return out


def serve(artifact: Path, port: int, threads: int, max_batch: int, verbose: bool) -> None:
    """The server process: a LocalReplier on ``artifact`` behind run_server."""
    import logging

    from tunepipe import modelref
    from tunepipe.hf.replier import LocalReplier
    from tunepipe.plugins import StageContext
    from tunepipe.serve import make_app, run_server

    scratch = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    ctx = StageContext(stage="serve", key="bench", outputs={}, scratch=scratch, log=logging.getLogger("bench"),
                       threads=threads)
    replier = LocalReplier(ctx, modelref.read(artifact), base=False,
                           settings={"device": "cpu", "threads": threads, "batch_size": max_batch})
    try:
        run_server(make_app(replier, MODEL, max_batch=max_batch), "127.0.0.1", port,
                   log="info" if verbose else "warning")
    except KeyboardInterrupt:  # the parent's SIGINT: uvicorn shut down cleanly, then re-raised it
        pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(port: int, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited ({proc.returncode})")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise SystemExit("the server did not become ready")


def load(client: Any, clients: int, requests: int, max_tokens: int) -> dict[str, float]:
    """``requests`` requests from ``clients`` threads at once; latency and throughput."""
    def one(i: int) -> tuple[float, int]:
        t0 = time.perf_counter()
        answer = client.chat.completions.create(
            model=MODEL, max_tokens=max_tokens, temperature=0,
            messages=[{"role": "system", "content": SYSTEM},
                      {"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}])
        return time.perf_counter() - t0, answer.usage.completion_tokens

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(one, range(requests)))
    wall = time.perf_counter() - t0
    latencies = sorted(r[0] for r in results)
    return {"wall": wall, "rps": requests / wall, "p50": statistics.median(latencies),
            "p95": latencies[min(len(latencies) - 1, round(0.95 * (len(latencies) - 1)))],
            "tps": sum(r[1] for r in results) / wall, "tokens": sum(r[1] for r in results) / requests}


def first_token(client: Any, max_tokens: int, repeat: int = 5) -> float:
    """The median time to the first content chunk of a stream, one client."""
    times = []
    for i in range(repeat):
        t0 = time.perf_counter()
        stream = client.chat.completions.create(
            model=MODEL, max_tokens=max_tokens, temperature=0, stream=True,
            messages=[{"role": "user", "content": QUESTIONS[i]}])
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                times.append(time.perf_counter() - t0)
                break
        stream.close()
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=16, help="requests per concurrency level (x2 for 16 clients)")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch CPU threads of the server")
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--models", type=Path, default=None, help="keep the converted model here between runs")
    ap.add_argument("--verbose", action="store_true")
    ap.add_argument("--serve", nargs=2, metavar=("ARTIFACT", "PORT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve(Path(args.serve[0]), int(args.serve[1]), args.threads, args.max_batch, args.verbose)
        return

    import openai

    with tempfile.TemporaryDirectory() as tmp:
        models = args.models or Path(tmp) / "models"
        t0 = time.perf_counter()
        artifact = make_artifact(models, Path(tmp) / "artifact")
        print(f"model ready in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        port = free_port()
        cmd = [sys.executable, __file__, "--serve", str(artifact), str(port), "--threads", str(args.threads),
               "--max-batch", str(args.max_batch)] + (["--verbose"] if args.verbose else [])
        proc = subprocess.Popen(cmd)
        try:
            t0 = time.perf_counter()
            wait_ready(port, proc)
            start_s = time.perf_counter() - t0
            client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0,
                                   timeout=600)
            load(client, 1, 2, args.max_tokens)  # warm-up
            rows = {c: load(client, c, args.requests * (2 if c == 16 else 1), args.max_tokens) for c in (1, 4, 16)}
            ttft = first_token(client, args.max_tokens)
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=60)
    print(f"server start (process, model load) {start_s:.1f} s; stream time to first token (1 client) "
          f"{ttft * 1000:.0f} ms; {args.max_tokens} max tokens, greedy, {args.threads} torch threads, "
          f"max_batch {args.max_batch}\n")
    print("| clients | requests | wall | requests/s | p50 latency | p95 latency | tokens/s | tokens/reply |")
    print("|---|---|---|---|---|---|---|---|")
    for c, r in rows.items():
        n = args.requests * (2 if c == 16 else 1)
        print(f"| {c} | {n} | {r['wall']:.1f} s | {r['rps']:.2f} | {r['p50']:.2f} s | {r['p95']:.2f} s | "
              f"{r['tps']:.1f} | {r['tokens']:.1f} |")
    print("\n" + json.dumps({str(c): {k: round(v, 3) for k, v in r.items()} for c, r in rows.items()}),
          file=sys.stderr)


if __name__ == "__main__":
    main()
