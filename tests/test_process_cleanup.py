"""No process of a run outlives it: Ctrl-C, SIGTERM or ``kill -9`` of ``pipeline run`` while the
clean or format stage has its worker processes busy takes every one of them along, so whatever
captures the run's output (CI, a pipe) sees it end; and a signal at any moment of start-up ends the
command with 130, never click's ``Aborted!`` or a traceback.

Real processes: each run starts in a session of its own, and "the run's processes" are the live
members of that session (read from /proc, so Linux only), whoever their parent is by then.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads processes from /proc")

RECORDS = 150_000  # a few seconds of pool work for clean or format on two cores
WORDS = ("marv sarcastic answer question paris france capital obviously map river mountain ocean planet "
         "physics history poem number seven twelve because however really").split()
SIGTERM_BIT = 1 << (signal.SIGTERM - 1)  # in /proc/PID/status SigCgt: a handler for SIGTERM is set


@pytest.fixture(scope="module")
def big_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Unique chat records (nothing is dropped as a duplicate), plain ASCII: written without json."""
    rng = random.Random(5)
    path = tmp_path_factory.mktemp("big") / "chat.jsonl"
    with open(path, "w", encoding="ascii") as f:
        for i in range(RECORDS):
            q = " ".join(rng.choices(WORDS, k=rng.randint(4, 20)))
            a = " ".join(rng.choices(WORDS, k=rng.randint(12, 60)))
            f.write('{"messages": [{"role": "system", "content": "Marv."}, '
                    f'{{"role": "user", "content": "{q} {i}?"}}, {{"role": "assistant", "content": "{a}"}}]}}\n')
    return path


def _spec(project, stage: str, data: Path) -> None:
    """One record stage reading the big file itself: the pool starts as the run does."""
    extra = "\n    with: {target: openai-chat}" if stage == "format" else ""
    project.spec(f"stages:\n  {stage}:\n    uses: {stage}\n    inputs: {{records: {data}}}{extra}\n")


# ------------------------------------------------------------------------------ the run's processes

def _stat(pid: str) -> list[str] | None:
    """/proc/PID/stat from the state on (the name before it may hold spaces), or None if gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            return f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None


def _session(sid: int) -> set[int]:
    """The live processes of session ``sid`` (zombies are dead: only their parent's wait is missing)."""
    members = set()
    for name in os.listdir("/proc"):
        if name.isdigit():
            fields = _stat(name)
            if fields is not None and fields[0] != "Z" and int(fields[3]) == sid:
                members.add(int(name))
    return members


def _two_cpus() -> None:
    """In the child before it runs: Ctrl-C reaches it (as ``project.subprocess`` sees to), and it has
    two CPUs at most, so that its stages take seconds on a machine with many cores too (the pool
    still starts one worker per core: ``os.cpu_count``)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:2])


def _start(project, *args: str) -> subprocess.Popen:
    """``pipeline run`` in a session of its own: its id is the run's pid, and every process it
    starts stays in it."""
    return project.subprocess(*args, start_new_session=True, preexec_fn=_two_cpus)


def _wait_for_workers(proc: subprocess.Popen, timeout: float = 90) -> set[int]:
    deadline = time.monotonic() + timeout
    while True:
        workers = _session(proc.pid) - {proc.pid}
        if workers:
            return workers
        assert proc.poll() is None, f"the run ended before its workers were seen: {proc.communicate()}"
        assert time.monotonic() < deadline, "no worker process appeared"
        time.sleep(0.02)


def _left_behind(sid: int, timeout: float = 5) -> set[int]:
    """The session's processes still alive after ``timeout`` seconds (none, if all is well)."""
    deadline = time.monotonic() + timeout
    while (alive := _session(sid)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return alive


def _finish(proc: subprocess.Popen) -> str:
    """The run's stderr once it ended: reaching the end of its pipes means no process holds them."""
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the run's output stayed open 60 s after the signal; alive: {sorted(_session(proc.pid))}")
    return err


def _kill_session(sid: int) -> None:
    """What a failing test left behind, so that it does not slow the tests after it."""
    for pid in _session(sid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _describe(pids: set[int]) -> str:
    """Each process left behind, where it waits (a pipe, a futex) and what it is, for the failure."""
    out = []
    for pid in sorted(pids):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            wchan = Path(f"/proc/{pid}/wchan").read_text()
        except OSError:
            continue
        out.append(f"{pid} ({wchan}): {cmd[:120]}")
    return "; ".join(out)


# ------------------------------------------------------------------------------------------- the tests

@pytest.mark.slow
@pytest.mark.parametrize(("sig", "stage", "to_group"), [
    (signal.SIGINT, "clean", False),
    (signal.SIGINT, "format", False),
    (signal.SIGTERM, "clean", False),
    (signal.SIGTERM, "format", False),
    (signal.SIGKILL, "clean", False),
    (signal.SIGKILL, "format", False),
    (signal.SIGINT, "clean", True),  # Ctrl-C in a terminal: the whole foreground group gets it
    (signal.SIGTERM, "format", True),  # a supervisor that stops the process group
], ids=lambda v: getattr(v, "name", None) or ("group" if v is True else "main" if v is False else v))
def test_no_process_of_the_run_outlives_a_signal_to_it(project, big_file: Path, sig: signal.Signals, stage: str,
                                                       to_group: bool) -> None:
    _spec(project, stage, big_file)
    proc = _start(project, "run", "p.yaml")
    try:
        _wait_for_workers(proc)
        time.sleep(0.5)  # the workers are deep in their items (and their pipes) by now
        workers = _session(proc.pid) - {proc.pid}
        assert workers, "the pool closed before the signal: the stage was too quick to test anything"
        if to_group:
            os.killpg(proc.pid, sig)
        else:
            os.kill(proc.pid, sig)
        err = _finish(proc)
        left = _left_behind(proc.pid)
        assert not left, f"still alive after the run ended: {_describe(left)}"
        if sig == signal.SIGKILL:
            assert proc.returncode == -signal.SIGKILL
        else:
            assert proc.returncode == 130, err
            assert "interrupted" in err, err
        assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    finally:
        _kill_session(proc.pid)


def _handlers_set(pid: int, argv: list[str]) -> bool:
    """The command's own interpreter (``argv``, not the test's fork before the exec) has set its
    SIGTERM handler: from then on the command owns the signals, and any of them must end it with 130."""
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    caught = next(int(line.split()[1], 16) for line in status.splitlines() if line.startswith("SigCgt:"))
    return args[1:len(argv)] == [a.encode() for a in argv[1:]] and bool(caught & SIGTERM_BIT)


def _console_script(name: str) -> str:
    """What the console script ``name`` runs, as Python code (pip's launcher imports, then calls)."""
    from importlib.metadata import entry_points

    (ep,) = entry_points(group="console_scripts", name=name)
    return f"import sys; from {ep.module} import {ep.attr}; sys.exit({ep.attr}())"


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["module", "script"])
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=lambda s: s.name)
def test_a_signal_during_start_up_exits_130_without_a_traceback(project, big_file: Path, sig: signal.Signals,
                                                                launcher: str) -> None:
    """From the moment the command has its handlers (its first lines), through imports, option
    parsing, planning and into the run: always 130 and one short line. ``script`` starts it as the
    installed ``pipeline`` console script does (its entry point's module imported, then called)."""
    _spec(project, "clean", big_file)
    entry = ["-c", _console_script("pipeline")] if launcher == "script" else ["-m", "tunepipe"]
    argv = [sys.executable, *entry, "run", "p.yaml"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent / "support"), "NO_COLOR": "1"}
    for delay in (0.0, 0.02, 0.05, 0.1, 0.2, 0.3, 0.45, 0.6, 0.9):
        proc = subprocess.Popen(argv, cwd=project.root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, start_new_session=True, preexec_fn=_two_cpus)
        try:
            deadline = time.monotonic() + 30
            while not _handlers_set(proc.pid, argv):
                assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
                time.sleep(0.002)
            time.sleep(delay)
            proc.send_signal(sig)
            err = _finish(proc)
            assert proc.returncode == 130, (delay, err)
            assert "interrupted" in err, (delay, err)
            assert "Traceback" not in err and "Aborted" not in err, (delay, err)
            left = _left_behind(proc.pid)
            assert not left, f"still alive after {delay} s: {_describe(left)}"
        finally:
            _kill_session(proc.pid)


SLOW = "import time\n\n\ndef slow(x):\n    time.sleep(0.05)\n    return x\n"
OWNER = """
import multiprocessing, sys
from tunepipe.data import parallel
from slow import slow

if __name__ == "__main__":
    if sys.argv[1] == "forkserver":  # as in a process running Ray (parallel._pool_context)
        parallel._pool_context = lambda: multiprocessing.get_context("forkserver")
    for _ in parallel.ordered_map(slow, range(100_000), 2):
        pass
"""


@pytest.mark.slow
@pytest.mark.parametrize("method", ["fork", "forkserver"])
def test_pool_workers_end_with_the_process_that_owns_the_pool(tmp_path: Path, method: str) -> None:
    """``ordered_map``'s workers, forked (their parent dies) or from a forkserver (which outlives the
    owner for as long as its workers live), and the forkserver and resource tracker with them."""
    (tmp_path / "slow.py").write_text(SLOW)
    (tmp_path / "owner.py").write_text(OWNER)
    proc = subprocess.Popen([sys.executable, "owner.py", method], cwd=tmp_path, env={**os.environ, "PYTHONPATH": "."},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while len(_session(proc.pid) - {proc.pid}) < 2:
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.02)
        time.sleep(0.5)
        proc.kill()
        err = _finish(proc)
        left = _left_behind(proc.pid)
        assert not left, f"still alive: {_describe(left)}"
        assert "Traceback" not in err, err
    finally:
        _kill_session(proc.pid)
