"""Small real plugins for the runner's tests. Each run is recorded (the spy) so tests can prove
that a stage did *not* run: in memory (``CALLS``) and, for subprocess runs, in ``$TP_SPY``."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tunepipe.plugins import Port, StageContext

CALLS: list[str] = []


def spy(ctx: StageContext) -> None:
    CALLS.append(ctx.stage)
    path = os.environ.get("TP_SPY")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(f"{ctx.stage} {os.getpid()}\n")


def read_all(value: Any) -> str:
    arts = value if isinstance(value, list) else [value]
    return "".join(p.read_bytes().decode("latin-1") for a in arts for p in a.files())


class Emit:
    """Writes ``text`` (and, if given, its inputs) to out/data.txt."""

    name = "emit"
    version = "1"
    description = "write a text"
    params_schema: Mapping[str, Any] = {
        "type": "object", "additionalProperties": False,
        "properties": {"text": {"type": "string", "default": "hello"},
                       "repeat": {"type": "integer", "minimum": 1, "default": 1},
                       "upper": {"type": "boolean", "default": False},
                       "sleep": {"type": "number", "default": 0},
                       "tags": {"type": "array", "items": {"type": "string"}},
                       "mode": {"enum": ["plain", "fancy"], "default": "plain"},
                       "extra": {"type": "object"}},
    }
    inputs = {"src": Port("anything", optional=True, multiple=True)}
    outputs = {"out": Port("data.txt")}
    packages: tuple[str, ...] = ()

    def run(self, ctx: StageContext, inputs: Mapping[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
        spy(ctx)
        if params["sleep"]:
            time.sleep(params["sleep"])
        text = params["text"] * params["repeat"]
        if params["upper"]:
            text = text.upper()
        if "src" in inputs:
            text = read_all(inputs["src"]) + text
        (ctx.output("out") / "data.txt").write_bytes(text.encode("latin-1", "replace"))
        ctx.log.info("wrote %d chars", len(text))
        return {"chars": len(text)}


class Length:
    """Writes only the length of its input: many inputs give identical bytes (stops a cascade)."""

    name = "length"
    version = "1"
    description = "length of the input"
    params_schema: Mapping[str, Any] = {"type": "object", "additionalProperties": False, "properties": {}}
    inputs = {"src": Port("text")}
    outputs = {"out": Port("len.txt")}
    packages: tuple[str, ...] = ()

    def run(self, ctx: StageContext, inputs: Mapping[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
        spy(ctx)
        n = len(read_all(inputs["src"]))
        (ctx.output("out") / "len.txt").write_text(str(n), encoding="utf-8")
        return {"length": n}

    def preview(self, inputs: Mapping[str, Any], params: Mapping[str, Any]) -> list[str]:
        """What --dry-run shows: computed from the input that exists (a cost estimate, say)."""
        text = read_all(inputs["src"])
        if text == "broken":
            raise ValueError("cannot preview this")
        return [f"would measure {len(text)} characters"]

    def describe(self, outputs: Mapping[str, Any], summary: Mapping[str, Any]) -> str:
        """What `pipeline show` adds: read from the published artifact."""
        n = (outputs["out"] / "len.txt").read_text(encoding="utf-8")
        return f"length table:\n| chars | {n} |\nreport: {outputs['out'] / 'len.txt'}"


class Fail:
    name = "fail"
    version = "1"
    description = "always fails"
    params_schema: Mapping[str, Any] = {"type": "object", "properties": {"message": {"type": "string", "default": "boom"}}}
    inputs = {"src": Port("anything", optional=True)}
    outputs = {"out": Port("nothing")}
    packages: tuple[str, ...] = ()

    def run(self, ctx: StageContext, inputs: Mapping[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
        spy(ctx)
        (ctx.output("out") / "partial.txt").write_text("half", encoding="utf-8")
        raise RuntimeError(params["message"])


class Big:
    """Writes ``mb`` megabytes in chunks, pausing at ``pause_file`` if it exists (for kill tests)."""

    name = "big"
    version = "1"
    description = "writes a large file slowly"
    params_schema: Mapping[str, Any] = {
        "type": "object",
        "properties": {"mb": {"type": "integer", "default": 4}, "seed": {"type": "integer", "default": 0},
                       "hold_while": {"type": "string", "default": ""}},
    }
    inputs = {"src": Port("anything", optional=True)}
    outputs = {"out": Port("big.bin")}
    packages: tuple[str, ...] = ()

    def run(self, ctx: StageContext, inputs: Mapping[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
        spy(ctx)
        import hashlib

        block = hashlib.sha256(str(params["seed"]).encode()).digest() * 32768  # 1 MiB
        with open(ctx.output("out") / "big.bin", "wb") as f:
            for i in range(params["mb"]):
                f.write(block)
                f.flush()
                hold = params["hold_while"]
                if i == 0 and hold:
                    Path(hold + ".started").write_text("x")
                    while Path(hold).exists():
                        time.sleep(0.02)
        return {"mb": params["mb"]}


class WithEnv:
    """Declares a package whose installed version enters its key."""

    name = "withenv"
    version = "1"
    description = "declares packages"
    params_schema: Mapping[str, Any] = {"type": "object"}
    inputs: Mapping[str, Port] = {}
    outputs = {"out": Port("x")}
    packages = ("click", "no-such-distribution-xyz")

    def run(self, ctx: StageContext, inputs: Mapping[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
        spy(ctx)
        (ctx.output("out") / "x").write_text("x")
        return {}


class NotAPlugin:
    name = "broken"
    version = 3


class Rendezvous:
    """Succeeds only if its peer stage runs at the same time (proves ``-j`` concurrency)."""

    name = "rendezvous"
    version = "1"
    description = "meet a concurrently running peer"
    params_schema: Mapping[str, Any] = {"type": "object", "properties": {"me": {"type": "string"},
                                                                       "peer": {"type": "string"}}}
    inputs: Mapping[str, Port] = {}
    outputs = {"out": Port("x")}
    packages: tuple[str, ...] = ()

    def run(self, ctx: StageContext, inputs: Mapping[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
        spy(ctx)
        (ctx.scratch.parent / f"rdv-{params['me']}").write_text("here")
        deadline = time.monotonic() + 20
        while not (ctx.scratch.parent / f"rdv-{params['peer']}").exists():
            if time.monotonic() > deadline:
                raise RuntimeError(f"{params['peer']} never started while {params['me']} ran")
            time.sleep(0.01)
        (ctx.output("out") / "x").write_text(params["me"])
        return {}


class Leaky:
    """Logs the OpenAI key by mistake: the log must show it redacted."""

    name = "leaky"
    version = "1"
    description = "logs a secret"
    params_schema: Mapping[str, Any] = {"type": "object"}
    inputs: Mapping[str, Port] = {}
    outputs = {"out": Port("x")}
    packages: tuple[str, ...] = ()

    def run(self, ctx: StageContext, inputs: Mapping[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
        spy(ctx)
        ctx.log.info("calling the API with key %s", os.environ["OPENAI_API_KEY"])
        ctx.say(f"estimated cost $0.12 (key {os.environ['OPENAI_API_KEY']})")
        (ctx.output("out") / "x").write_text("x")
        return {"used_key": os.environ["OPENAI_API_KEY"][:3]}


class BadSchema:
    """Publishes a parameter schema that is not valid JSON Schema."""

    name = "badschema"
    version = "1"
    description = "invalid params schema"
    params_schema: Mapping[str, Any] = {"type": "object", "properties": {"x": {"type": "integr"}}}
    inputs: Mapping[str, Port] = {}
    outputs = {"out": Port("x")}
    packages: tuple[str, ...] = ()

    def run(self, ctx: StageContext, inputs: Mapping[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
        return {}
