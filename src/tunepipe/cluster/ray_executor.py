"""Run each ready stage as a Ray task: ``pipeline run --executor ray [--address ADDR]``.

The runner does not change: it submits plain-data :class:`StageJob` s and waits on futures.
Here each job becomes a Ray task that asks for the stage's ``resources`` and runs the same
:func:`tunepipe.execute.execute` on whichever node Ray picks, against the same cache (a shared
folder, or object storage: the task opens ``store.location()``). What that guarantees:

* Artifacts do not depend on the executor: the stage code, its key and its publication are the
  same; a stage sees ``ctx.engine == "ray"`` and may spread its own work over the cluster.
* A node lost mid-stage: Ray starts the task again elsewhere (``max_retries``, default 3). The
  key's lock died with the node's processes (on an ``s3://`` cache its lease expires after
  ``TUNEPIPE_LEASE_TTL``), the new attempt clears the dead one's staging folder
  and resumes from the stage's scratch (checkpoints), so the run completes with correct
  artifacts; the run record notes every attempt's node. A stage that fails by itself is not
  retried (``retry_exceptions=False``): its failure is the answer.
* Each stage task runs in a fresh worker process (``max_calls=1``, as Ray does for GPU tasks): a
  stage's memory (a model, tokenizers, Ray Data buffers) goes back to the node when it ends, and
  nothing a stage leaves in its process carries into the next one. A process that has driven a
  Ray Train job was seen to block for good on its next call to Ray's global state
  (``ray.nodes()``, which Ray Data makes too); a fresh process per stage never meets that.
  The run record notes the process (``pid``) next to the node.
* Progress notes, ``ctx.say`` lines and "which node runs it" come back through a small actor on
  the driver's node and show in the usual stage view.
* Ctrl-C on the driver cancels the tasks (Ray raises ``KeyboardInterrupt`` in them, so staging
  folders are removed and locks released); a task killed harder leaves at most an unreferenced
  staging folder, as a ``kill -9`` does locally.

Ray is imported lazily (the ``ray`` extra): the local executor needs no Ray.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tunepipe.cache.store import Store
from tunepipe.errors import TunepipeError, UserError
from tunepipe.execute import StageJob, StageResult
from tunepipe.redact import declared_names, redact
from tunepipe.registry import Registry
from tunepipe.status import Status

DEFAULT_RETRIES = 3
PROGRESS_EVERY_S = 0.5  # a task sends at most this often (plugins may call ctx.progress per record)
_log = logging.getLogger(__name__)


class RayUnavailable(UserError):
    """The Ray executor was asked for but Ray is missing or the cluster cannot be reached."""


def short_node(node_id: str) -> str:
    return node_id[:8]


class Messages:
    """The tasks' channel back to the driver (a Ray actor pinned to the driver's node, so it
    outlives any worker node). It queues progress and ``say`` lines, and remembers on which
    nodes each stage was started, which is how a retry after a lost node is noticed."""

    def __init__(self) -> None:
        self._queue: list[tuple[str, str, str]] = []
        self._starts: dict[str, list[dict[str, str]]] = {}
        self._cancelled = False

    def cancel(self) -> None:
        self._cancelled = True

    def cancelled(self) -> bool:
        return self._cancelled

    def started(self, stage: str, node: str, ip: str) -> int:
        self._starts.setdefault(stage, []).append({"node": node, "ip": ip})
        self._queue.append(("start", stage, f"{node} {ip}"))
        return len(self._starts[stage])

    def put(self, kind: str, stage: str, text: str) -> None:
        if kind == "progress":  # keep only the newest note of a stage: the view shows one
            self._queue = [m for m in self._queue if not (m[0] == "progress" and m[1] == stage)]
        self._queue.append((kind, stage, text))

    def drain(self) -> list[tuple[str, str, str]]:
        out, self._queue = self._queue, []
        return out

    def starts(self, stage: str) -> list[dict[str, str]]:
        return list(self._starts.get(stage, []))


def run_on_ray(job: StageJob, location: str, search_paths: list[str], messages: Any,
               secret_names: tuple[str, ...] = ()) -> StageResult:
    """The task body: open the cache and the plugins here, note the node, run the stage.
    ``secret_names``: the variables the driver's stages declared secret (a node's environment
    is its own), redacted here too."""
    import ray

    from tunepipe.execute import execute
    from tunepipe.redact import add_secret_names
    from tunepipe.session import open_store

    add_secret_names(secret_names)

    node = ray.get_runtime_context().get_node_id()
    ip = ray.util.get_node_ip_address()
    attempt = ray.get(messages.started.remote(job.stage, node, ip))
    last = [0.0]

    def progress(note: str) -> None:
        now = time.monotonic()
        if now - last[0] >= PROGRESS_EVERY_S:
            last[0] = now
            messages.put.remote("progress", job.stage, note)

    def say(text: str) -> None:
        messages.put.remote("say", job.stage, text)

    cancel, done = threading.Event(), threading.Event()

    def watch() -> None:  # Ctrl-C on the driver: ctx.cancelled turns true, so a stage can stop cleanly
        while not done.wait(1.0):
            try:
                if ray.get(messages.cancelled.remote(), timeout=5):
                    cancel.set()
                    return
            except Exception:  # noqa: BLE001 - the driver is gone: Ray ends this task anyway
                return

    threading.Thread(target=watch, name="tunepipe-cancel-watch", daemon=True).start()
    try:
        if "://" not in location and not Path(location).is_dir():
            raise UserError(f"the cache folder {location} is not on node {ip}. With a Ray cluster the cache must "
                            "be where every node sees it: a shared folder mounted at the same path (--cache-dir), "
                            "or object storage (--cache-dir s3://BUCKET/PREFIX)")
        store = open_store(location)
        _check_input_files(job, store, ip)
        registry = Registry(search_paths=[Path(p) for p in search_paths])
        result = execute(job, store, registry, cancel, progress, say)
    except TunepipeError as e:  # before the stage's own run (cache, lock, inputs): a failed stage, said plainly
        result = StageResult(job.stage, Status.FAILED, log_path=job.log_path, error=redact(str(e)),
                             user_error=isinstance(e, UserError))
    finally:
        done.set()
    result.node, result.node_ip, result.attempts, result.pid = node, ip, attempt, os.getpid()
    return result


def connect(address: str | None) -> bool:
    """Join the cluster at ``address`` (``local``: start one here); True when this call started Ray."""
    try:
        import ray
    except ImportError:
        raise RayUnavailable("the Ray executor needs Ray, which is not installed. "
                             "Install it with: pip install 'tunepipe[ray]' (or run without --executor ray)") from None
    if ray.is_initialized():
        return False
    addr = address or os.environ.get("RAY_ADDRESS") or "local"
    _probe(addr)
    options: dict[str, Any] = {"address": addr, "log_to_driver": False, "logging_level": logging.ERROR,
                               "configure_logging": True}
    if addr == "local":
        options["include_dashboard"] = False
    try:
        ray.init(**options)
    except (ConnectionError, TimeoutError, ValueError, RuntimeError, ray.exceptions.RayError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RayUnavailable(
            f"cannot join the Ray cluster at '{addr}': {first}. Start one with `ray start --head`, pass its "
            "head's HOST:PORT with --address (or executor.address in the pipeline file), or use "
            "--address local to start Ray on this machine for this run") from None
    return True


def _check_input_files(job: StageJob, store: Store, ip: str) -> None:
    """The input files that are not stage outputs are read where the task runs, but the stage's key
    holds their digests as the driver saw them: a node with another copy (or none) would record
    its result under a key it does not match. Hashing costs about a second per GB, once per stage."""
    for refs in job.inputs.values():
        for path, digest, name, stored in refs:
            if stored:
                continue
            try:
                here = store.digests.path(Path(path))
            except OSError as e:
                problem = f"cannot be read on node {ip}, where Ray ran the stage ({e.strerror or e})"
            else:
                if here == digest:
                    continue
                problem = f"on node {ip}, where Ray ran the stage, has other content than where the run was planned"
            raise UserError(f"its input {name} ({path}) {problem}. Input files of a Ray run must be the same on "
                            "every node: put them on a shared folder mounted at the same path, or make them the "
                            "output of a stage")


def _probe(addr: str) -> None:
    """Refuse an unreachable HOST:PORT at once: Ray itself retries for minutes, printing warnings."""
    host, sep, port = addr.rpartition(":")
    if not sep or "://" in addr or not port.isdigit():
        return  # local, auto, ray://...: Ray's own handling
    import socket

    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as e:
        raise RayUnavailable(
            f"cannot reach the Ray cluster at {addr}: {e.strerror or e}. Check that its head runs "
            "(`ray status` there) and the address (--address or executor.address: the head's HOST:PORT, "
            "`auto`, or `local` to start Ray here for this run)") from None


def ray_options(resources: dict[str, Any], max_retries: int) -> dict[str, Any]:
    """A stage's ``resources`` as Ray task options (1 CPU unless the stage says otherwise)."""
    opts: dict[str, Any] = {"num_cpus": resources.get("cpus", 1), "max_retries": max_retries,
                            "retry_exceptions": False}
    if resources.get("gpus"):
        opts["num_gpus"] = resources["gpus"]
    if resources.get("memory"):
        opts["memory"] = int(resources["memory"])
    return opts


def threads_for(resources: dict[str, Any]) -> int:
    """A stage's thread budget on a node: the CPUs it asked for (at least one)."""
    return max(1, math.ceil(resources.get("cpus", 1)))


class RayExecutor:
    """Submits stages as Ray tasks; see the module docstring."""

    def __init__(self, jobs: int, store: Store, registry: Registry, cancel: threading.Event,
                 progress: Callable[[str, str], None], say: Callable[[str], None], *,
                 address: str | None = None, max_retries: int = DEFAULT_RETRIES) -> None:
        self._started_ray = connect(address)
        try:
            self._start(jobs, store, registry, cancel, progress, say, address, max_retries)
        except BaseException:  # neither the message pump nor a Ray this run started may outlive it
            if hasattr(self, "_stop"):
                self._stop.set()
            if self._started_ray:
                import ray

                ray.shutdown()
            raise

    def _start(self, jobs: int, store: Store, registry: Registry, cancel: threading.Event,
               progress: Callable[[str, str], None], say: Callable[[str], None], address: str | None,
               max_retries: int) -> None:
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        self._ray = ray
        self.store, self.registry, self.cancel = store, registry, cancel
        self.progress, self.say = progress, say
        self.max_retries = max_retries
        self._location = store.location()
        self._search = [str(p) for p in registry.search_paths]
        here = ray.get_runtime_context().get_node_id()
        self._messages = ray.remote(Messages).options(
            num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=here, soft=False)).remote()
        self._task = ray.remote(max_calls=1)(run_on_ray)  # a fresh process per stage: see the module docstring
        self._refs: dict[str, Any] = {}
        self._settler = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tunepipe-ray-settle")
        self._stop = threading.Event()
        self._pump = threading.Thread(target=self._pump_messages, name="tunepipe-ray-messages", daemon=True)
        self._pump.start()
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        cpus = ray.cluster_resources().get("CPU", 0)
        where = "a local Ray instance" if self._started_ray and (address or "local") == "local" else "Ray cluster"
        say(f"executor: {where} with {len(nodes)} node{'s' if len(nodes) != 1 else ''}, {cpus:g} CPUs")

    def submit(self, job: StageJob) -> Future[StageResult]:
        opts = ray_options(job.resources, self.max_retries)
        ref = self._task.options(name=f"tunepipe:{job.stage}", **opts).remote(
            job, self._location, self._search, self._messages, tuple(declared_names()))
        self._refs[job.stage] = ref
        out: Future[StageResult] = Future()
        out.set_running_or_notify_cancel()
        # Ray calls back on its own thread, where waiting on another Ray call would block it
        ref.future().add_done_callback(lambda f, j=job: self._settler.submit(self._settle, j, f, out))
        return out

    def _settle(self, job: StageJob, done: Future[Any], out: Future[StageResult]) -> None:
        """Turn the task's end into a StageResult, whatever happened to the task."""
        self._refs.pop(job.stage, None)
        try:
            result: StageResult = done.result()
        except BaseException as e:  # the task never returned: cancelled, or its node died too often
            cause = getattr(e, "cause", None)  # a RayTaskError carries what the task raised
            result = StageResult(job.stage, Status.CANCELLED if self.cancel.is_set() else Status.FAILED,
                                 log_path=job.log_path, error=redact(str(cause)) if isinstance(cause, TunepipeError)
                                 else self._task_error(e), user_error=isinstance(cause, UserError))
        try:
            starts = self._ray.get(self._messages.starts.remote(job.stage), timeout=30)
        except Exception:  # noqa: BLE001 - the history is a courtesy; the result stands without it
            starts = []
        result.attempts = max(result.attempts, len(starts))
        result.lost_on = [s["node"] for s in starts if s["node"] != result.node] if result.node else \
            [s["node"] for s in starts]
        out.set_result(result)

    def _task_error(self, e: BaseException) -> str:
        name = type(e).__name__
        if self.cancel.is_set() or name == "TaskCancelledError":
            return "interrupted"
        if name in ("NodeDiedError", "WorkerCrashedError", "OutOfMemoryError", "ActorDiedError"):
            return (f"its Ray task died ({name}) and Ray gave up after {self.max_retries} retries: a node was "
                    "lost or ran out of memory. Check `ray status`, give the stage more memory under `resources:`, "
                    "or raise executor.max_retries")
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        return f"its Ray task failed: {name}: {first}"

    def _pump_messages(self) -> None:
        while not self._stop.is_set():
            try:
                batch = self._ray.get(self._messages.drain.remote(), timeout=10)
            except Exception:  # noqa: BLE001 - shutting down, or the driver lost the cluster
                if self._stop.wait(1.0):
                    return
                continue
            for kind, stage, text in batch:
                if kind == "progress":
                    self.progress(stage, text)
                elif kind == "say":
                    self.say(text)
                elif kind == "start":
                    node, ip = text.split(" ", 1)
                    self.progress(stage, f"on node {short_node(node)} ({ip})")
            self._stop.wait(0.25)

    def shutdown(self) -> None:
        """Cancel what still runs (Ctrl-C), stop the message pump, and stop Ray if we started it."""
        if self.cancel.is_set():
            try:
                self._ray.get(self._messages.cancel.remote(), timeout=5)
                time.sleep(1.5)  # the tasks see ctx.cancelled and stop at their next check
            except Exception:  # noqa: BLE001
                pass
            for ref in list(self._refs.values()):
                try:
                    self._ray.cancel(ref, force=False)
                except Exception:  # noqa: BLE001 - already finished
                    pass
            deadline = time.monotonic() + 10
            while self._refs and time.monotonic() < deadline:  # let tasks remove their staging folders
                time.sleep(0.1)
        self._stop.set()
        self._pump.join(timeout=5)
        self._settler.shutdown(wait=not self.cancel.is_set())
        try:  # deliver the last lines (a task's final "say")
            for kind, _stage, text in self._ray.get(self._messages.drain.remote(), timeout=5):
                if kind == "say":
                    self.say(text)
        except Exception:  # noqa: BLE001
            pass
        if self._started_ray:
            self._ray.shutdown()
