"""Data-parallel local training on Ray Train workers: the train stage's ``workers: N`` (N > 1).

The stage, running as a Ray task (``--executor ray``), is only the coordinator: it resolves the
base model and fingerprints the data as the ordinary run does, then starts a
``ray.train.torch.TorchTrainer`` with N workers (``ScalingConfig(num_workers=N, use_gpu=...)``;
gloo on CPUs, NCCL on GPUs) and waits. Each worker runs the ordinary loop of
:mod:`tunepipe.hf.loop` with a :class:`RayWorld`, so the two paths share every line of the
training arithmetic:

* **Batches.** ``batch_size`` is per worker, as ``micro_batch_size`` in Axolotl, ``batch_size`` in
  torchtune and ``per_device_train_batch_size`` in transformers: one optimizer step takes
  ``batch_size x gradient_accumulation x workers`` examples, so an epoch has about 1/N of the
  one-worker steps. Each epoch's seeded batch order is the ordinary one; an optimizer step takes
  the next ``gradient_accumulation x N`` batches of it and worker ``r`` trains on batches ``r``,
  ``r+N``, ... (disjoint, deterministic; the last step of an epoch may leave a worker without a
  batch: it runs a stand-in whose loss counts for nothing, so the collectives stay in step).
* **Gradients.** DDP averages them; each worker scales its summed loss so that the average is the
  gradient of the step's mean loss over all its trained tokens: the same update one process would
  make on the union of the batches. The step's loss in loss.csv is that global mean and ``tokens``
  counts all workers, so curves of runs with different N compare by ``tokens``.
* **Checkpoints.** Every ``save_every`` steps, at each epoch end and on cancel, rank 0 reports the
  ordinary checkpoint files as a Ray Train checkpoint; they land in the stage's scratch folder
  (``RunConfig(storage_path=<scratch>/ray-train)``, a path every node must reach on a multi-node
  cluster). A rerun of the same stage (a crash, a lost node, Ctrl-C) resumes from the newest; Ray
  Train itself restarts a failed worker group from it :data:`MAX_FAILURES` times.
* **The artifact.** Rank 0 writes it (model.json, adapter/ or full/, tokenizer/, metrics.json with
  ``workers`` and each rank's share, loss.csv) into the final checkpoint; the coordinator copies
  that into the stage's output folder, so rank 0 need not share a filesystem with it.
* **Progress, logs, cancel** travel through :class:`Link`, a small actor on the coordinator's
  node, which also serves the coordinator node's files (training data, base model) to workers on
  nodes that cannot see them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tunepipe.errors import UserError
from tunepipe.hf.artifact import summary
from tunepipe.hf.loop import World
from tunepipe.hf.settings import LocalTrainSettings
from tunepipe.plugins import Cancelled, StageContext

MAX_FAILURES = 2  # worker-group restarts (from the newest checkpoint) after a worker or node dies
POLL_SECONDS = 0.3  # the coordinator's pace for progress notes, log lines and a cancel
STOP_POLL_SECONDS = 0.5  # how often rank 0 asks whether the stage was cancelled
CHUNK = 8 << 20  # bytes per read when a worker copies a file from the coordinator's node


# --- the coordinator's end ----------------------------------------------------------------------

class Link:
    """The stage's end of a run, an actor on the stage's node: progress notes, log lines and
    messages from rank 0, a stop request from the stage, a user error or a cancel from the
    workers, and the stage node's files for workers on other nodes."""

    def __init__(self) -> None:
        self._note: str | None = None
        self._lines: list[tuple[int, str]] = []
        self._says: list[str] = []
        self._stop = False
        self._error: str | None = None
        self._cancelled = False

    def note(self, text: str) -> None:
        self._note = text

    def line(self, level: int, text: str) -> None:
        self._lines.append((level, text))

    def say(self, text: str) -> None:
        self._says.append(text)

    def fail(self, message: str) -> None:
        if self._error is None:
            self._error = message

    def cancelled(self) -> None:
        self._cancelled = True

    def stop(self) -> None:
        self._stop = True

    def stopping(self) -> bool:
        return self._stop

    def drain(self) -> dict[str, Any]:
        out = {"note": self._note, "lines": self._lines, "says": self._says, "error": self._error,
               "cancelled": self._cancelled}
        self._note, self._lines, self._says = None, [], []
        return out

    def files(self, origin: str) -> list[tuple[str, int]]:
        """(path relative to ``origin``, size) of a folder's files; ("", size) for a file."""
        root = Path(origin)
        if root.is_file():
            return [("", root.stat().st_size)]
        return [(p.relative_to(root).as_posix(), p.stat().st_size) for p in sorted(root.rglob("*")) if p.is_file()]

    def read(self, path: str, offset: int, size: int) -> bytes:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read(size)


def _start_link(ray: Any) -> Any:
    """A Link on this node (it serves this node's files), holding no CPU."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = ray.get_runtime_context().get_node_id()
    actor = ray.remote(num_cpus=0, max_restarts=0)(Link)
    return actor.options(scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=False)).remote()


def _use_gpu(ray: Any, requested: str) -> bool:
    """device: cuda, or auto on a cluster with GPUs: one GPU per worker."""
    if requested == "cuda":
        return True
    return requested == "auto" and ray.cluster_resources().get("GPU", 0) >= 1


def _check_fits(ray: Any, workers: int, cpus: int, gpu: bool) -> None:
    """A Ray Train worker group larger than the cluster would wait for resources forever."""
    total = ray.cluster_resources()
    need = {"CPU": workers * cpus, **({"GPU": workers} if gpu else {})}
    short = [f"{v:g} {k}s, the cluster has {total.get(k, 0):g}" for k, v in need.items() if v > total.get(k, 0)]
    if short:
        each = f"{cpus} CPU{'s' if cpus > 1 else ''}" + (" and 1 GPU" if gpu else "")
        raise UserError(f"workers: {workers} needs more than the Ray cluster has "
                        f"({'; '.join(short)}; each worker takes {each}). Lower workers (or threads, the CPUs of "
                        "each worker), or start the cluster with more nodes")


def _model_origin(source: Any) -> str:
    """The folder on this node that holds the base model's files (a hub id: its cached snapshot)."""
    if source.kind != "hub":
        return source.location
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(source.location, "config.json")
    return str(Path(found).parent) if isinstance(found, str) else source.location


def train_distributed(ctx: StageContext, train: Path, validation: Path | None, params: Mapping[str, Any], out: Path,
                      s: LocalTrainSettings, *, storage: str | None = None) -> dict[str, Any]:
    """Train on ``s.workers`` Ray Train workers and copy rank 0's artifact into ``out``.

    ``storage``: where Ray Train keeps checkpoints (default ``<ctx.scratch>/ray-train``; on a
    multi-node cluster a path or URI every node reaches).
    """
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from tunepipe.hf.models import file_sha256, resolve_base
    from tunepipe.hf.settings import fingerprint

    if validation is not None and validation.stat().st_size == 0:
        validation = None
    cpus = s.threads or 1
    gpu = _use_gpu(ray, s.device)
    _check_fits(ray, s.workers, cpus, gpu)
    ctx.progress("resolving the model")
    source = resolve_base(s.model, ctx.shared("models"), say=ctx.say)
    link = _start_link(ray)
    config = {
        "params": dict(params), "source": source, "origin": _model_origin(source),
        "train": (str(train), file_sha256(train)),
        "validation": (str(validation), file_sha256(validation)) if validation is not None else None,
        "fingerprint": fingerprint(s, params, source, train, validation), "use_gpu": gpu, "threads": cpus,
        "stage": ctx.stage, "key": ctx.key, "link": link, "started": time.time(),
    }
    storage = storage or str((ctx.scratch / "ray-train").absolute())
    run_config = RunConfig(name=f"train-{ctx.key[:16]}", storage_path=storage,
                           failure_config=FailureConfig(max_failures=MAX_FAILURES),
                           checkpoint_config=CheckpointConfig(num_to_keep=2))
    trainer = TorchTrainer(_worker, train_loop_config=config,
                           scaling_config=ScalingConfig(num_workers=s.workers, use_gpu=gpu,
                                                        resources_per_worker={"CPU": cpus}),
                           torch_config=TorchConfig(backend="nccl" if gpu else "gloo"), run_config=run_config)
    each = "1 GPU" if gpu else f"{cpus} CPU{'s' if cpus > 1 else ''}"
    ctx.say(f"training on {s.workers} Ray Train workers ({each} each)")
    ctx.progress(f"starting {s.workers} Ray Train workers")
    relay = _Relay(ray, ctx, link)
    relay.start()
    failed: BaseException | None = None
    result = None
    try:
        result = trainer.fit()
    except Exception as e:  # ray.train.TrainingFailedError: a worker's error, after the retries
        failed = e
    finally:
        relay.close()
    try:
        if relay.error is not None:
            raise UserError(relay.error)
        if relay.cancelled or ctx.cancelled:
            raise Cancelled(f"stage '{ctx.stage}' was cancelled (its checkpoint is kept: run again to resume)")
        if failed is not None:
            raise failed
        if result is None or result.checkpoint is None:
            raise RuntimeError(f"Ray Train finished without a checkpoint in {storage}")
        ctx.progress("copying the model")
        with result.checkpoint.as_directory() as folder:
            shutil.copytree(Path(folder) / "artifact", out, dirs_exist_ok=True)
    finally:
        with contextlib.suppress(Exception):
            ray.kill(link)
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    return summary(metrics)


class _Relay(threading.Thread):
    """Shows rank 0's progress and log lines on the stage while Ray Train runs, and passes a
    cancel of the stage on to the workers."""

    def __init__(self, ray: Any, ctx: StageContext, link: Any) -> None:
        super().__init__(name=f"tunepipe-ray-train-{ctx.stage}", daemon=True)
        self.ray, self.ctx, self.link = ray, ctx, link
        self.done = threading.Event()
        self.error: str | None = None
        self.cancelled = False
        self.asked_stop = False

    def run(self) -> None:
        while not self.done.wait(POLL_SECONDS):
            self.pump()

    def pump(self) -> None:
        try:
            got = self.ray.get(self.link.drain.remote(), timeout=60)
        except Exception as e:  # the link is gone (node lost): the run's own error says more
            self.ctx.log.warning("lost the Ray Train link: %s", e)
            self.done.set()
            return
        for level, text in got["lines"]:
            self.ctx.log.log(level, "%s", text)
        for text in got["says"]:
            self.ctx.say(text)
        if got["note"]:
            self.ctx.progress(got["note"])
        self.error, self.cancelled = got["error"], got["cancelled"]
        if self.ctx.cancelled and not self.asked_stop:
            self.asked_stop = True
            self.link.stop.remote()

    def close(self) -> None:
        self.done.set()
        self.join()
        self.pump()  # what came after the last poll


# --- the workers' end ---------------------------------------------------------------------------

class _LinkHandler(logging.Handler):
    """Rank 0's log lines, sent to the stage's log through the link."""

    def __init__(self, link: Any) -> None:
        super().__init__(logging.INFO)
        self.link = link

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.link.line.remote(record.levelno, record.getMessage())
        except Exception:  # logging must never break training
            self.handleError(record)


class _WorkerContext(StageContext):
    """A worker's StageContext: what it says goes to the stage, which logs it (once)."""

    def say(self, text: str) -> None:
        if self._say is not None:
            self._say(text)


def _worker_ctx(config: Mapping[str, Any], rank: int, scratch: Path, cancel: threading.Event) -> StageContext:
    """A StageContext for a worker: rank 0 talks to the stage through the link, the others are quiet."""
    link = config["link"]
    log = logging.getLogger(f"tunepipe.ray-train.{config['stage']}.{config['key'][:12]}.{rank}")
    log.setLevel(logging.INFO)
    log.propagate = False
    for h in list(log.handlers):
        log.removeHandler(h)
    log.addHandler(_LinkHandler(link) if rank == 0 else logging.NullHandler())
    talk = rank == 0
    return _WorkerContext(stage=config["stage"], key=config["key"], outputs={}, scratch=scratch, log=log,
                          threads=config["threads"], engine="ray", _cancel=cancel,
                          _progress=(lambda text: link.note.remote(text)) if talk else None,
                          _say=(lambda text: link.say.remote(text)) if talk else None)


NODE_COPY_DAYS = 7.0  # a node's copy of a model or data file unused this long is removed
UNFINISHED_COPY_HOURS = 24.0  # a copy still being written after this long was left by a killed worker


def _node_cache() -> Path:
    return Path(tempfile.gettempdir()) / f"tunepipe-ray-{os.getuid()}"


def prune_node_cache(root: Path, now: float | None = None) -> list[str]:
    """Remove this node's copies unused for ``NODE_COPY_DAYS`` (a use touches a copy) and copies a
    killed worker left half-written, so the folder does not grow with every model and data set a
    long-lived node has trained on. Best effort: a copy another worker removes first is skipped."""
    now = time.time() if now is None else now
    removed = []
    try:
        entries = list(root.iterdir())
    except OSError:
        return removed
    for entry in entries:
        unfinished = entry.name.startswith(".")
        limit = UNFINISHED_COPY_HOURS * 3600 if unfinished else NODE_COPY_DAYS * 86400
        try:
            if now - entry.stat().st_mtime < limit:
                continue
        except OSError:
            continue
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry.name)
    return removed


def _copy_from_stage(ray: Any, link: Any, origin: str, name: str) -> Path:
    """A copy on this node of the stage node's file or folder ``origin``, kept under ``name`` (which
    names the content) in this node's temporary folder, so each node copies it once."""
    dest = _node_cache() / name
    if dest.is_dir():  # complete: renamed into place only once every file was written
        with contextlib.suppress(OSError):
            os.utime(dest)  # in use: prune_node_cache keeps it
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    prune_node_cache(dest.parent)  # before a new copy adds to the folder
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        for rel, size in ray.get(link.files.remote(origin)):
            source = origin if not rel else f"{origin}/{rel}"
            target = tmp / (rel or Path(origin).name)
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(target, "wb") as f:
                for offset in range(0, size, CHUNK):
                    f.write(ray.get(link.read.remote(source, offset, CHUNK)))
        try:
            os.rename(tmp, dest)
        except OSError:  # another worker of this node finished first
            if not dest.is_dir():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def _data_file(ray: Any, link: Any, ref: tuple[str, str] | None) -> Path | None:
    """The stage's data file on this node: its own path when this node sees it, else a copy."""
    if ref is None:
        return None
    from tunepipe.hf.models import file_sha256

    path, digest = ref
    if Path(path).is_file() and file_sha256(Path(path)) == digest:
        return Path(path)
    return _copy_from_stage(ray, link, path, f"data-{digest[:16]}") / Path(path).name


def _sees_model(source: Any) -> bool:
    """Whether this node holds the very base model the stage resolved, where the stage saw it."""
    from tunepipe.hf import models

    try:
        if source.kind == "hub":
            return models.resolve_base(source.spec, None).identity == source.identity
        folder = Path(source.location)
        if source.kind == "folder":
            return folder.is_dir() and models.resolve_base(str(folder), None).identity == source.identity
        marker = json.loads((folder / models.CONVERTED_MARKER).read_text(encoding="utf-8"))
        return (folder / "config.json").is_file() and f"gguf:{marker.get('sha256')}" == source.identity
    except (UserError, OSError, ValueError):
        return False


def _model_source(ray: Any, config: Mapping[str, Any]) -> Any:
    """What this worker loads the base model from: the stage's own location, else a copy of it."""
    from tunepipe.hf.models import BaseSource

    source = config["source"]
    if _sees_model(source):
        return source
    name = "model-" + hashlib.sha256(source.identity.encode()).hexdigest()[:16]
    folder = _copy_from_stage(ray, config["link"], config["origin"], name)
    return BaseSource(source.spec, "folder", str(folder), source.identity)


def _worker_device(use_gpu: bool, requested: str) -> str:
    """The GPU Ray Train gave this worker, else the CPU (or Apple's MPS, asked for or auto)."""
    import torch

    if use_gpu:
        import ray.train.torch

        torch.cuda.set_device(ray.train.torch.get_device())
        return "cuda"
    if requested in ("auto", "mps"):
        from tunepipe.hf.device import resolve_device

        if requested == "mps" or resolve_device("auto") == "mps":
            return resolve_device("mps")
    return "cpu"


def _loss_module(model: Any, head: Any) -> Any:
    """The training loss as a module DDP can wrap: its forward is :func:`loss_sum`, so DDP's
    gradient hooks fire however the loss reaches the weights."""
    import torch

    from tunepipe.hf.forward import loss_sum

    class LossModule(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: Any, attention_mask: Any, labels: Any) -> Any:
            return loss_sum(self.model, {"input_ids": input_ids, "attention_mask": attention_mask,
                                         "labels": labels}, head)

    return LossModule()


class RayWorld(World):
    """Ray Train's data-parallel workers, as the training loop sees them (see the module docs)."""

    def __init__(self, rank: int, size: int, link: Any, seed: int, cancel: threading.Event, comm_device: str) -> None:
        self.rank, self.size, self.link, self.seed, self.cancel = rank, size, link, seed, cancel
        self.comm_device = comm_device
        self.ddp: Any = None
        self.counts = {"examples": 0, "batches": 0, "trained_tokens": 0}
        self.ranks: list[dict[str, Any]] = []
        self.last_poll = -STOP_POLL_SECONDS

    # -- collectives (torch.distributed, set up by Ray Train) --

    def total(self, values: list[float]) -> list[float]:
        import torch
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.float64, device=self.comm_device)
        dist.all_reduce(t)
        return [float(v) for v in t.tolist()]

    def any(self, flag: bool) -> bool:
        """Whether any worker says ``flag`` (every worker must call it)."""
        return self.total([1.0 if flag else 0.0])[0] > 0

    def gather(self, value: Any) -> list[Any]:
        import torch.distributed as dist

        out: list[Any] = [None] * self.size
        dist.all_gather_object(out, value)
        return out

    # -- the loop's hooks --

    def prepare(self, model: Any, head: tuple[Any, Any] | None, device: str) -> None:
        import torch
        from torch.nn.parallel import DistributedDataParallel

        # every worker built the same weights from the same seed: no need to broadcast them
        options: dict[str, Any] = {"init_sync": False, "broadcast_buffers": False}
        if device == "cuda":
            options["device_ids"] = [torch.cuda.current_device()]
        self.ddp = DistributedDataParallel(_loss_module(model, head), **options)

    def loss(self, model: Any, batch: Mapping[str, Any], head: tuple[Any, Any] | None) -> tuple[Any, int]:
        return self.ddp(**batch)

    def share(self, micro: list[list[Any]]) -> list[tuple[list[Any], bool]]:
        mine = micro[self.rank::self.size]
        if not mine:
            return [(micro[0][:1], False)]  # a stand-in: this worker's backward joins the gradient average
        self.counts["batches"] += len(mine)
        self.counts["examples"] += sum(len(b) for b in mine)
        self.counts["trained_tokens"] += sum(e.trained for b in mine for e in b)
        return [(b, True) for b in mine]

    def accumulating(self, more: bool) -> Any:
        return self.ddp.no_sync() if more else contextlib.nullcontext()

    def scaled(self, value: Any, n_trained: int) -> Any:
        return value * self.size / n_trained  # DDP divides the sum of the workers' gradients by size

    def owns(self, index: int) -> bool:
        return index % self.size == self.rank

    def before_step(self, ctx: StageContext, step: int) -> None:
        import torch

        # dropout draws: different on each worker, the same again after a resume from this step
        torch.manual_seed(int.from_bytes(hashlib.sha256(f"{self.seed}:{self.rank}:{step}".encode()).digest()[:8],
                                         "little"))
        stop = False
        if self.rank == 0 and time.monotonic() - self.last_poll >= STOP_POLL_SECONDS:
            import ray

            self.last_poll = time.monotonic()
            stop = bool(ray.get(self.link.stopping.remote()))
        if self.any(stop):  # all workers stop before the same step
            self.cancel.set()

    def _gather_counts(self) -> list[dict[str, Any]]:
        """Each worker's share so far (every worker must call it)."""
        return [{"rank": r, **c} for r, c in enumerate(self.gather(dict(self.counts)))]

    def save(self, scratch: Path, step: int, state: dict[str, Any], weights: dict[str, Any],
             trainer: dict[str, Any]) -> None:
        self.ranks = self._gather_counts()
        state = {**state, "ranks": self.ranks}
        self._report(scratch, {"step": step}, lambda folder: _checkpoint_files(folder, step, state, weights, trainer))

    def _report(self, scratch: Path, metrics: dict[str, Any], write: Any) -> None:
        """Report a checkpoint that rank 0 writes with ``write(folder)`` into a new folder under
        ``scratch`` (every worker calls this)."""
        import ray.train

        if self.rank != 0:
            ray.train.report(metrics, checkpoint=None)
            return
        folder = Path(tempfile.mkdtemp(prefix="checkpoint-", dir=scratch))
        try:
            write(folder)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(folder)))
        finally:  # Ray Train copied it into the run's storage
            shutil.rmtree(folder, ignore_errors=True)

    def latest(self, scratch: Path, fingerprint: str, log: Any) -> Any:
        import ray.train

        from tunepipe.hf import checkpoint

        reported = ray.train.get_checkpoint()
        if reported is None:
            return None
        with reported.as_directory() as folder:
            found = checkpoint.latest(Path(folder), fingerprint, log)
        if found is not None:
            ranks = found.state.get("ranks") or []
            if len(ranks) == self.size:  # the workers' shares so far (the same N: the same fingerprint)
                self.counts = {k: v for k, v in ranks[self.rank].items() if k != "rank"}
        return found

    def metrics(self) -> dict[str, Any]:
        return {"workers": self.size, "ranks": self.ranks}

    def finish(self, run: Any, started: float) -> None:
        """The final checkpoint: the training state and, from rank 0, the artifact (every worker calls this)."""
        self.ranks = self._gather_counts()
        state, weights, trainer = run.snapshot()

        def write(folder: Path) -> None:
            _checkpoint_files(folder, run.state.step, {**state, "ranks": self.ranks}, weights, trainer)
            run.write(folder / "artifact", time.time() - started)

        self._report(run.ctx.scratch, {"step": run.state.step, "final": True}, write)


def _checkpoint_files(folder: Path, step: int, state: dict[str, Any], weights: dict[str, Any],
                      trainer: dict[str, Any]) -> None:
    from tunepipe.hf import checkpoint

    checkpoint.save(folder, step, state, weights, trainer, keep=1)


def _worker(config: dict[str, Any]) -> None:
    """One Ray Train worker: the ordinary training loop with a :class:`RayWorld`.

    A user error every worker meets (bad settings, a diverged loss) goes to the stage as its
    message, not as a crash that Ray Train would retry; anything else is raised, and Ray Train
    restarts the workers from the newest checkpoint.
    """
    import ray
    import ray.train
    import torch

    from tunepipe.hf.device import cpu_threads
    from tunepipe.hf.forward import quiet_transformers
    from tunepipe.hf.loop import TrainingRun
    from tunepipe.hf.settings import settings

    context = ray.train.get_context()
    rank, size = context.get_world_rank(), context.get_world_size()
    link, params = config["link"], config["params"]
    s = settings(params)
    cancel = threading.Event()
    device = _worker_device(config["use_gpu"], s.device)
    world = RayWorld(rank, size, link, s.seed, cancel, "cuda" if config["use_gpu"] else "cpu")
    quiet_transformers()
    with tempfile.TemporaryDirectory(prefix="tunepipe-worker-") as scratch, \
            cpu_threads(config["threads"] if device == "cpu" else None) as threads, torch.enable_grad():
        ctx = _worker_ctx(config, rank, Path(scratch), cancel)
        run, problem = None, None
        try:
            train = _data_file(ray, link, config["train"])
            validation = _data_file(ray, link, config["validation"])
            run = TrainingRun(ctx, s, params, device, threads, train, validation, source=config["source"],
                       load_from=_model_source(ray, config), fingerprint_=config["fingerprint"], world=world)
        except UserError as e:
            problem = str(e)
        if world.any(problem is not None):  # all stop together, before any other collective
            if problem is not None:
                link.fail.remote(problem if rank == 0 else f"Ray Train worker {rank}: {problem}")
            return
        assert run is not None
        try:
            run.resume_or_start()
            run.loop(None)
        except Cancelled:
            if rank == 0:
                link.cancelled.remote()
            return
        except UserError as e:  # every worker meets it at the same step (the loss is summed over all)
            if rank == 0:
                link.fail.remote(str(e))
            return
        ctx.progress("saving the model")
        world.finish(run, config["started"])
