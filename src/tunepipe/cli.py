"""The ``pipeline`` command: parse, call the core, print. No logic beyond that lives here.

Exit codes: 0 success, 1 a stage failed, 2 a user error (bad spec, option or input), 130 Ctrl-C or
SIGTERM (at any moment, start-up included: :func:`main` takes both over first).
Heavy modules are imported inside the verbs so ``pipeline --help`` stays fast.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import click

from tunepipe import __version__
from tunepipe.cli_history import COMMANDS as HISTORY_COMMANDS
from tunepipe.cli_model import COMMANDS as MODEL_COMMANDS
from tunepipe.cli_options import handle_errors as _errors
from tunepipe.cli_options import spec_options as _spec_options
from tunepipe.cli_options import set_option as _set_option

@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="tunepipe")
def cli() -> None:
    """tunepipe: declarative, cached pipelines for fine-tuning chat models.

    \b
    pipeline run pipelines/sarcasm.yaml        run what changed
    pipeline status pipelines/sarcasm.yaml     what is fresh, what is stale, and why
    pipeline dag pipelines/sarcasm.yaml        the stage graph
    pipeline init my-project                   start a new project
    """


for _command in (*HISTORY_COMMANDS, *MODEL_COMMANDS):
    cli.add_command(_command)

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _on_signals(handler: Any) -> None:
    """Handle Ctrl-C and SIGTERM with ``handler``, except one ignored from the start (a background
    job of a shell script ignores Ctrl-C: it stays out of reach of the terminal's)."""
    for sig in STOP_SIGNALS:
        if signal.getsignal(sig) is not signal.SIG_IGN:
            signal.signal(sig, handler)


def _exit_now(code: int, line: str = "") -> NoReturn:
    """Exit at once, pool workers first (none may outlive the run), without waiting for the stage
    threads; the cache stays consistent, as it does after a kill -9. Safe in a signal handler:
    the line goes straight to the file descriptor, not through a stream the main thread may hold,
    and nothing here raises (the signal may come in the middle of an import, of that module too)."""
    stop_workers = getattr(sys.modules.get("tunepipe.data.pool"), "stop_workers", None)
    if stop_workers is not None:
        with contextlib.suppress(Exception):
            stop_workers()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # a stream in the middle of a write refuses: its rest is lost
            stream.flush()
    if line:
        with contextlib.suppress(OSError):
            os.write(2, line.encode() + b"\n")
    os._exit(code)


def _stop_now(_signum: int, _frame: Any) -> None:
    """Ctrl-C or SIGTERM where no run is stopping cleanly (start-up, another verb, a second signal):
    exit 130 with one line, never click's ``Aborted!`` (exit 1) or a traceback."""
    _exit_now(130, "interrupted")


def _interrupt(_signum: int, _frame: Any) -> None:
    """The first Ctrl-C or SIGTERM of a run stops it cleanly (the runner catches KeyboardInterrupt:
    finished stages are kept, the run is recorded as interrupted); a second one exits at once."""
    _on_signals(_stop_now)
    raise KeyboardInterrupt


@contextlib.contextmanager
def _clean_stop() -> Iterator[None]:
    """While the runner runs, a signal raises KeyboardInterrupt (:func:`_interrupt`); the handlers
    from before come back after it. Only the main thread may set handlers (not so under some test
    runners): elsewhere it changes nothing."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    _on_signals(_interrupt)
    try:
        yield
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


@cli.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.argument("stages", nargs=-1)
@_spec_options
@click.option("-j", "--jobs", type=click.IntRange(min=1), default=None,
              help="Run up to N independent stages at once (default: 1; with Ray: as many as the cluster fits).")
@click.option("--executor", type=click.Choice(["local", "ray"]), default=None,
              help="Where stages run: this machine, or one Ray task each "
                   "(default: the file's `executor:`, else local).")
@click.option("--address", metavar="ADDR", default=None,
              help="The Ray cluster: HOST:PORT of its head, 'auto' or 'local' (implies --executor ray).")
@click.option("--force", "force", multiple=True, is_flag=False, flag_value="*", metavar="[STAGE]",
              help="Rerun even if cached: all selected stages, or (repeatable --force=STAGE) the named ones.")
@click.option("-n", "--dry-run", is_flag=True, help="Show the plan (cached or to run, and why); run nothing.")
@click.option("--explain", is_flag=True, help="Say why each stage runs: which parameter, input or code changed.")
@click.option("-k", "--keep-going", is_flag=True, help="After a failure, still run stages that do not need it.")
@click.option("--track", metavar="TRACKER", default=None,
              help="Log this run to TRACKER (e.g. mlflow) instead of the file's `tracking:`; 'none': nowhere.")
@click.option("-q", "--quiet", is_flag=True, help="Print only failures and the result line.")
@click.option("-v", "--verbose", is_flag=True, help="Print reasons, progress notes and the cache folder.")
@_errors
def run(file: str, stages: tuple[str, ...], overrides: tuple[str, ...], cache_dir: str | None, jobs: int | None,
        executor: str | None, address: str | None, force: tuple[str, ...], dry_run: bool, explain: bool,
        keep_going: bool, quiet: bool, verbose: bool, track: str | None) -> None:
    """Run the pipeline FILE (or only STAGES and what they need), reusing cached results."""
    from tunepipe.progress import make_reporter
    from tunepipe.runner import RunOptions
    from tunepipe.runner import run as run_pipeline
    from tunepipe.session import open_session
    from tunepipe.status import PlanState, Status

    session = open_session(file, overrides, cache_dir)
    stages = tuple(session.pipeline.expand_names(stages))  # a matrix stage as written: all its branches
    force = tuple(session.pipeline.expand_names(force))
    opts = RunOptions(targets=stages, force_all="*" in force, force=[f for f in force if f != "*"], jobs=jobs,
                      executor=executor or "", address=address or "", keep_going=keep_going, dry_run=dry_run,
                      explain=explain, argv=sys.argv[1:], track=track or "")
    reporter = make_reporter(verbosity=-1 if quiet else (1 if verbose else 0), explain=explain,
                             result=sys.stdout)  # the result on stdout, the live view on stderr
    try:
        with _clean_stop():  # SIGTERM stops like Ctrl-C: finished stages are kept
            outcome = run_pipeline(session.pipeline, session.store, session.registry, opts, reporter)
    except KeyboardInterrupt:  # before the runner could catch it (while it planned)
        _exit_now(130, "interrupted")
    if dry_run:
        todo = sum(1 for s in outcome.stages.values() if s.status != PlanState.CACHED)
        click.echo(f"plan: {len(outcome.stages) - todo} cached, {todo} to run (nothing was run)")
    if outcome.status == Status.INTERRUPTED:
        _exit_now(outcome.exit_code)  # do not wait for plugin threads; the cache is consistent
    sys.exit(outcome.exit_code)


@cli.command()
@click.argument("file", type=click.Path(dir_okay=False))
@_set_option
@_errors
def validate(file: str, overrides: tuple[str, ...]) -> None:
    """Check FILE (schema, plugins, parameters, inputs, cycles) and report every problem."""
    from tunepipe.registry import Registry
    from tunepipe.session import refuse_secrets
    from tunepipe.spec import check_files, load_pipeline

    path = Path(file)
    registry = Registry(search_paths=[path.absolute().parent])
    pipeline = load_pipeline(path, registry, overrides, display=file)
    refuse_secrets(pipeline, registry)  # a secret only a stage names (api_key_env: MYCREDS), as `run` does
    check_files(pipeline)
    n = len(pipeline.stages)
    click.echo(f"ok: {file} is valid ({n} stage{'s' if n != 1 else ''}: {', '.join(pipeline.stages)})")


@cli.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.argument("stages", nargs=-1)
@_spec_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@_errors
def status(file: str, stages: tuple[str, ...], overrides: tuple[str, ...], cache_dir: str | None,
           as_json: bool) -> None:
    """Which stages are fresh, stale or pending, and why.

    \b
    fresh    the cache holds the result for the stage as it is now
    stale    it runs next time (the reasons say what changed)
    pending  it waits for a stale stage upstream; it reruns only if that changes its inputs
    """
    from tunepipe.plan import Planner
    from tunepipe.runner import resolve_selection
    from tunepipe.session import open_session
    from tunepipe.status import PlanState

    session = open_session(file, overrides, cache_dir)
    selected = resolve_selection(session.pipeline, session.pipeline.expand_names(stages), ())
    planner = Planner(session.pipeline, session.store, session.registry)
    plans = planner.plan(selected, set())
    planner.save()
    if as_json:
        click.echo(json.dumps({"pipeline": session.pipeline.name, "stages": [p.to_json() for p in plans]}, indent=2))
        return
    width = max(len(p.name) for p in plans)
    for p in plans:
        why = "  " + "; ".join(p.unkeyed if p.state == PlanState.CACHED else p.reasons)
        click.echo(f"{p.name:<{width}}  {p.freshness:<7}{why}".rstrip())


@cli.command()
@click.argument("file", type=click.Path(dir_okay=False))
@_set_option
@click.option("--dot", "fmt", flag_value="dot", help="Graphviz DOT.")
@click.option("--mermaid", "fmt", flag_value="mermaid", help="Mermaid flowchart.")
@_errors
def dag(file: str, overrides: tuple[str, ...], fmt: str | None) -> None:
    """Print the stage graph of FILE (text, --dot or --mermaid)."""
    from tunepipe import graph
    from tunepipe.registry import Registry
    from tunepipe.spec import load_pipeline

    path = Path(file)
    p = load_pipeline(path, Registry(search_paths=[path.absolute().parent]), overrides, display=file)
    if fmt == "dot":
        click.echo(graph.render_dot(p.stages, p.name))
    elif fmt == "mermaid":
        click.echo(graph.render_mermaid(p.stages))
    else:
        click.echo(graph.render_text(p.stages))


@cli.command("stages")
@click.argument("names", nargs=-1)
@click.option("--json", "as_json", is_flag=True, help="Print every plugin with its full parameter schema as JSON.")
@_errors
def stages_cmd(names: tuple[str, ...], as_json: bool) -> None:
    """List installed stage plugins: package, inputs, outputs, parameters.

    With NAMEs (an installed name or package.module:Name), show each in full, with an example
    stage to paste into a pipeline.
    """
    from tunepipe.describe import describe_plugin, plugin_json
    from tunepipe.registry import Registry

    here = [Path.cwd()]
    registry = Registry(search_paths=here)  # so a project's own `module:Name` plugins are found
    loaded = [registry.load(n) for n in (names or registry.names())]
    if as_json:
        click.echo(json.dumps([plugin_json(lp, here) for lp in loaded], indent=2))
    else:
        click.echo("\n\n".join(describe_plugin(lp, here, full=bool(names)) for lp in loaded))


@cli.command("schema")
@click.option("-o", "--output", metavar="FILE", type=click.Path(dir_okay=False),
              help="Write the schema to FILE (default: print it).")
@_errors
def schema_cmd(output: str | None) -> None:
    """Write the JSON Schema of pipeline files, with every installed plugin's parameters.

    \b
    Point your editor at it with a first line in the pipeline file:
      # yaml-language-server: $schema=pipeline.schema.json
    """
    from tunepipe.registry import Registry
    from tunepipe.spec.export import export_schema

    text = json.dumps(export_schema(Registry(search_paths=[Path.cwd()])), indent=2) + "\n"
    if output is None:
        click.echo(text, nl=False)
        return
    from tunepipe.cache.atomic import write_bytes

    Path(output).absolute().parent.mkdir(parents=True, exist_ok=True)
    write_bytes(Path(output), text.encode("utf-8"))
    click.echo(f"wrote {output}", err=True)


@cli.command("init")
@click.argument("directory", default=".", type=click.Path(file_okay=False))
@_errors
def init_cmd(directory: str) -> None:
    """Start a project in DIRECTORY (default: here): a commented pipeline, sample data, a .gitignore
    and the editor schema. Never overwrites a file."""
    from tunepipe.registry import Registry
    from tunepipe.scaffold import init_project
    from tunepipe.spec.export import export_schema

    target = Path(directory)
    schema_text = json.dumps(export_schema(Registry()), indent=2) + "\n"
    written = init_project(target, schema_text)
    for p in written:
        click.echo(f"created {p}")
    spec = target / "pipeline.yaml"
    click.echo(f"next: pipeline run {spec}", err=True)


@cli.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.argument("stage")
@_spec_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@_errors
def show(file: str, stage: str, overrides: tuple[str, ...], cache_dir: str | None, as_json: bool) -> None:
    """Where STAGE's artifacts are and what they hold."""
    from tunepipe.describe import describe_artifacts, stage_artifacts
    from tunepipe.session import open_session

    session = open_session(file, overrides, cache_dir)
    info = stage_artifacts(session, stage)
    click.echo(json.dumps(info, indent=2) if as_json else describe_artifacts(info))


@cli.group()
def cache() -> None:
    """Maintain the cache: verify digests, remove what no pipeline uses."""


def _store(file: str | None, cache_dir: str | None) -> Any:
    """The existing cache of FILE or --cache-dir; maintenance never creates one. A cache on object
    storage prints what verify / gc do there (``store.say``)."""
    from tunepipe.errors import UserError
    from tunepipe.session import cache_location, open_store

    location = cache_location(Path(file) if file else None, cache_dir)
    hint = ("name the pipeline file (its cache is .tunepipe next to it), or pass --cache-dir / set "
            "TUNEPIPE_CACHE")
    if "://" not in location:
        if not (Path(location) / "objects").is_dir():
            raise UserError(f"there is no tunepipe cache at {location}: {hint}")
        return open_store(location)
    store = open_store(location)
    if not store.is_cache():
        raise UserError(f"there is no tunepipe cache at {store.location()} (no tunepipe-cache.json there): {hint}")
    store.say = click.echo  # verify's and gc's findings on object storage: their result
    return store


@cache.command()
@click.argument("file", required=False, type=click.Path(dir_okay=False))
@click.option("--cache-dir", envvar="TUNEPIPE_CACHE", metavar="DIR", help="Cache folder.")
@click.option("--repair", is_flag=True,
              help="Remove corrupt artifacts, the records that made them and every record built from them.")
@_errors
def verify(file: str | None, cache_dir: str | None, repair: bool) -> None:
    """Recompute every artifact's digest; report corruption (exit 1 if any)."""
    store = _store(file, cache_dir)
    r = store.verify(repair=repair)
    click.echo(f"checked {r.objects} artifacts and {r.records} records in {store.location()}")
    for d in r.corrupt:
        click.echo(f"corrupt: artifact {d} no longer matches its digest{' (removed)' if repair else ''}")
    for key, d in r.missing:
        click.echo(f"missing: record {key[:16]} needs artifact {d[:16]}, which is gone"
                   f"{' (record removed)' if repair else ''}")
    for key in r.unreadable:
        click.echo(f"unreadable: record {key}{' (removed)' if repair else ''}")
    for key, stage, why in r.dropped:  # results made from damaged data: their keys would match again
        click.echo(f"{'dropped' if repair else 'would drop'}: stage '{stage}' result {key[:16]} ({why})")
    if r.clean:
        click.echo("ok: the cache is consistent")
    elif repair:
        click.echo("repaired: the next run recomputes the dropped results")
    else:
        click.echo("run `pipeline cache verify --repair` to drop the damaged entries; the next run recomputes them")
        sys.exit(1)


@cache.command()
@click.argument("file", required=False, type=click.Path(dir_okay=False))
@click.option("--cache-dir", envvar="TUNEPIPE_CACHE", metavar="DIR", help="Cache folder.")
@click.option("-n", "--dry-run", is_flag=True, help="List what would be removed.")
@_errors
def gc(file: str | None, cache_dir: str | None, dry_run: bool) -> None:
    """Remove results no pipeline's latest run uses, and what crashed runs left behind."""
    from tunepipe.records import all_state_keys

    store = _store(file, cache_dir)
    r = store.gc(all_state_keys(store.root), dry_run=dry_run)
    verb = "would remove" if dry_run else "removed"
    if dry_run:
        for line in r.lines(verb):
            click.echo(f"  {line}")
    click.echo(f"{verb} {len(r.records)} stage records, {len(r.objects)} artifacts "
               f"({r.freed_bytes / 1e6:.1f} MB) and {len(r.leftovers)} leftovers of interrupted runs")


def main() -> None:
    """The ``pipeline`` command. Ctrl-C and SIGTERM are taken over first: from here on a signal at any
    moment ends the command with 130 (:func:`_stop_now`; a run stops cleanly, :func:`_clean_stop`)."""
    _on_signals(_stop_now)
    name = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "pipeline"
    cli(prog_name="python -m tunepipe" if name == "__main__.py" else name)
