"""The `pipeline` verbs that read the run history: runs, logs, diff and compare. They only read run
records and artifacts (:mod:`tunepipe.history`); registered on the group in :mod:`tunepipe.cli`."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from tunepipe.cli_options import cache_dir_option as _cache_dir_option
from tunepipe.cli_options import handle_errors as _errors
from tunepipe.cli_options import spec_options as _spec_options


def _history(file: str, cache_dir: str | None) -> Any:
    """The recorded runs of FILE; records that cannot be read are named on stderr, once each."""
    from tunepipe.history.runs import open_history

    history = open_history(file, cache_dir)
    for bad in history.unreadable[:5]:
        click.echo(f"warning: skipped the run record {bad.file}: it {bad.why}", err=True)
    if len(history.unreadable) > 5:
        click.echo(f"warning: skipped {len(history.unreadable) - 5} more run records that cannot be read", err=True)
    return history


@click.command("runs")
@click.argument("file", type=click.Path(dir_okay=False))
@_cache_dir_option
@click.option("-n", "--limit", type=click.IntRange(min=0), default=20, show_default=True,
              help="Show the newest N runs; 0 shows all.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@_errors
def runs_cmd(file: str, cache_dir: str | None, limit: int, as_json: bool) -> None:
    """The recorded runs of FILE, newest first: id, start, duration, outcome, stages done / cached /
    failed, what changed since each stage's previous run, and the evaluate stages' headline metrics."""
    from tunepipe.history.listing import list_runs
    from tunepipe.history.render import runs_text

    history = _history(file, cache_dir)
    rows = list_runs(history, limit or None)
    if as_json:
        click.echo(json.dumps({"pipeline": file, "cache": str(history.cache_root), "total": len(history.runs),
                               "runs": [r.to_json() for r in rows],
                               "unreadable": [{"file": str(u.file), "why": u.why} for u in history.unreadable]},
                              indent=2))
    else:
        click.echo(runs_text(rows))
    if len(rows) < len(history.runs):
        click.echo(f"({len(rows)} newest of {len(history.runs)} runs; --limit 0 shows all)", err=True)


@click.command("logs")
@click.argument("file", type=click.Path(dir_okay=False))
@click.argument("stage")
@_cache_dir_option
@click.option("--run", "run_id", metavar="ID", help="The run (an id from `pipeline runs`, or a unique prefix) "
                                                    "[default: the latest run with a log of STAGE].")
@click.option("-f", "--follow", is_flag=True, help="Keep printing as the log grows, until the stage's run ends.")
@_errors
def logs(file: str, stage: str, cache_dir: str | None, run_id: str | None, follow: bool) -> None:
    """Print the log of STAGE from its latest run (or --run ID); -f follows a running stage."""
    from tunepipe.errors import UserError
    from tunepipe.history import logs as L

    history = _history(file, cache_dir)
    log, live = L.to_follow(history, stage, run_id) if follow else (L.find_log(history, stage, run_id), False)
    click.echo(f"log of stage {stage} in run {log.run.short} ({log.run.status}): {log.path}", err=True)
    sys.stdout.flush()
    out = sys.stdout.buffer
    if not live:
        if follow:
            click.echo(f"run {log.run.short} is not running: nothing to follow", err=True)
        L.copy_all(log.path, out)
        return
    status = L.follow(log, out, say=lambda text: click.echo(text, err=True))
    if not log.path.is_file():
        raise UserError(f"stage '{stage}' has no log in run {log.run.short}: it did not run there (status {status})")


@click.command("diff")
@click.argument("file", type=click.Path(dir_okay=False))
@click.argument("run_a", required=False)
@click.argument("run_b", required=False)
@_spec_options
@click.option("--json", "fmt", flag_value="json", help="Print JSON.")
@click.option("--md", "fmt", flag_value="md", help="Print Markdown tables (for a pull request).")
@_errors
def diff(file: str, run_a: str | None, run_b: str | None, overrides: tuple[str, ...], cache_dir: str | None,
         fmt: str | None) -> None:
    """What differs between two runs of FILE: parameters, input contents and plugin code per stage,
    and every metric of every evaluate stage with old, new, delta and whether the change is outside
    the bootstrap interval.

    \b
    (no ID)          the latest run against the workspace (the file, its inputs and code as they
                     are now) if that differs from it, else the last two runs
    RUN_A            RUN_A against the latest run
    RUN_A RUN_B      RUN_A against RUN_B; `workspace` as RUN_B names the workspace
    """
    from tunepipe.history.diff import diff_history
    from tunepipe.history.render import diff_markdown, diff_text
    from tunepipe.history.workspace import WORKSPACE

    history = _history(file, cache_dir)
    explicit = WORKSPACE in (run_a, run_b)
    d = diff_history(history, run_a, run_b, lambda: _workspace(file, overrides, cache_dir, history, explicit))
    if fmt == "json":
        click.echo(json.dumps(d.to_json(), indent=2))
    else:
        click.echo(diff_markdown(d, file) if fmt == "md" else diff_text(d), nl=fmt != "md")


def _workspace(file: str, overrides: tuple[str, ...], cache_dir: str | None, history: Any, explicit: bool,
               instead: str = "showing the last two runs") -> Any:
    """The workspace planned as a run; where it cannot be planned (a broken pipeline file, a
    missing plugin), an error if the user named it, else None and a note on stderr."""
    from tunepipe.errors import UserError
    from tunepipe.history.workspace import plan_workspace
    from tunepipe.session import open_session

    try:
        return plan_workspace(open_session(file, overrides, cache_dir), history)
    except UserError as e:
        if explicit:
            raise
        click.echo(f"note: the workspace cannot be planned ({str(e).splitlines()[0]}): {instead}", err=True)
        return None


@click.command("compare")
@click.argument("file", type=click.Path(dir_okay=False))
@click.argument("stage", required=False)
@_spec_options
@click.option("--sort", metavar="METRIC", default=None,
              help="Order by METRIC (an evaluate metric, train_loss, val_loss, val_loss_best) "
                   "[default: the evaluate stage's rank_by, else rouge_l, else val_loss].")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--html", "html_out", metavar="OUT.html", type=click.Path(dir_okay=False),
              help="Also write one self-contained page: the table, the metrics side by side, the loss curves.")
@_errors
def compare(file: str, stage: str | None, overrides: tuple[str, ...], cache_dir: str | None, sort: str | None,
            as_json: bool, html_out: str | None) -> None:
    """The branches of the matrix STAGE of FILE side by side (default: its only matrix stage): swept
    values, status, evaluate metrics with intervals, training and validation loss; the leader is
    marked best only when its paired difference from the runner-up excludes zero, else tied."""
    from tunepipe.history.compare import compare_sweep
    from tunepipe.history.compare_text import compare_text
    from tunepipe.registry import Registry
    from tunepipe.spec import load_pipeline

    path = Path(file)
    pipeline = load_pipeline(path, Registry(search_paths=[path.absolute().parent]), overrides, display=file)
    history = _history(file, cache_dir)
    workspace = _workspace(file, overrides, cache_dir, history, explicit=False, instead="stale results are not marked")
    c = compare_sweep(pipeline, history, stage, sort, workspace)
    if html_out is not None:
        from tunepipe.history.compare_html import write_html

        write_html(c, Path(html_out))
        click.echo(f"wrote {html_out}", err=True)
    click.echo(json.dumps(c.to_json(), indent=2) if as_json else compare_text(c))


COMMANDS = (runs_cmd, logs, diff, compare)
