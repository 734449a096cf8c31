from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import tp_testplugins
from click.testing import CliRunner, Result

from tunepipe.cli import cli

SUPPORT = Path(__file__).parent / "support"

# tp_testplugins (``uses: tp_testplugins:Emit``) lives in tests/support, outside each test's project:
# a shared plugin folder, trusted like a user's. Set at import so `pipeline` child processes (and Ray
# workers started from here) inherit it with the rest of os.environ.
os.environ["TUNEPIPE_PLUGIN_PATH"] = os.pathsep.join(
    p for p in (str(SUPPORT), os.environ.get("TUNEPIPE_PLUGIN_PATH", "")) if p)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that start Ray in this process run after all others, and those that drive a Ray Train
    job after them: a process running Ray has its threads in every later fork, and one that has
    driven Ray Train was seen to block for good in Ray's global-state client (``ray.nodes()``).
    Stable, so the order within each group stays the files' order."""
    def group(item: pytest.Item) -> int:
        if item.get_closest_marker("ray_train"):
            return 2
        return 1 if "ray_local" in getattr(item, "fixturenames", ()) else 0

    items.sort(key=group)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("TUNEPIPE_CACHE", "TUNEPIPE_CRASHPOINT", "TP_SPY", "TUNEPIPE_SECRET_ENV"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_COLOR", "1")
    tp_testplugins.CALLS.clear()


def _default_sigint() -> None:
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Project:
    """A pipeline project in a temporary folder, run through the real CLI."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.cache = root / ".tunepipe"

    def write(self, rel: str, text: str) -> Path:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text), encoding="utf-8")
        return path

    def spec(self, text: str, name: str = "p.yaml") -> Path:
        return self.write(name, text)

    def run(self, *args: str, input: str | None = None) -> Result:
        """``pipeline ARGS`` in this process (the spy sees which plugins ran); ``input``: its stdin."""
        return CliRunner().invoke(cli, list(args), input=input, catch_exceptions=False)

    def ok(self, *args: str) -> Result:
        result = self.run(*args)
        assert result.exit_code == 0, result.output
        return result

    def calls(self) -> list[str]:
        out = list(tp_testplugins.CALLS)
        tp_testplugins.CALLS.clear()
        return out

    def artifact(self, stage: str, output: str = "out") -> Path:
        info = json.loads(self.ok("show", "p.yaml", stage, "--json").stdout)
        return Path(info["outputs"][output]["path"])

    def subprocess(self, *args: str, env: dict[str, str] | None = None, **kw) -> subprocess.Popen:
        """``pipeline ARGS`` as a separate process (for kill -9 and concurrency tests)."""
        full_env = {**os.environ, "PYTHONPATH": str(SUPPORT), "NO_COLOR": "1", **(env or {})}
        # Ctrl-C must reach the child even when the test run itself was started in the background,
        # where the shell ignores SIGINT and children would inherit that.
        options = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True,
                   "preexec_fn": _default_sigint, **kw}
        return subprocess.Popen([sys.executable, "-m", "tunepipe", *args], cwd=self.root, env=full_env, **options)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Path:
    """A tiny random Llama on the real SmolLM2 tokenizer (built once, kept in pytest's cache)."""
    from tiny_model import tiny_model_dir

    cache = getattr(request.config, "cache", None)  # None with -p no:cacheprovider
    return tiny_model_dir(tmp_path_factory, cache=cache.mkdir("tunepipe-hf") if cache is not None else None)


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Project:
    monkeypatch.chdir(tmp_path)
    return Project(tmp_path)
