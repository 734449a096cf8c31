"""The ``pipeline`` command: parse, call the core, print. No logic beyond that lives here.

Exit codes: 0 success, 1 a stage failed, 2 a user error (bad spec, option or input), 130 Ctrl-C or
SIGTERM (at any moment, start-up included: :func:`main` takes both over first).
Heavy modules are imported inside the verbs so ``pipeline --help`` stays fast.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click

from tunepipe import __version__
from tunepipe.errors import SpecError, TunepipeError

F = TypeVar("F", bound=Callable[..., Any])


def _errors(fn: F) -> F:
    """Print a TunepipeError as its message (no traceback) and exit with its code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except TunepipeError as e:
            from tunepipe.redact import redact

            text = redact(str(e))  # an excerpt of the spec may show a secret the user pasted
            click.echo(text if isinstance(e, SpecError) else f"error: {text}", err=True)
            sys.exit(e.exit_code)
        except OSError as e:  # a read-only, unwritable or full cache folder: the user's to fix
            from tunepipe.cache.diskerrors import describe, is_disk_error

            if not is_disk_error(e):
                raise
            click.echo(f"error: {describe(e, 'using the cache')}", err=True)
            sys.exit(2)

    return wrapper  # type: ignore[return-value]


def _spec_options(fn: F) -> F:
    fn = click.option("-S", "--set", "overrides", multiple=True, metavar="STAGE.PARAM=VALUE",
                      help="Override a parameter (value read as YAML), or vars.NAME=VALUE. Repeatable.")(fn)
    fn = click.option("--cache-dir", envvar="TUNEPIPE_CACHE", metavar="DIR",
                      help="Cache folder [default: .tunepipe next to the pipeline file; env TUNEPIPE_CACHE].")(fn)
    return fn


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
@click.option("-S", "--set", "overrides", multiple=True, metavar="STAGE.PARAM=VALUE", help="Override a parameter.")
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
@click.option("-S", "--set", "overrides", multiple=True, metavar="STAGE.PARAM=VALUE", help="Override a parameter.")
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


def _cache_dir_option(fn: F) -> F:
    return click.option("--cache-dir", envvar="TUNEPIPE_CACHE", metavar="DIR",
                        help="Cache folder [default: .tunepipe next to the pipeline file; env TUNEPIPE_CACHE].")(fn)


def _history(file: str, cache_dir: str | None) -> Any:
    """The recorded runs of FILE; records that cannot be read are named on stderr, once each."""
    from tunepipe.history.runs import open_history

    history = open_history(file, cache_dir)
    for bad in history.unreadable[:5]:
        click.echo(f"warning: skipped the run record {bad.file}: it {bad.why}", err=True)
    if len(history.unreadable) > 5:
        click.echo(f"warning: skipped {len(history.unreadable) - 5} more run records that cannot be read", err=True)
    return history


@cli.command("runs")
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


@cli.command("logs")
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


@cli.command("diff")
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

    history = _history(file, cache_dir)
    explicit = "workspace" in (run_a, run_b)
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


@cli.command("compare")
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


@cli.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.argument("stage", required=False)
@_spec_options
@click.option("-p", "--prompt", metavar="TEXT", help="Answer TEXT once and exit; only the reply goes to stdout.")
@click.option("--system", metavar="TEXT", default=None,
              help="The system prompt [default: the most frequent one in the training data]; '' for none.")
@click.option("--base", is_flag=True, help="Talk to the base model instead of the fine-tuned one.")
@click.option("--compare", is_flag=True, help="The base's reply and the fine-tuned one's to each prompt.")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--temperature", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="0 is greedy: the same prompt gets the same reply.")
@click.option("--seed", type=int, default=0, show_default=True, help="The sampling seed (temperature > 0).")
@click.option("--json", "as_json", is_flag=True, help="With --prompt: the replies as JSON.")
@_errors
def chat(file: str, stage: str | None, overrides: tuple[str, ...], cache_dir: str | None, prompt: str | None,
         system: str | None, base: bool, compare: bool, max_new_tokens: int, temperature: float, seed: int,
         as_json: bool) -> None:
    """Talk to the model a train STAGE made (default: the pipeline's only train stage).

    Replies stream as they are generated. Without --prompt: a conversation (/reset, /system TEXT,
    Ctrl-D to leave)."""
    from tunepipe import chat as C
    from tunepipe.replies import Decoding
    from tunepipe.session import open_session
    from tunepipe.cardfacts import usual_system
    from tunepipe.trained import context, find_trained

    if base and compare:
        raise click.UsageError("--base and --compare exclude each other (--compare shows both)")
    if as_json and prompt is None:
        raise click.UsageError("--json needs --prompt")
    session = open_session(file, overrides, cache_dir)
    trained = find_trained(session, stage)
    if trained.stale:
        click.echo(f"note: {trained.stage}'s model is not current ({'; '.join(trained.stale)}): talking to the "
                   f"last one trained; `pipeline run {file} {trained.stage}` trains the current one", err=True)
    if system is None:
        system, share = usual_system(trained.data)
        if system:
            click.echo(f"system prompt (the training data's most frequent, {share:.0%} of examples; --system to "
                       f"change): {system}", err=True)
    decoding = Decoding(max_new_tokens, temperature, 1.0, seed)
    with context(session, trained.stage) as ctx:
        conv = C.Conversation(system or None, C.sides_for(trained, ctx, base=base, compare=compare))
        try:
            if prompt is None:
                C.repl(conv, decoding, sys.stdout, sys.stderr, read=C.reader(sys.stdin, sys.stdout, sys.stderr),
                       history=session.store.root / "chat_history")
            elif as_json:
                quiet = open(os.devnull, "w", encoding="utf-8")
                with quiet:
                    replies = C.ask(conv, prompt, decoding, quiet, quiet)
                click.echo(json.dumps({"prompt": prompt, "system": conv.system, "replies": replies}, indent=2))
            else:
                C.ask(conv, prompt, decoding, sys.stdout, sys.stderr)
        finally:
            for side in conv.sides:
                side.replier.close()


@cli.command("export")
@click.argument("file", type=click.Path(dir_okay=False))
@click.argument("stage", required=False)
@_spec_options
@click.option("--to", "to", required=True, metavar="DIR", type=click.Path(file_okay=False),
              help="The folder to write (created; must be empty unless --force).")
@click.option("--format", "fmt", type=click.Choice(["hf-adapter", "merged", "gguf"]), default=None,
              help="A train stage's model as: hf-adapter (default), merged or gguf.")
@click.option("--quantize", type=click.Choice(["f32", "f16", "q8_0"]), default=None,
              help="gguf: the weights' type [default: q8_0].")
@click.option("--system", metavar="TEXT", default=None,
              help="gguf: the Modelfile's system prompt [default: the training data's most frequent].")
@click.option("--force", is_flag=True, help="Replace the content of a non-empty --to folder.")
@_errors
def export_cmd(file: str, stage: str | None, overrides: tuple[str, ...], cache_dir: str | None, to: str,
               fmt: str | None, quantize: str | None, system: str | None, force: bool) -> None:
    """Copy a STAGE's results out of the cache into a normal folder (default: the only train stage).

    A train stage's model is exported on the spot: its adapter with a model card, or with --format
    merged weights or a GGUF file and an Ollama Modelfile."""
    from tunepipe.exporting import export_to
    from tunepipe.session import open_session

    for name, value in (("--quantize", quantize), ("--system", system)):
        if value is not None and fmt != "gguf":
            raise click.UsageError(f"{name} needs --format gguf")
    session = open_session(file, overrides, cache_dir)
    done, files = export_to(session, stage, Path(to), fmt=fmt, force=force, quantize=quantize, system=system)
    if done is not None and done.note:
        click.echo(f"note: {done.note}", err=True)
    for name in files:
        click.echo(str(Path(to) / name))


@cli.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.argument("stage", required=False)
@_spec_options
@click.option("--host", default="127.0.0.1", show_default=True, help="The address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option("--base", is_flag=True, help="Serve the base model instead of the fine-tuned one.")
@click.option("--model-id", metavar="ID", default=None,
              help="The model name clients send [default: PIPELINE/STAGE, or the base model's name].")
@click.option("--max-batch", type=click.IntRange(min=1), default=8, show_default=True,
              help="Requests generated together.")
@_errors
def serve(file: str, stage: str | None, overrides: tuple[str, ...], cache_dir: str | None, host: str, port: int,
          base: bool, model_id: str | None, max_batch: int) -> None:
    """Serve a train STAGE's model behind the OpenAI API (/v1/chat/completions, /v1/models).

    An application written for an OpenAI model works unchanged with base_url
    http://HOST:PORT/v1. Needs the serve extra: pip install 'tunepipe[serve]'."""
    from tunepipe.session import open_session
    from tunepipe.trained import context, find_trained, hosted

    session = open_session(file, overrides, cache_dir)
    trained = find_trained(session, stage)
    hosted(trained)
    if trained.stale:
        click.echo(f"note: {trained.stage}'s model is not current ({'; '.join(trained.stale)}): serving the last "
                   "one trained", err=True)
    name = model_id or (trained.ref.base_model if base else f"{session.pipeline.name}/{trained.stage}")
    with context(session, trained.stage) as ctx:
        from tunepipe.serve import bind, make_app  # a UserError naming the extra when it is missing
        from tunepipe.serve.server import server

        sock = bind(host, port)  # a port in use is an error before the model loads
        replier = trained.backend.replier(ctx, trained.ref, base=base, settings=dict(trained.params))
        app = make_app(replier, name, max_batch=max_batch)
        app.state.served.warm()
        where = f"http://{host if ':' not in host else f'[{host}]'}:{sock.getsockname()[1]}/v1"
        click.echo(f"serving {name} at {where} (model={name!r}; Ctrl-C stops)")
        with sock:
            server(app).run(sockets=[sock])


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
