"""The plugin contract: what a stage plugin is, and what the runner hands it.

A stage plugin is any object with the attributes of :class:`StagePlugin` (a ``typing.Protocol``:
no base class to inherit). Plugins never import the runner; the runner reaches plugins only
through :mod:`tunepipe.registry`. See ``docs/plugins.md`` for a complete example.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar, runtime_checkable

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class Port:
    """One named input or output of a plugin.

    ``multiple``: an input that takes a list of artifacts (e.g. several data files, a glob).
    ``optional``: an input the pipeline may leave out.
    """

    description: str
    optional: bool = False
    multiple: bool = False


@dataclass(frozen=True)
class Artifact:
    """A read-only input: a file given in the spec, or a published stage output (a folder).

    ``name`` is how the pipeline refers to it: a path relative to the pipeline file, or
    ``stage.output``; use it in provenance and messages (``path`` may be deep in the cache).
    """

    path: Path
    digest: str
    name: str = ""

    def label(self, file: Path) -> str:
        """A readable name for one of this artifact's files (for provenance)."""
        if file == self.path:
            return self.name or file.name
        return f"{self.name or self.path.name}/{file.relative_to(self.path).as_posix()}"

    def files(self) -> list[Path]:
        """The files of this artifact, sorted (the file itself for a single-file input)."""
        if self.path.is_file():
            return [self.path]
        return sorted(p for p in self.path.rglob("*") if p.is_file())


@dataclass(frozen=True)
class ParamProblem:
    """A problem a plugin finds across its parameters (what JSON Schema cannot say), for
    ``check_params``. ``path`` is inside ``with:`` (e.g. ``("openai", "suffix")``); the spec error
    points at that line of the pipeline file."""

    path: tuple[str | int, ...]
    message: str
    hint: str = ""


class Cancelled(Exception):
    """Raised by :meth:`StageContext.check_cancelled` when the run is being stopped (Ctrl-C)."""


@dataclass
class StageContext:
    """What the runner gives a running plugin.

    Each output is a private, empty folder; the runner publishes it only after ``run`` returns.
    ``scratch`` survives a crash of this very stage run (same key): keep checkpoints or remote
    job ids there to resume. ``shared(area)`` is a folder of the cache for derived files any stage
    may reuse across runs (a model converted once); name files by content and publish them by
    rename. ``log`` writes to the stage's log file.

    ``engine`` says where the stage runs: ``"local"`` (the local executor) or ``"ray"`` (a task on
    a Ray cluster, connected to it): a plugin may then spread its work over the cluster (Ray Data
    blocks, Ray Train workers). Its artifacts must not depend on the engine. A record stage need not
    look: :meth:`map` spreads its work over this machine's cores or the cluster, whichever it has.
    """

    stage: str
    key: str
    outputs: Mapping[str, Path]
    scratch: Path
    log: logging.Logger
    threads: int = 1
    engine: str = "local"
    _cancel: threading.Event = field(default_factory=threading.Event, repr=False)
    _progress: Callable[[str], None] | None = field(default=None, repr=False)
    _shared: Callable[[str], Path] | None = field(default=None, repr=False)
    _say: Callable[[str], None] | None = field(default=None, repr=False)

    def say(self, text: str) -> None:
        """Tell the user something they must see now, as its own line of the run's output (and
        the log): a cost estimate before a paid job starts, "resuming from step 40". Use
        :meth:`progress` for what changes every second."""
        self.log.info("%s", text)
        if self._say is not None:
            self._say(text)

    def shared(self, area: str) -> Path:
        """A cache folder for derived files reused across stages and runs (e.g. ``models``)."""
        if self._shared is None:
            path = self.scratch / "shared" / area  # a context without a cache (tests): stay private
            path.mkdir(parents=True, exist_ok=True)
            return path
        return self._shared(area)

    def output(self, name: str) -> Path:
        """The folder to write output ``name`` into."""
        try:
            return self.outputs[name]
        except KeyError:
            raise KeyError(f"stage '{self.stage}' has no output named '{name}'; "
                           f"declared outputs: {', '.join(self.outputs)}") from None

    def progress(self, note: str) -> None:
        """Show a short progress note on the stage's line (e.g. '12,000 records')."""
        if self._progress is not None:
            self._progress(note)

    @property
    def workers(self) -> int:
        """How many workers :meth:`map` spreads over: the stage's share of the cores (``threads``),
        or on a Ray cluster the CPUs the cluster has for it (e.g. for a log line)."""
        from tunepipe.data.parallel import worker_count

        return worker_count(self.threads, self.engine)

    def map(self, fn: Callable[[T], R], items: Iterable[T], *, local_files: bool = False,
            serial: bool = False, workers: int | None = None) -> Iterator[R]:
        """``map(fn, items)``, spread over :attr:`workers` processes (on Ray, over the cluster), with
        the results in input order and a bounded number of items in flight, so memory stays flat
        and the output is the same for any number of workers.

        ``fn`` must be a module-level function and the items plain data: both are pickled to the
        workers (a block of input lines, not the records parsed from it, is cheap to send; see
        :mod:`tunepipe.data.blocks`). ``local_files``: the items name files of this machine (byte
        ranges of the input), so on a cluster their work stays on this node. ``serial``: run in
        this process (a small input, where starting workers costs more than they save).
        ``workers``: spread over this many instead of :attr:`workers` (a stage's own setting, such
        as ingest's ``workers``). Close the iterator (``contextlib.closing``) when the stage may
        stop before the end.
        """
        from tunepipe.data.parallel import ordered_map, worker_count

        n = 1 if serial else worker_count(workers or self.threads, self.engine)
        return ordered_map(fn, items, n, engine=self.engine, same_node=local_files)

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def check_cancelled(self) -> None:
        """Call this in long loops: raises :class:`Cancelled` once the run is stopping."""
        if self._cancel.is_set():
            raise Cancelled(f"stage '{self.stage}' was cancelled")


Inputs = Mapping[str, "Artifact | list[Artifact]"]


@runtime_checkable
class StagePlugin(Protocol):
    """A stage plugin.

    Attributes:
        name: the name used in ``uses:`` (for entry-point plugins, the entry-point name).
        version: bump it when the plugin's behaviour changes in a way its code fingerprint
            would not show (e.g. a changed default in a data file); it enters the cache key.
        description: one line for ``pipeline stages``.
        params_schema: JSON Schema (2020-12) of the ``with:`` mapping; defaults are applied.
        inputs / outputs: named ports.
        packages: distributions whose installed versions enter the cache key (e.g. ``("torch",)``).

    Optional attribute (looked up with ``getattr``): ``operational``, a sequence of dotted parameter
    paths (``"threads"``, ``"openai.poll_seconds"``) that change how the stage runs (polling,
    timeouts, retries, budget ceilings, threads, device, checkpoint cadence, logging) and never what
    it produces. They are left out of the cache key, so editing one never reruns the stage (nor
    pays for a second job); ``--explain`` and ``status`` name them "operational, not in the key".
    A parameter that can change an output byte must not be listed.

    ``run`` reads its inputs, writes each output into ``ctx.output(name)``, and returns a small
    JSON-able summary (counts, metrics) that the runner shows and records.

    Optional methods (looked up with ``getattr``; a plugin without them works):
        ``check_params(params) -> Sequence[ParamProblem]``: cross-field checks on the parameters
            (defaults applied) after they pass the schema; reported by ``validate`` and ``run``
            like schema errors, with file and line.
        ``preview(inputs, params) -> list[str]``: lines ``run --dry-run`` shows for the stage
            when its inputs already exist (e.g. a cost estimate); must not change anything.
        ``resources(params) -> dict``: what the stage's own Ray task asks a cluster for (``cpus``,
            ``gpus``, ``memory`` in bytes) before the spec's ``resources:``; e.g. train with
            ``workers > 1`` returns ``{"cpus": 0}``: it only coordinates its Ray Train workers.
        ``describe(outputs, summary) -> str``: what ``pipeline show STAGE`` prints about finished
            results beyond the file list (e.g. a metrics table and the report's path); ``outputs``
            maps output names to their (read-only) folders.
        ``secret_env(params) -> Sequence[str]``: the environment variables the stage reads secrets
            from (e.g. train's ``openai.api_key_env``). Their values become secrets of the whole run
            whatever the names (``*_KEY``, ``*TOKEN*``, ``*SECRET*``, ``*PASSWORD*`` always are):
            refused in parameters and ``-S`` values (exit 2) and redacted from logs and errors.
        ``packages_for(params) -> Sequence[str]``: distributions whose versions enter the key for
            these parameters, besides ``packages`` (train: the package of an installed backend when
            it is the chosen one, since its code is not in the stage's code fingerprint).
        ``code_for(params, inputs) -> Sequence[str]``: modules whose code enters the key besides
            the plugin's own module and what it imports (train: the chosen backend's training
            code; evaluate: the replier of the backend that trained the model).
    """

    name: str
    version: str
    description: str
    params_schema: Mapping[str, Any]
    inputs: Mapping[str, Port]
    outputs: Mapping[str, Port]
    packages: Sequence[str]

    def run(self, ctx: StageContext, inputs: Inputs, params: Mapping[str, Any]) -> Mapping[str, Any]:
        ...
