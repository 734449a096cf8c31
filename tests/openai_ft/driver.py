"""Run train_openai in a process of its own (for the kill -9 tests): ``python driver.py SPEC.json``.

SPEC: {"root", "key", "stage", "train", "validation", "params"}. Writes ROOT/summary.json on success;
exit 2 on a UserError, 1 on another TunepipeError.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from tunepipe.errors import TunepipeError
from tunepipe.openai_ft.backend import train_openai
from tunepipe.plugins import StageContext


def main(spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    root = Path(spec["root"])
    (root / "scratch").mkdir(parents=True, exist_ok=True)
    (root / "out").mkdir(parents=True, exist_ok=True)
    log = logging.getLogger("driver")
    log.setLevel(logging.DEBUG)
    handler = logging.FileHandler(root / "stage.log", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    log.addHandler(handler)
    ctx = StageContext(stage=spec["stage"], key=spec["key"], outputs={"model": root / "out"},
                       scratch=root / "scratch", log=log)
    try:
        summary = train_openai(ctx, Path(spec["train"]), Path(spec["validation"]) if spec.get("validation") else None,
                               spec["params"], root / "out")
    except TunepipeError as e:
        print(e, file=sys.stderr)
        return e.exit_code
    (root / "summary.json").write_text(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
