"""The terminal views: the live one on a terminal, plain lines elsewhere."""

from __future__ import annotations

import io
from pathlib import Path

from tunepipe.progress import LineReporter, LiveReporter, format_summary, make_reporter
from tunepipe.runner import RunOutcome, StageOutcome
from tunepipe.spec.model import Pipeline


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def _drive(reporter) -> None:
    pipeline = Pipeline(name="demo", path=Path("/x/demo.yaml"), stages={})
    reporter.start(pipeline, ["ingest", "train"], "/cache")
    reporter.stage(StageOutcome("ingest", "cached", "k1", summary={"records": 1200}))
    reporter.stage(StageOutcome("train", "running", "k2", reasons=["parameter lr: 0.1 -> 0.2"]))
    reporter.progress("train", "step 3/10")
    reporter.message("waiting for stage 'train': pid 1 on host is computing it")
    failed = StageOutcome("train", "failed", "k2", 1.5, error="stage 'train': RuntimeError: boom",
                          log_path="/cache/train.log")
    reporter.stage(failed)
    reporter.finish(RunOutcome("demo", {"ingest": StageOutcome("ingest", "cached"), "train": failed}, "failed", 2.0))


def test_live_view_keeps_one_line_per_stage_and_ends_with_the_result() -> None:
    out = _Tty()
    reporter = LiveReporter(out, verbosity=0, explain=True, force_terminal=True)
    _drive(reporter)
    text = out.getvalue()
    assert "pipeline demo: 2 stages" in text
    assert "ingest    cached" in text and "records=1,200" in text
    assert "train     failed" in text and "1.50s" in text
    assert "train runs because parameter lr: 0.1 -> 0.2" in text
    assert "stage 'train': RuntimeError: boom" in text and "log: /cache/train.log" in text
    assert "train: stage 'train'" not in text  # the error names the stage once
    assert "waiting for stage 'train'" in text
    assert text.rstrip().splitlines()[-1].endswith("failed: 1 cached, 1 failed in 2.00s")  # NO_COLOR is set


def test_plain_lines_for_logs_have_no_escape_codes() -> None:
    out = io.StringIO()
    _drive(LineReporter(out, verbosity=0, explain=True))
    text = out.getvalue()
    assert "\x1b[" not in text
    assert "  ✓ ingest    cached            records=1,200" in text
    assert "      because parameter lr: 0.1 -> 0.2" in text
    assert "      log: /cache/train.log" in text
    assert text.splitlines()[-1] == "failed: 1 cached, 1 failed in 2.00s"


def test_quiet_prints_only_failures_and_the_result() -> None:
    out = io.StringIO()
    _drive(LineReporter(out, verbosity=-1))
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("  ! waiting")
    assert any("train     failed" in line for line in lines)
    assert not any("ingest" in line for line in lines)


def test_the_live_view_is_chosen_only_for_an_interactive_terminal(monkeypatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    assert isinstance(make_reporter(0, False, _Tty()), LiveReporter)
    assert isinstance(make_reporter(0, False, io.StringIO()), LineReporter)
    assert isinstance(make_reporter(-1, False, _Tty()), LineReporter)
    monkeypatch.setenv("CI", "true")
    assert isinstance(make_reporter(0, False, _Tty()), LineReporter)


def test_summaries_are_short_and_readable() -> None:
    assert format_summary({"records": 12345, "loss": 0.123456, "ok": True, "name": "x", "more": 1}) == \
        "records=12,345  loss=0.1235  ok=true  name=x"


def test_plain_lines_show_a_long_stage_s_progress_now_and_then(monkeypatch) -> None:
    import io

    import tunepipe.progress as P

    clock = [100.0]
    monkeypatch.setattr(P.time, "monotonic", lambda: clock[0])
    out = io.StringIO()
    reporter = LineReporter(out, verbosity=0)
    reporter.progress("train", "step 1/100")  # a short stage never prints its notes
    clock[0] += 5
    reporter.progress("train", "step 5/100")
    assert out.getvalue() == ""
    clock[0] += P.QUIET_PROGRESS_S
    reporter.progress("train", "step 40/100 loss 1.23")
    clock[0] += 1
    reporter.progress("train", "step 41/100")
    assert out.getvalue() == "      train: step 40/100 loss 1.23\n"
    quiet = io.StringIO()
    LineReporter(quiet, verbosity=-1).progress("train", "step 1")
    assert quiet.getvalue() == ""
