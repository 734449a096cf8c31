"""The options and the error handling every `pipeline` verb shares (the verbs are in :mod:`tunepipe.cli`
and :mod:`tunepipe.cli_history`)."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from tunepipe.errors import SpecError, TunepipeError

F = TypeVar("F", bound=Callable[..., Any])


def handle_errors(fn: F) -> F:
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


def spec_options(fn: F) -> F:
    return cache_dir_option(set_option(fn))


def set_option(fn: F) -> F:
    return click.option("-S", "--set", "overrides", multiple=True, metavar="STAGE.PARAM=VALUE",
                        help="Override a parameter (value read as YAML), or vars.NAME=VALUE. Repeatable.")(fn)


def cache_dir_option(fn: F) -> F:
    return click.option("--cache-dir", envvar="TUNEPIPE_CACHE", metavar="DIR",
                        help="Cache folder [default: .tunepipe next to the pipeline file; env TUNEPIPE_CACHE].")(fn)
