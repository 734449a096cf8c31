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
* **Progress, logs, cancel** travel through :class:`~tunepipe.hf.ray_link.Link`, a small actor
  on the coordinator's node (:mod:`tunepipe.hf.ray_link`), which also serves the coordinator
  node's files (training data, base model) to workers on nodes that cannot see them
  (:mod:`tunepipe.hf.node_files`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tunepipe.errors import UserError
from tunepipe.hf.artifact import summary
from tunepipe.hf.node_files import data_file, model_origin, model_source
from tunepipe.hf.ray_link import Relay, start_link, worker_ctx
from tunepipe.hf.settings import LocalTrainSettings
from tunepipe.hf.world import World
from tunepipe.plugins import Cancelled, StageContext

MAX_FAILURES = 2  # worker-group restarts (from the newest checkpoint) after a worker or node dies
STOP_POLL_SECONDS = 0.5  # how often rank 0 asks whether the stage was cancelled


# --- the coordinator's end ----------------------------------------------------------------------

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
    link = start_link(ray)
    config = {
        "params": dict(params), "source": source, "origin": model_origin(source),
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
    relay = Relay(ray, ctx, link)
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


# --- the workers' end ---------------------------------------------------------------------------

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
        ctx = worker_ctx(config, rank, Path(scratch), cancel)
        run, problem = None, None
        try:
            train = data_file(ray, link, config["train"])
            validation = data_file(ray, link, config["validation"])
            run = TrainingRun(ctx, s, params, device, threads, train, validation, source=config["source"],
                       load_from=model_source(ray, config), fingerprint_=config["fingerprint"], world=world)
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
