"""The real OpenAI API emulator for tests: @copilotkit/aimock, pinned in tests/emulator.

Install once (Node 20+): ``npm ci --prefix tests/emulator``. Without ``node`` the fixtures skip (and
say why); without the installed package they fail with that command.

Use in a test module (or a conftest) by importing the fixtures::

    from aimock import aimock, aimock_factory, aimock_server  # noqa: F401  (pytest fixtures)

    def test_something(aimock):            # a shared emulator, reset for this test
        client = openai.OpenAI(api_key="sk-test", base_url=aimock.base_url)
        ...
        assert len(aimock.job_creates()) == 1

    def test_keys(aimock_factory):         # an emulator of its own, e.g. enforcing an API key
        server = aimock_factory(api_keys=["sk-good"])

``aimock`` is one emulator per test session, reset (files, jobs, journal, fixtures, chaos) before each
test; ``aimock_factory(...)`` starts extra ones, stopped at the end of the test. Outside pytest,
:func:`start_aimock` returns a running :class:`Aimock`; call ``stop()``.

What the emulator does and does not do: see shared/notes/openai.md (fine-tuning jobs advance one
status per retrieve; checkpoints are 404; result files cannot be downloaded; jobs never fail by
themselves). Faults: the request headers ``x-aimock-chaos-ratelimit: 1`` (429 + Retry-After: 1),
``x-aimock-chaos-drop: 1`` (500) and ``x-aimock-chaos-disconnect: 1``, or server-wide rates with
:meth:`Aimock.set_chaos`.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

EMULATOR_DIR = Path(__file__).resolve().parents[1] / "emulator"
PACKAGE = "@copilotkit/aimock"
VERSION = "1.43.0"
CLI = EMULATOR_DIR / "node_modules" / "@copilotkit" / "aimock" / "dist" / "cli.js"
INSTALL = "npm ci --prefix tests/emulator"
START_TIMEOUT_S = 15.0


class AimockUnavailable(RuntimeError):
    """The emulator cannot start here; ``skip`` says whether a test should skip rather than fail."""

    def __init__(self, message: str, skip: bool = False) -> None:
        super().__init__(message)
        self.skip = skip


def node_binary() -> str:
    node = shutil.which("node")
    if node is None:
        raise AimockUnavailable("node is not installed (Node 20+ runs the OpenAI emulator @copilotkit/aimock); "
                                "install Node.js, then " + INSTALL, skip=True)
    return node


def check_installed() -> None:
    if not CLI.is_file():
        raise AimockUnavailable(f"the OpenAI emulator {PACKAGE} {VERSION} is not installed in tests/emulator: "
                                f"run `{INSTALL}` from the repository root")
    try:
        installed = json.loads((CLI.parents[1] / "package.json").read_text())["version"]
    except (OSError, ValueError, KeyError):
        installed = "?"
    if installed != VERSION:
        raise AimockUnavailable(f"tests/emulator has {PACKAGE} {installed}, the tests need {VERSION}: run `{INSTALL}`")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Aimock:
    """A running emulator: its URLs, its control API (journal, reset, chaos) and ``stop()``."""

    def __init__(self, proc: subprocess.Popen[bytes], port: int, workdir: Path,
                 api_keys: Sequence[str] | None) -> None:
        self.proc, self.port, self.workdir = proc, port, workdir
        self.api_keys = list(api_keys or [])
        self.url = f"http://127.0.0.1:{port}"
        self.base_url = f"{self.url}/v1"  # for openai.OpenAI(base_url=...)

    # -- control API ---------------------------------------------------------------------------
    def request(self, method: str, path: str, body: Any = None, timeout: float = 10.0) -> Any:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if data else {}
        if self.api_keys:  # an emulator that enforces keys wants one on its control API too
            headers["Authorization"] = f"Bearer {self.api_keys[0]}"
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            text = resp.read().decode()
        return json.loads(text) if text else None

    def journal(self, *, path: str | None = None, method: str | None = None,
                status: int | None = None) -> list[dict[str, Any]]:
        """Every request the emulator saw (oldest first), optionally filtered (path: a substring)."""
        query = {k: v for k, v in (("path", path), ("method", method), ("status", status)) if v is not None}
        suffix = "?" + urllib.parse.urlencode(query) if query else ""
        return self.request("GET", "/__aimock/journal" + suffix)

    def job_creates(self, status: int | None = 200) -> list[dict[str, Any]]:
        """The ``POST /v1/fine_tuning/jobs`` requests (by default: those that created a job)."""
        return [e for e in self.journal(path="/v1/fine_tuning/jobs", method="POST", status=status)
                if e["path"].split("?")[0].rstrip("/") == "/v1/fine_tuning/jobs"]

    def uploads(self, status: int | None = 200) -> list[dict[str, Any]]:
        """The ``POST /v1/files`` requests; each body has purpose, filename, bytes and sha256."""
        return [e for e in self.journal(path="/v1/files", method="POST", status=status)
                if e["path"].split("?")[0].rstrip("/") == "/v1/files"]

    def chaos_answers(self, action: str | None = None) -> list[dict[str, Any]]:
        """The requests chaos answered instead of the emulator (``action``: drop, malformed, rateLimit,
        disconnect). Chaos strikes before a request is handled: it created nothing."""
        return [e for e in self.journal() if (e.get("response") or {}).get("chaosAction")
                and action in (None, e["response"]["chaosAction"])]

    def job_creates_handled(self) -> list[dict[str, Any]]:
        """The job creates that really created a job: a malformed answer from chaos is journalled with
        status 200 too (and ``job_creates()`` counts it), but the request never reached the handler."""
        return [e for e in self.job_creates() if not (e.get("response") or {}).get("chaosAction")]

    def fine_tuning_jobs(self) -> list[dict[str, Any]]:
        """Every job the emulator holds, newest first (an API request like any other: clear chaos first)."""
        return self.request("GET", "/v1/fine_tuning/jobs?limit=100")["data"]

    def reset(self) -> None:
        """Forget files, jobs, the journal, fixtures and server-wide chaos."""
        self.request("POST", "/__aimock/reset")
        self.clear_chaos()

    def set_chaos(self, **rates: float) -> None:
        """Server-wide fault rates, e.g. ``set_chaos(rateLimitRate=1)`` (dropRate, disconnectRate,
        malformedRate, latencyMs)."""
        self.request("POST", "/__aimock/chaos", rates)

    def clear_chaos(self) -> None:
        self.request("DELETE", "/__aimock/chaos")

    def set_fixtures(self, fixtures: list[dict[str, Any]]) -> None:
        """Chat-completion fixtures, e.g. ``[{"match": {"userMessage": "hi"}, "response": {"content": "yo"}}]``."""
        self.request("POST", "/__aimock/fixtures", {"fixtures": fixtures})

    def log_text(self) -> str:
        try:
            return (self.workdir / "aimock.log").read_text(errors="replace")
        except OSError:
            return ""

    # -- lifecycle -----------------------------------------------------------------------------
    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        shutil.rmtree(self.workdir, ignore_errors=True)


def start_aimock(*, api_keys: Sequence[str] | None = None, fixtures: list[dict[str, Any]] | None = None,
                 extra_args: Sequence[str] = ()) -> Aimock:
    """Start an emulator on a free 127.0.0.1 port and wait until it answers (about 0.2 s)."""
    node = node_binary()
    check_installed()
    workdir = Path(tempfile.mkdtemp(prefix="aimock-"))
    (workdir / "fixtures.json").write_text(json.dumps({"fixtures": fixtures or []}))
    env = {k: v for k, v in os.environ.items() if k != "AIMOCK_API_KEYS"}
    if api_keys:
        env["AIMOCK_API_KEYS"] = ",".join(api_keys)
    last_error = ""
    for _ in range(3):  # a port taken between choosing and binding: try another
        port = free_port()
        log = open(workdir / "aimock.log", "wb")
        proc = subprocess.Popen([node, str(CLI), "--host", "127.0.0.1", "--port", str(port),
                                 "-f", str(workdir / "fixtures.json"), "--log-level", "warn",
                                 "--journal-max", "0", *extra_args],
                                cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        server = Aimock(proc, port, workdir, api_keys)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if server.request("GET", "/__aimock/health", timeout=1.0).get("status") == "ok":
                    return server
            except (urllib.error.URLError, OSError, ValueError):
                time.sleep(0.05)
        last_error = server.log_text()
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)
    shutil.rmtree(workdir, ignore_errors=True)
    raise AimockUnavailable(f"the OpenAI emulator did not start: {last_error.strip()[-2000:] or 'no output'}")


def _start_or_skip(**kwargs: Any) -> Aimock:
    try:
        return start_aimock(**kwargs)
    except AimockUnavailable as e:
        if e.skip:
            pytest.skip(str(e))
        pytest.fail(str(e), pytrace=False)


@pytest.fixture(scope="session")
def aimock_server() -> Iterator[Aimock]:
    """One emulator for the whole test session (use ``aimock`` to get it reset)."""
    server = _start_or_skip()
    yield server
    server.stop()


@pytest.fixture
def aimock(aimock_server: Aimock) -> Aimock:
    """The session's emulator, reset for this test."""
    if not aimock_server.alive():
        pytest.fail(f"the OpenAI emulator died: {aimock_server.log_text()[-2000:]}", pytrace=False)
    aimock_server.reset()
    return aimock_server


@pytest.fixture
def aimock_factory() -> Iterator[Callable[..., Aimock]]:
    """Start emulators of this test's own: ``aimock_factory(api_keys=["sk-good"], fixtures=[...])``."""
    started: list[Aimock] = []

    def factory(**kwargs: Any) -> Aimock:
        server = _start_or_skip(**kwargs)
        started.append(server)
        return server

    yield factory
    for server in started:
        server.stop()
