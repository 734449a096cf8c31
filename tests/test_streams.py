"""`pipeline run` writes its result to stdout and its live view and diagnostics to stderr, as the
command-line tools users know do (src/tunepipe/progress.py): `pipeline run x.yaml > out.txt`
captures the header, each stage's final line, the dry-run plan and the closing line, and nothing else.

Each run here is a separate process with the two streams captured apart (a pipe each, or a
terminal for stderr), as a shell redirects them."""

from __future__ import annotations

import os
import re
import sys
import threading
from pathlib import Path

import pytest

TALK = '''
from tunepipe.plugins import Port


class Talk:
    """Says a line (ctx.say: a "!" message) and notes its progress (ctx.progress)."""

    name = "talk"
    version = "1"
    description = "says a line"
    params_schema = {"type": "object"}
    inputs = {"src": Port("anything", optional=True)}
    outputs = {"out": Port("talk.txt")}
    packages = ()

    def run(self, ctx, inputs, params):
        ctx.progress("halfway there")
        ctx.say("a word from the plugin")
        (ctx.output("out") / "talk.txt").write_text("said")
        return {"words": 5}
'''

SPEC = """\
name: streams
stages:
  a: {uses: "tp_testplugins:Emit", with: {text: hi}}
  talk: {uses: "talkplug:Talk", inputs: {src: a.out}}
  bad: {uses: "tp_testplugins:Fail", with: {message: "it broke here"}}
  after: {uses: "tp_testplugins:Emit", inputs: {src: bad.out}}
"""

T = r"\d+\.\d\ds"  # a duration
# Each stage's final line: what the run made of it. They are the result, on stdout.
RESULT_LINES = [
    rf"  ✓ a +done +{T}  chars=2",
    rf"  ✓ talk +done +{T}  words=5",
    rf"  ✗ bad +failed +{T}",
    r"  - after +skipped +(\('bad' did not succeed\)|'bad' did not succeed)",  # the live view: no brackets
]
SUMMARY = rf"failed: 2 done, 1 failed, 1 skipped in {T}"
# A stage's final line or the closing line: never on stderr in the plain (not live) view.
FINAL = re.compile(r"^(  [✓✗-] \S+ +(done|cached|failed|skipped|cancelled)\b|(ok|failed|interrupted): )")


@pytest.fixture
def streams(project):
    project.write("talkplug.py", TALK)  # a plugin of this project: trusted like tp_testplugins
    project.spec(SPEC)
    return project


def _run(project, *args: str) -> tuple[int, str, str]:
    proc = project.subprocess("run", "p.yaml", *args)
    out, err = proc.communicate(timeout=120)
    return proc.returncode, out, err


def _assert_lines(text: str, patterns: list[str]) -> None:
    """``text`` is exactly one line for each pattern, in this order."""
    lines = text.splitlines()
    assert len(lines) == len(patterns), text
    for line, pattern in zip(lines, patterns, strict=True):
        assert re.fullmatch(pattern, line), (pattern, text)


def _result(text: str, header: str, summary: str) -> None:
    """The run's result: its header, each stage's final line once (in the order the stages ended),
    and the closing line."""
    lines = text.splitlines()
    assert lines[0] == header and re.fullmatch(summary, lines[-1]), text
    body = lines[1:-1]
    assert len(body) == len(RESULT_LINES), text
    for pattern in RESULT_LINES:
        assert sum(1 for line in body if re.fullmatch(pattern, line)) == 1, (pattern, text)


def test_a_run_prints_its_result_on_stdout_and_its_progress_and_diagnostics_on_stderr(streams) -> None:
    code, out, err = _run(streams, "--keep-going", "--explain")
    assert code == 1, out + err

    # stdout: exactly the result; none of the live view, the reasons, the messages or the error
    _result(out, "pipeline streams: 4 stages", SUMMARY)
    for diagnostic in ("running", "because", "!", "it broke here", "RuntimeError", "log:"):
        assert diagnostic not in out, (diagnostic, out)

    # stderr: a "running" line for each stage that ran, the reasons under it (--explain), the
    # plugin's message, and the failed stage's error and log; no final line, no header, no summary
    for stage in ("a", "talk", "bad"):
        assert re.search(rf"^  ▶ {stage} +running$", err, re.M), (stage, err)
    assert not re.search(r"▶ after\b", err)  # skipped: it never ran
    assert err.count("      because never run in this pipeline\n") == 3
    assert "  ! talk: a word from the plugin\n" in err
    assert "      stage 'bad': RuntimeError: it broke here\n" in err
    log = Path(re.search(r"^      log: (\S+)$", err, re.M).group(1))
    assert "Traceback" in log.read_text() and "it broke here" in log.read_text()
    assert not [line for line in err.splitlines() if FINAL.match(line)], err
    assert "pipeline streams" not in err

    # without --explain there are no reasons; the failed stage's error still goes to stderr
    code, out, err = _run(streams, "--keep-going")
    assert code == 1
    assert "because" not in out + err
    assert re.search(r"^  ✓ a +cached +chars=2$", out, re.M) and "cached" not in err
    assert re.search(rf"^  ✗ bad +failed +{T}$", out, re.M) and "bad: " not in out
    assert "      stage 'bad': RuntimeError: it broke here\n" in err and "      log: " in err


def test_verbose_puts_the_cache_folder_in_the_header_and_progress_notes_on_stderr(streams) -> None:
    assert _run(streams, "talk")[0] == 0
    code, out, err = _run(streams, "talk", "--force=talk", "-v")
    assert code == 0, out + err
    _assert_lines(out, [re.escape(f"pipeline streams: 2 stages  (cache {streams.cache})"),
                        r"  ✓ a +cached +chars=2",
                        rf"  ✓ talk +done +{T}  words=5",
                        rf"ok: 1 cached, 1 done in {T}"])
    assert re.search(r"^  ▶ talk +running$", err, re.M)
    assert "      talk: halfway there\n" in err  # -v: every progress note
    assert "      because " in err  # -v explains
    assert "  ! talk: a word from the plugin\n" in err
    assert not [line for line in err.splitlines() if FINAL.match(line)], err


def test_quiet_prints_only_the_closing_line_and_the_failure(streams) -> None:
    code, out, err = _run(streams, "--keep-going", "-q")
    assert code == 1
    _assert_lines(out, [rf"  ✗ bad +failed +{T}", SUMMARY])
    assert "      stage 'bad': RuntimeError: it broke here\n" in err and "running" not in err


def test_a_dry_run_puts_the_plan_on_stdout(streams) -> None:
    streams.write("in.txt", "four\n")
    streams.spec(SPEC + '  n: {uses: "tp_testplugins:Length", inputs: {src: in.txt}}\n')
    code, out, err = _run(streams, "--dry-run")
    assert code == 0, out + err
    _assert_lines(out, [r"pipeline streams: 5 stages",
                        r"  ▶ a +will run: never run in this pipeline",
                        r"  … talk +\S.*a.*",  # waits for a
                        r"  ▶ bad +will run: never run in this pipeline",
                        r"  … after +\S.*bad.*",  # waits for bad
                        r"  ▶ n +will run: never run in this pipeline",
                        r" +would measure 5 characters",  # the plugin's preview: part of the plan
                        r"plan: 0 cached, 5 to run \(nothing was run\)"])
    assert "will run" not in err and "would measure" not in err and "▶" not in err and "…" not in err
    assert not (streams.cache / "keys").exists() or not list((streams.cache / "keys").rglob("*.json"))

    assert _run(streams, "--keep-going")[0] == 1
    code, out, err = _run(streams, "-n")
    assert code == 0
    assert re.search(r"^  ✓ a +cached$", out, re.M) and re.search(r"^  ✓ n +cached$", out, re.M)
    assert re.search(r"^  ▶ bad +will run: ", out, re.M)
    assert "✓" not in err and "will run" not in err


def test_a_dry_run_s_closing_line_is_on_stdout(streams) -> None:
    code, out, err = _run(streams, "--dry-run")
    assert code == 0, out + err
    assert out.splitlines()[-1] == "plan: 0 cached, 4 to run (nothing was run)", out
    assert "plan:" not in err


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs a pseudo-terminal")
def test_the_live_view_stays_on_the_terminal_and_the_result_goes_to_the_file(streams) -> None:
    """`pipeline run x.yaml > out.txt` on a terminal: the live view (and its messages and errors)
    is drawn on stderr, the terminal; the file gets the result, plain and unwrapped."""
    import pty

    master, slave = pty.openpty()
    env = {**os.environ, "TERM": "xterm", "NO_COLOR": "1", "COLUMNS": "30"}  # narrower than the lines
    env.pop("CI", None)  # CI means plain lines even on a terminal
    proc = streams.subprocess("run", "p.yaml", "--keep-going", stderr=slave, env=env)
    os.close(slave)
    chunks: list[bytes] = []

    def drain() -> None:  # the terminal's side: read all, so the run never blocks on it
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: every writer closed the terminal
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        out, _ = proc.communicate(timeout=120)
        reader.join(30)
    finally:
        os.close(master)
    screen = b"".join(chunks).decode("utf-8", "replace").replace("\r\n", "")  # as drawn, wrapped at 30
    assert proc.returncode == 1, out + screen

    _result(out, "pipeline streams: 4 stages", SUMMARY)
    assert "\x1b" not in out  # no cursor movement or colour in the file
    assert max(len(line) for line in out.splitlines()) > 30  # whole lines (matched above), not wrapped at COLUMNS
    assert "a word from the plugin" in screen and "stage 'bad': RuntimeError:" in screen and "it broke here" in screen
    assert "log: " in screen and "log: " not in out
    assert "pipeline streams" not in screen and "failed: 2 done" not in screen

