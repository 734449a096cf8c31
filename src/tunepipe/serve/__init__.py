"""An OpenAI-compatible HTTP server over a :class:`~tunepipe.replies.Replier`.

``make_app(replier, model_id)`` is the ASGI app (starlette), ``run_server(app, host, port)`` runs
it with uvicorn. Applications written for OpenAI switch to it by their ``base_url``. Parts:
:mod:`~tunepipe.serve.openai_api` (the wire format), :mod:`~tunepipe.serve.batcher` (the queue in
front of the model), :mod:`~tunepipe.serve.stops` (stop sequences), :mod:`~tunepipe.serve.app`
(the endpoints), :mod:`~tunepipe.serve.server` (binding and running).

Importing this package costs nothing: starlette and uvicorn (the ``serve`` extra) load with the
first name used, and their absence is a UserError that says what to install.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

from tunepipe.errors import UserError

_WHERE = {"make_app": "app", "Measures": "app", "run_server": "server", "bind": "server", "Batcher": "batcher"}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'tunepipe.serve' has no attribute {name!r}")
    missing = [m for m in ("starlette", "uvicorn") if importlib.util.find_spec(m) is None]
    if missing:
        raise UserError(f"serving needs {' and '.join(missing)}, which are not installed: "
                        "pip install 'tunepipe[serve]'")
    return getattr(importlib.import_module(f"tunepipe.serve.{_WHERE[name]}"), name)
