"""An example tunepipe stage plugin package: ``shout`` upper-cases text, ``times`` times.

Its pipeline fragment, ``fragments/text.yaml``, ships with it; a pipeline uses it with
``include: [tp_example:fragments/text.yaml]``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tunepipe.plugins import Port, StageContext


class Shout:
    name = "shout"
    version = "0.3.0"
    description = "Upper-case the text of its inputs and repeat it."
    params_schema: Mapping[str, Any] = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "times": {"type": "integer", "minimum": 1, "default": 1, "description": "How often to repeat the text."},
            "suffix": {"type": "string", "default": "!", "description": "Written after each repetition."},
        },
    }
    inputs = {"src": Port("text files or stage outputs", multiple=True)}
    outputs = {"out": Port("shout.txt")}
    packages: tuple[str, ...] = ()

    def run(self, ctx: StageContext, inputs: Mapping[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
        text = "".join(p.read_text(encoding="utf-8") for a in inputs["src"] for p in a.files()).strip().upper()
        out = "".join(text + params["suffix"] + "\n" for _ in range(params["times"]))
        (ctx.output("out") / "shout.txt").write_text(out, encoding="utf-8")
        ctx.log.info("shouted %d characters %d times", len(text), params["times"])
        return {"chars": len(out)}
