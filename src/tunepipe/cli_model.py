"""The `pipeline` verbs that take the model out of the cache: chat, export and serve, through the
backend that trained it (:mod:`tunepipe.trained`); registered on the group in :mod:`tunepipe.cli`."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from tunepipe.cli_options import handle_errors as _errors
from tunepipe.cli_options import spec_options as _spec_options


@click.command()
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


@click.command("export")
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


@click.command()
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


COMMANDS = (chat, export_cmd, serve)
