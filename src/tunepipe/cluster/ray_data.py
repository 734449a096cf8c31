"""``ordered_map`` on Ray Data: the same items, the same function and the same order as the local
process pool of :mod:`tunepipe.data.parallel`, spread over a Ray cluster (:func:`ray_map` says how).

:func:`tunepipe.data.parallel.ordered_map` comes here only in a process connected to Ray
(``engine="ray"``); Ray itself is imported inside the functions, so importing this module never
starts or needs Ray. :func:`ray_cpus` is what :func:`tunepipe.data.parallel.worker_count` counts
on a cluster.
"""

from __future__ import annotations

import functools
import pickle
import time
import traceback
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import chain, islice
from typing import Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")

# Items travel in groups, one Ray Data task each: a task costs Ray Data tens
# of milliseconds (hundreds on a busy machine), more than many of the stages' items take.
RAY_TASK_SECONDS = 0.5  # the work a group aims at, by the time its items took so far
RAY_GROUP_ITEMS = 64  # items in a group at most
RAY_GROUP_BYTES = 32 << 20  # a group is closed at this many bytes of items (pickled)
RAY_WINDOW = 4096  # items in flight at most by default (two full groups per CPU below that)
NODE_ID_LABEL = "ray.io/node-id"  # the label each Ray node carries with its id (ray._raylet.RAY_NODE_ID_KEY)


def ray_cpus(same_node: bool) -> int:
    """The CPUs Ray Data can use: the cluster's (or this node's), less those this task holds.

    Counting the stage's own task matters: a stage that holds every CPU of a one-node cluster would
    otherwise wait forever for Ray Data tasks that can never be scheduled.
    """
    import ray

    rt = ray.get_runtime_context()
    try:
        held = rt.get_assigned_resources().get("CPU", 0.0)
    except AssertionError:  # a driver, not a task: it holds nothing
        held = 0.0
    return int(_cluster_cpus(rt.get_node_id() if same_node else "") - held)


def _free_cpus(same_node: bool) -> int:
    """The CPUs free right now (the cluster's, or this node's). Each stage task holds its CPU while
    its Ray Data tasks wait for CPUs of their own: when independent record stages have taken every
    CPU (a ``matrix:`` of data sets on a small cluster), maps started on Ray Data would wait for
    each other for good. A stage that finds no CPU free maps in its own process instead, so the
    stage that took the last CPU always makes progress and frees it."""
    import ray

    try:
        if same_node:
            from ray._private.state import state  # per-node figures: no public API in Ray 2.x

            node = ray.get_runtime_context().get_node_id()
            return int(state.available_resources_per_node().get(node, {}).get("CPU", 0.0))
        return int(ray.available_resources().get("CPU", 0.0))
    except Exception:  # noqa: BLE001 - a Ray without these figures: do as before, trust the totals
        return 1 << 30


_CPUS: dict[str, tuple[float, float]] = {}
CPUS_FRESH_S = 30.0


def _cluster_cpus(node: str) -> float:
    """The CPUs of the cluster (``node`` empty) or of one node, asked of Ray at most every
    ``CPUS_FRESH_S``: Ray's global-state calls go to the GCS and were seen to block for minutes
    in a process that had just run a Ray Train job, so a stage does not ask once per block."""
    import ray

    now = time.monotonic()
    cached = _CPUS.get(node)
    if cached is not None and now - cached[1] < CPUS_FRESH_S:
        return cached[0]
    if node:
        total = next((n["Resources"].get("CPU", 0.0) for n in ray.nodes() if n["NodeID"] == node and n["Alive"]), 0.0)
    else:
        total = ray.cluster_resources().get("CPU", 0.0)
    _CPUS[node] = (total, now)
    return total


class WorkerTraceback(Exception):
    """Where a worker raised (the cause of the re-raised exception, as concurrent.futures does)."""


@dataclass(frozen=True)
class _Job:
    """What a Ray Data task needs to apply ``fn``: sent once per task, not per item."""

    token: str  # this ordered_map call: its initializer runs once per worker process
    fn: Callable[[Any], Any]
    initializer: Callable[..., None] | None
    initargs: tuple


_READY: set[str] = set()  # the ordered_map calls whose initializer ran in this (Ray worker) process


def _apply(job: _Job, payload: bytes) -> bytes:
    """One item, in a Ray worker: ``b"R" + pickle(result)``, or ``b"E" + pickle((error, traceback))``.

    An error comes back as data, not as a failed task: Ray Data would wrap it (or retry the task),
    while the stage must fail with the original exception, at that item, as it does locally.
    """
    try:
        if job.token not in _READY:
            if job.initializer is not None:
                job.initializer(*job.initargs)
            _READY.add(job.token)
        return b"R" + pickle.dumps(job.fn(pickle.loads(payload)), protocol=5)
    except Exception as e:
        tb = traceback.format_exc()
        try:
            blob = pickle.dumps((e, tb), protocol=5)
            pickle.loads(blob)  # an exception that pickles but does not unpickle would be lost
        except Exception:
            blob = pickle.dumps((RuntimeError(f"{type(e).__name__}: {e}"), tb), protocol=5)
        return b"E" + blob


def _apply_batch(job: _Job, batch: Any) -> Any:
    """Ray Data's map function. A row is a group: ``seq`` (its number), ``payload`` (its items'
    pickles, pickled); it comes back with its results in their place, and the seconds they took."""
    import time

    import pyarrow as pa

    out, seconds = [], []
    for payload in batch.column("payload").to_pylist():
        start = time.perf_counter()
        out.append(pickle.dumps([_apply(job, p) for p in pickle.loads(payload)], protocol=5))
        seconds.append(time.perf_counter() - start)
    return pa.table({"seq": batch.column("seq"), "payload": pa.array(out, pa.large_binary()),
                     "seconds": pa.array(seconds, pa.float64())})


def _result(wrapped: bytes) -> Any:
    """An item's result in this process, or its worker's exception raised here."""
    view = memoryview(wrapped)[1:]
    if wrapped[:1] == b"R":
        return pickle.loads(view)
    error, tb = pickle.loads(view)
    raise error from WorkerTraceback(tb)


def _read_feed(inbox: Any) -> Iterator[Any]:
    """The read task: one block per group, in the stage's order, until the last group. A stopped
    inbox (the stage stopped early) ends it too."""
    import pyarrow as pa
    import ray

    seq = 0
    while True:
        try:
            message = ray.get(inbox.take.remote(seq))
        except ray.exceptions.RayActorError:  # the stage stopped reading: nothing left to do
            return
        if message is None:
            return
        yield pa.table({"seq": pa.array([seq], pa.int64()),
                        "payload": pa.array([ray.get(message[0])], pa.large_binary())})
        seq += 1


class Inbox:
    """The groups on their way to the read task (a Ray actor on the stage's node), each handed out
    once, by number.

    Not ``ray.util.queue.Queue``: the stage sends without waiting (an actor call takes hundreds of
    milliseconds on a busy machine), so groups may arrive out of order; and a read task that Ray
    restarted (its worker died) would wait forever there for the groups its first attempt took.
    Here it asks for the group it expects, and a restart fails the stage instead.
    """

    def __init__(self) -> None:
        import asyncio

        self.groups: dict[int, list[Any]] = {}
        self.next = 0  # the group the read task takes next
        self.total: int | None = None  # groups in all, once the stage read its last item
        self.arrived = asyncio.Event()

    def put(self, seq: int, ref: list[Any]) -> None:
        self.groups[seq] = ref  # a reference in a list: Ray passes it on, not the bytes
        self.arrived.set()

    def end(self, total: int) -> None:
        self.total = total
        self.arrived.set()

    async def take(self, seq: int) -> list[Any] | None:
        """Group ``seq`` (waiting for it), or None after the last one."""
        if seq != self.next:
            raise RuntimeError(f"the read task asked for group {seq} where group {self.next} was due: it was "
                               "restarted and the groups its first attempt took are gone; run the stage again")
        while seq not in self.groups:
            if self.total is not None and seq >= self.total:
                return None
            self.arrived.clear()
            await self.arrived.wait()
        self.next += 1
        return self.groups.pop(seq)


@functools.cache
def _feed_source() -> type:
    """The Ray Data source of the stage's items (a class made on first use: Ray is imported only then)."""
    import pyarrow as pa
    from ray.data import Datasource, ReadTask
    from ray.data.block import BlockMetadata

    class Items(Datasource):
        """Groups of items the stage sends as it reads its input, read by one streaming task."""

        def __init__(self, inbox: Any) -> None:
            super().__init__()
            self.inbox = inbox

        def estimate_inmemory_data_size(self) -> int | None:
            return None

        def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                           data_context: Any = None) -> list[Any]:
            meta = BlockMetadata(num_rows=None, size_bytes=None, input_files=None, exec_stats=None)
            schema = pa.schema([("seq", pa.int64()), ("payload", pa.large_binary())])
            return [ReadTask(functools.partial(_read_feed, self.inbox), meta, schema=schema)]

        @property
        def supports_distributed_reads(self) -> bool:
            return False  # the items come from this process: read them on this node

        def get_name(self) -> str:
            return "TunepipeItems"

    return Items


def ray_map(fn: Callable[[T], R], items: Iterable[T], workers: int, window: int | None,
            initializer: Callable[..., None] | None, initargs: tuple, same_node: bool) -> Iterator[R]:
    """``ordered_map`` on Ray Data: the same items, in the same order, spread over the cluster.

    Why this shape:

    * The stages build their items as they read (blocks of bytes, or byte ranges), so the items
      are fed as they come rather than listed first (``ray.data.from_items`` would hold the whole
      input): this process pickles them, puts groups of them in the object store and sends their
      references to an inbox actor (:class:`Feed`, :class:`Inbox`); one streaming read task (on
      this node, no CPU) turns each group into a block; ``map_batches`` applies ``fn`` to each
      block's items in a task anywhere on the cluster (``same_node``: on this node, for items that
      name this node's files).
    * Groups: a Ray Data task costs tens of milliseconds (hundreds on a busy machine), more than a
      stage's item may take. The first groups hold one item each (two per CPU, so the work starts
      at once); then a group holds as many items as take about ``RAY_TASK_SECONDS`` at the average
      time of the items so far. The grouping changes how the work is cut, never a result or their
      order.
    * Order: ``preserve_order`` makes Ray Data return the blocks in input order, and each block
      carries its group's number, checked here, so an out-of-order or lost block fails loudly
      instead of writing a different file. Items and results are pickles, so neither Arrow nor
      Ray Data changes a value (a tuple stays a tuple, bytes stay bytes).
    * Memory: at most ``window`` items are in flight (read, their result not yet returned), as the
      local pool counts them, and two groups per CPU; they wait in the object store, not here.
    * The initializer runs once per worker process and call (a module-level set of tokens): Ray
      reuses its worker processes across tasks, so per-process state lasts as it does in a pool.
      Tasks rather than an actor pool: they spread over whatever the cluster has, with no start-up
      wait for actors.
    * A single item (a small input) runs in this process: there is nothing to spread, and starting
      a dataset costs more than the item.
    """
    source = iter(items)
    head = list(islice(source, 2))
    cpus = min(workers, ray_cpus(same_node), _free_cpus(same_node)) if len(head) == 2 else 0
    if cpus < 1:  # one item (nothing to spread), or no CPU for Ray Data to use now: in this process
        if initializer is not None:
            initializer(*initargs)
        yield from map(fn, head)
        yield from map(fn, source)
        return
    import ray
    from ray.data import TaskPoolStrategy
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    node = ray.get_runtime_context().get_node_id()
    inbox = ray.remote(Inbox).options(num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(
        node, soft=False)).remote()
    feed = Feed(inbox, chain(head, source), cpus, window or min(2 * cpus * RAY_GROUP_ITEMS, RAY_WINDOW))
    rows = None
    try:
        # the source is not distributed: Ray Data reads it on this node, next to the inbox; one read
        # task with no CPU, and a cap of one so that Ray Data leaves every CPU to the map
        ds = ray.data.read_datasource(_feed_source()(inbox), override_num_blocks=1, num_cpus=0,
                                      compute=TaskPoolStrategy(size=1))
        options = ds.context  # this dataset's own copy: other datasets in this process keep theirs
        options.execution_options.preserve_order = True
        options.target_max_block_size = 1  # one group per block, passed on at once (not gathered to 128 MiB)
        options.enable_progress_bars = False  # the stage reports its own progress
        options.print_on_execution_start = False
        job = _Job(uuid.uuid4().hex, fn, initializer, initargs)
        ds = ds.map_batches(functools.partial(_apply_batch, job), batch_size=None, batch_format="pyarrow",
                            zero_copy_batch=True, compute=TaskPoolStrategy(size=cpus),
                            label_selector={NODE_ID_LABEL: node} if same_node else None)
        feed.top_up()
        rows = iter(ds.iter_rows())
        for expected, row in enumerate(rows):
            if row["seq"] != expected:
                raise RuntimeError(f"Ray Data returned block {row['seq']} where block {expected} was due; the "
                                   "output would differ from the local executor's, so the stage stops")
            results = pickle.loads(row["payload"])
            feed.group_done(len(results), row["seconds"])
            for wrapped in results:
                result = _result(wrapped)
                feed.taken += 1
                feed.top_up()
                yield result
        if feed.taken != feed.read or not feed.ended:
            raise RuntimeError(f"Ray Data returned {feed.taken} of {feed.read} items (a task of the cluster was "
                               "lost: a worker or a node stopped); the stage stops rather than write a partial "
                               "output: run it again")
    finally:
        close = getattr(rows, "close", None)
        if close is not None:
            close()  # stops the dataset's execution (its tasks are cancelled)
        ray.kill(inbox)


class Feed:
    """This process's side of the inbox: reads the stage's items into groups and sends them, at
    most two groups per CPU out and ``window`` items in flight."""

    def __init__(self, inbox: Any, items: Iterator[Any], cpus: int, window: int) -> None:
        self.inbox, self.items, self.cpus, self.window = inbox, items, cpus, window
        self.group_max = max(1, min(RAY_GROUP_ITEMS, window // (2 * cpus)))  # two full groups per CPU fit
        self.read = self.taken = 0  # items read; items whose result the stage took
        self.sent = self.done = 0  # groups sent; groups whose results came back
        self.seconds = 0.0  # what the items done so far took, in all
        self.items_done = 0
        self.ended = False
        self.posted: list[Any] = []  # sends not known to have arrived

    def group_done(self, items: int, seconds: float) -> None:
        self.done += 1
        self.items_done += items
        self.seconds += seconds

    def group_size(self) -> int:
        """One item until a group came back (the work starts at once), then what takes about
        ``RAY_TASK_SECONDS`` at the items' average time so far."""
        if not self.items_done:
            return 1
        per_item = self.seconds / self.items_done
        return min(self.group_max, max(1, int(RAY_TASK_SECONDS / max(per_item, 1e-6))))

    def top_up(self) -> None:
        """Send groups while fewer than two per CPU are out and a whole one fits in the window."""
        import ray

        while not self.ended and self.sent - self.done < 2 * self.cpus:
            size = self.group_size()
            if self.read - self.taken + size > self.window:
                return
            group: list[bytes] = []
            nbytes = 0
            while len(group) < size and nbytes < RAY_GROUP_BYTES:
                item = next(self.items, _END)
                if item is _END:
                    self.ended = True
                    break
                group.append(pickle.dumps(item, protocol=5))
                nbytes += len(group[-1])
            if group:
                self.read += len(group)
                self._post(self.inbox.put.remote(self.sent, [ray.put(pickle.dumps(group, protocol=5))]))
                self.sent += 1
            if self.ended:
                self._post(self.inbox.end.remote(self.sent))  # the read task stops after the last group

    def _post(self, call: Any) -> None:
        """Keep an inbox call without waiting for its round trip; one that failed raises at the next."""
        import ray

        if self.posted:
            arrived, self.posted = ray.wait(self.posted, num_returns=len(self.posted), timeout=0)
            ray.get(arrived)
        self.posted.append(call)


_END = object()
