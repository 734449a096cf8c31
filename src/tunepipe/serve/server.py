"""Running the app: uvicorn on a socket bound first, so that a port in use is a one-line
:class:`~tunepipe.errors.UserError` before the model loads (uvicorn itself would log and exit), and
logs (uvicorn's, access lines included) on stderr, leaving stdout to the caller."""

from __future__ import annotations

import copy
import errno
import socket
from typing import Any

from tunepipe.errors import UserError
from tunepipe.replies import Replier


def bind(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` (port 0: any free one), or a UserError that says why not."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a port in TIME_WAIT is free; one in use is not
        sock.bind((host, port))
        sock.listen(2048)  # claimed now: a second server on this port fails here, not inside uvicorn
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise UserError(f"port {port} on {host} is in use: another program listens there (stop it, or "
                            "give another with --port)") from None
        raise UserError(f"cannot listen on {host}:{port}: {e.strerror or e}; give another --host or --port") from None
    return sock


def server(app: Any, *, log: str = "info") -> Any:
    """A uvicorn ``Server`` for ``app`` (run it with ``.run(sockets=[bind(...)])``; set
    ``.should_exit`` to stop it). ``log``: uvicorn's log level (``info`` logs each request)."""
    import uvicorn
    from uvicorn.config import LOGGING_CONFIG

    logging = copy.deepcopy(LOGGING_CONFIG)
    logging["handlers"]["access"]["stream"] = "ext://sys.stderr"
    config = uvicorn.Config(app, log_level=log, log_config=logging, timeout_graceful_shutdown=5)
    return uvicorn.Server(config)


def run_server(app_or_replier: Any, host: str = "127.0.0.1", port: int = 8000, *, log: str = "info") -> None:
    """Serve until interrupted. ``app_or_replier``: an app from :func:`~tunepipe.serve.app.make_app`,
    or a replier (served under its ``name``). The port is bound and the model loaded before the
    server starts, so both fail as errors, not log lines. On Ctrl-C (or SIGTERM) uvicorn lets the
    requests in flight finish (5 s at most), then raises the signal again: KeyboardInterrupt."""
    from tunepipe.serve.app import make_app

    if isinstance(app_or_replier, Replier):
        app_or_replier = make_app(app_or_replier, app_or_replier.name)
    sock = bind(host, port)
    with sock:
        served = getattr(app_or_replier.state, "served", None)
        if served is not None:
            served.warm()
        server(app_or_replier, log=log).run(sockets=[sock])
