"""The local training loop: a plain PyTorch loop with PEFT LoRA (or full fine-tuning).

:class:`TrainingRun` is one training run; :func:`tunepipe.hf.trainer.train_local` drives it in this process,
and each Ray Train worker of :mod:`tunepipe.hf.distributed` drives its own with a
:class:`~tunepipe.hf.world.World` of its kind. The loop:

* examples come from :mod:`tunepipe.hf.render` (loss only on trained assistant tokens) and are
  batched per epoch in a seeded order (:mod:`tunepipe.hf.batching`), right-padded with an
  attention mask;
* the loss of an optimizer step is the mean over all trained tokens of its micro-batches (each
  micro-batch's summed loss is divided by the step's trained-token count before ``backward``, so
  gradient accumulation gives the same update as one big batch);
* AdamW (no weight decay on biases and norms), gradient clipping, a linear / cosine / constant
  schedule with warmup;
* validation loss before training (the base model's), at each epoch end and every ``eval_every``
  optimizer steps;
* a checkpoint in the stage's scratch folder every ``save_every`` steps, at each epoch end and when
  the run is cancelled; a later run with the same parameters and data resumes from the newest one and
  ends exactly where an uninterrupted run would (same order, same random state);
* the same seed gives the same loss curve (on CPU, bit for bit).

The loop asks a :class:`~tunepipe.hf.world.World` (:mod:`tunepipe.hf.world`) what to train on, how
to sum and where to keep checkpoints; the ordinary run is the one-process
:data:`~tunepipe.hf.world.SOLO` and takes exactly the code path it always did.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tunepipe import modelref
from tunepipe.errors import UserError
from tunepipe.hf import artifact, batching
from tunepipe.hf.device import placement
from tunepipe.hf.forward import loss_sum, param_groups, plain_head, prepare_model, trainable_state
from tunepipe.hf.models import BaseSource, load_tokenizer, load_weights, resolve_base
from tunepipe.hf.render import DataSet, read_examples
from tunepipe.hf.settings import SCHEDULES, LocalTrainSettings, fingerprint, warmup_steps
from tunepipe.hf.world import SOLO, World
from tunepipe.plugins import Cancelled, StageContext

PROGRESS_INTERVAL = 0.5  # seconds between progress notes (at most ~2 a second)


class StopRequested(Exception):
    """Raised by the ``stop_after_steps`` hook (tests: an interruption at a known step)."""


@dataclass
class Progress:
    """What a checkpoint carries besides weights: where the loop is and what it has seen."""

    epoch: int = 0  # the epoch being trained (0-based)
    position: int = 0  # optimizer steps done in that epoch
    step: int = 0  # optimizer steps done in all
    tokens: int = 0  # input tokens (no padding) trained on
    trained_tokens: int = 0  # tokens the loss counted
    epoch_loss: float = 0.0  # summed loss of this epoch so far
    epoch_trained: int = 0  # its trained tokens
    train_seconds: float = 0.0  # time in training steps, over all sessions
    val_before: float | None = None  # the validation loss of the base model, before any step
    pending_eval: bool = False  # the last step's validation is due (a run cancelled during it)
    history: list[dict[str, Any]] = field(default_factory=list)  # loss.csv rows
    epochs: list[dict[str, Any]] = field(default_factory=list)  # one row per finished epoch

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Progress:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


class Notes:
    """Progress notes on the stage's line, at most one per PROGRESS_INTERVAL."""

    def __init__(self, ctx: StageContext) -> None:
        self.ctx = ctx
        self.last = -PROGRESS_INTERVAL  # the first note shows at once

    def maybe(self, make: Any) -> None:
        if time.monotonic() - self.last >= PROGRESS_INTERVAL:
            note = make()  # timed from when the note goes out: a slow make() must not bring the next one closer
            self.last = time.monotonic()
            self.ctx.progress(note)


def _clock(seconds: float) -> str:
    seconds = round(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


@torch.no_grad()
def validation_loss(ctx: StageContext, model: Any, data: DataSet, pad_id: int, batch_size: int, device: str,
             autocast: Any, head: tuple[Any, Any] | None, note: Any = None, world: World = SOLO) -> float:
    """Mean loss over the trained tokens of ``data`` (dropout off). ``note(done, batches)`` is
    called before each batch. Distributed, each worker takes every ``size``-th batch and the sums
    are added up."""
    was_training = model.training
    model.eval()
    order = sorted(range(len(data.examples)), key=lambda i: len(data.examples[i].ids))
    total, count = 0.0, 0
    try:
        batches = -(-len(order) // batch_size)
        for i in range(0, len(order), batch_size):
            ctx.check_cancelled()
            if not world.owns(i // batch_size):
                continue
            if note is not None:
                note(i // batch_size, batches)
            batch = batching.collate([data.examples[j] for j in order[i:i + batch_size]], pad_id, device)
            with autocast():
                value, n = loss_sum(model, batch, head)
            total += float(value)
            count += n
    finally:
        model.train(was_training)
    if world.size > 1:
        total, count = world.total([total, float(count)])
    return total / max(1, count)


def _rng_state(device: str) -> dict[str, Any]:
    state = {"cpu": torch.get_rng_state()}
    if device == "cuda":
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Mapping[str, Any], device: str) -> None:
    torch.set_rng_state(state["cpu"])
    if device == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


def _pad_id(tok: Any) -> int:
    for value in (tok.pad_token_id, tok.eos_token_id):
        if isinstance(value, int):
            return value
    return 0


def _check_rendering(path: Path | None, data: DataSet, log: Any) -> None:
    """hf-chat-template records carry the token count of the tokenizer that rendered them: a
    different count means a different tokenizer, and a model trained on the wrong template."""
    if path is None or not data.examples:
        return
    from tunepipe.hf.render import iter_records

    counts = {line: r.get("tokens") for line, r in iter_records(path) if isinstance(r, Mapping) and "text" in r}
    differ = sum(1 for e in data.examples if isinstance(counts.get(e.line), int) and not e.truncated
                 and counts[e.line] != len(e.ids))
    if differ:
        log.warning("%s: %d rendered records have a token count other than this model's tokenizer gives: "
                    "they were rendered for another tokenizer (format's tokenizer must be the trained model's)",
                    path.name, differ)


class TrainingRun:
    """One training run: the model, data, optimizer and where the loop stands.

    The ordinary run resolves the base model and fingerprints the data itself. A Ray Train worker
    passes what the stage resolved (``source``, recorded in model.json, and ``fingerprint``), the
    copy it loads from (``load_from``) and its ``world``.
    """

    def __init__(self, ctx: StageContext, s: LocalTrainSettings, params: Mapping[str, Any], device: str, threads: int,
                 train: Path, validation: Path | None, *, source: BaseSource | None = None,
                 load_from: BaseSource | None = None, fingerprint_: str | None = None, world: World = SOLO) -> None:
        self.ctx, self.s, self.device, self.threads, self.world = ctx, s, device, threads, world
        self.place = placement(device, lora=s.lora is not None)
        ctx.progress("loading the model")
        self.source = source if source is not None else resolve_base(s.model, ctx.shared("models"), say=ctx.say)
        if self.source.converted_in is not None:
            ctx.log.info("converted %s into %s in %.1f s", s.model, self.source.location, self.source.converted_in)
        self.load_from = load_from if load_from is not None else self.source
        self.tok = load_tokenizer(self.load_from)
        ctx.progress("reading the examples")
        self.train_set = read_examples(train, self.tok, s.max_seq_length)
        self.val_set = read_examples(validation, self.tok, s.max_seq_length) if validation is not None else DataSet()
        _check_rendering(train, self.train_set, ctx.log)
        if not self.train_set.examples:
            d = self.train_set
            raise UserError(f"{train.name}: no example to train on ({d.records} records; {d.dropped_untrained} "
                            f"without a trained assistant turn, {d.dropped_truncated} whose assistant turns lie "
                            f"past max_seq_length {s.max_seq_length})")
        self.fingerprint = fingerprint_ or fingerprint(s, params, self.source, train, validation)

        torch.manual_seed(s.seed)
        model = load_weights(self.load_from, self.place.weights, device)
        model.config.use_cache = False
        positions = getattr(model.config, "max_position_embeddings", None)
        if isinstance(positions, int) and s.max_seq_length > positions:
            ctx.log.warning("max_seq_length %d is longer than the %d positions %s was trained with: examples that "
                            "long may train poorly", s.max_seq_length, positions, s.model)
        self.model = prepare_model(model, s)
        self.model.train()
        self.head = plain_head(self.model)
        self.named = trainable_state(self.model)
        self.trainable = sum(p.numel() for p in self.named.values())
        self.total_params = sum(p.numel() for p in self.model.parameters())
        self.optimizer = torch.optim.AdamW(param_groups(self.model, s.weight_decay), lr=s.learning_rate)
        self.total_steps = s.epochs * batching.steps_per_epoch(len(self.train_set.examples), s.batch_size,
                                                               self.batches_per_step)
        self.warmup = warmup_steps(s.warmup, self.total_steps)
        from transformers import get_scheduler

        self.scheduler = get_scheduler(SCHEDULES[s.schedule], self.optimizer, num_warmup_steps=self.warmup,
                                       num_training_steps=self.total_steps)
        self.pad_id = _pad_id(self.tok)
        compute = self.place.compute
        self.autocast = (lambda: torch.autocast(device_type=device, dtype=compute)) if compute is not None \
            else contextlib.nullcontext
        self.state = Progress()
        self.resumed_from: int | None = None
        self.last_saved = 0
        self.notes = Notes(ctx)
        self.session_steps, self.session_seconds = 0, 0.0
        self.recent: list[float] = []

    @property
    def batches_per_step(self) -> int:
        """Batches of ``batch_size`` per optimizer step: ``gradient_accumulation`` on each worker."""
        return self.s.accumulation * self.world.size

    # --- checkpoints ------------------------------------------------------------------------------

    def resume_or_start(self) -> None:
        """Continue from the newest checkpoint made with the same fingerprint, if any."""
        ctx = self.ctx
        ck = self.world.latest(ctx.scratch, self.fingerprint, ctx.log)  # stale ones (other params or data) go
        if ck is not None:
            missing = set(self.named) - set(ck.weights)
            if missing:
                raise UserError(f"checkpoint {ck.path} lacks weights {sorted(missing)[:3]}: delete it to start over")
            with torch.no_grad():
                for name, p in self.named.items():
                    p.copy_(ck.weights[name].to(p.device, p.dtype))
            self.optimizer.load_state_dict(ck.trainer["optimizer"])
            self.scheduler.load_state_dict(ck.trainer["scheduler"])
            _set_rng_state(ck.trainer["rng"], self.device)
            self.state = Progress.from_json(ck.state["progress"])
            self.resumed_from = self.last_saved = self.state.step
            ctx.log.info("checkpoint %s", ck.path)
            ctx.say(f"resuming from step {self.state.step} (a checkpoint of an interrupted run)")
        s = self.s
        ctx.log.info("training %s (%s, %s params trainable of %s) on %s, %s threads: %d examples, %d epochs, "
                     "%d optimizer steps (%d warmup), learning rate %g", s.model, s.kind, f"{self.trainable:,}",
                     f"{self.total_params:,}", self.device, self.threads, len(self.train_set.examples), s.epochs,
                     self.total_steps, self.warmup, s.learning_rate)
        if self.world.size > 1:
            ctx.log.info("%d data-parallel workers: %d examples per optimizer step (batch_size %d x "
                         "gradient_accumulation %d x workers %d)", self.world.size,
                         s.batch_size * self.batches_per_step, s.batch_size, s.accumulation, self.world.size)

    def snapshot(self, rng: Mapping[str, Any] | None = None) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        """A checkpoint of where the loop stands: (state, trainable weights, optimizer/scheduler/rng)."""
        return ({"fingerprint": self.fingerprint, "progress": self.state.to_json()}, trainable_state(self.model),
                {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                 "rng": dict(rng) if rng is not None else _rng_state(self.device)})

    def save(self, rng: Mapping[str, Any] | None = None) -> None:
        self.world.save(self.ctx.scratch, self.state.step, *self.snapshot(rng))
        self.last_saved = self.state.step

    def _save_on_cancel(self, rng: Mapping[str, Any] | None = None) -> None:
        if self.state.step > self.last_saved or self.state.pending_eval:
            self.save(rng)
            self.ctx.log.info("cancelled: checkpoint at step %d saved; run again to resume", self.state.step)

    # --- validation -----------------------------------------------------------------------------

    def _evaluate(self, label: str) -> float:
        return validation_loss(self.ctx, self.model, self.val_set, self.pad_id, self.s.batch_size, self.device,
                        self.autocast, self.head, lambda i, n: self.notes.maybe(lambda: f"{label} {i}/{n}"),
                        self.world)

    def _finish_eval(self) -> None:
        """The validation loss due at the last step (its row and, at an epoch end, its epoch)."""
        state = self.state
        if not state.pending_eval:
            return
        row = state.history[-1]
        epoch = row["epoch"]
        row["val_loss"] = self._evaluate(f"epoch {epoch}/{self.s.epochs} step {state.step}/{self.total_steps} "
                                         "validation")
        if state.epochs and state.epochs[-1]["step"] == state.step:
            state.epochs[-1]["val_loss"] = row["val_loss"]
        state.pending_eval = False
        self.ctx.log.info("step %d: validation loss %.4f", state.step, row["val_loss"])

    # --- the loop -------------------------------------------------------------------------------

    def _note(self) -> str:
        state, s = self.state, self.s
        rate = state.tokens / state.train_seconds if state.train_seconds else 0.0
        per_step = self.session_seconds / self.session_steps if self.session_steps else 0.0
        left = _clock(per_step * (self.total_steps - state.step))
        loss = sum(self.recent) / len(self.recent) if self.recent else float("nan")
        return (f"epoch {min(state.epoch + 1, s.epochs)}/{s.epochs} step {state.step}/{self.total_steps} "
                f"loss {loss:.3f} {rate:.0f} tok/s {left} left")

    def loop(self, stop_after_steps: int | None) -> None:
        s, state = self.s, self.state
        self.world.prepare(self.model, self.head, self.device)
        if self.val_set.examples and state.step == 0 and state.val_before is None:
            state.val_before = self._evaluate("validation loss before training")
            self.ctx.log.info("validation loss before training: %.4f", state.val_before)
        self._finish_eval()  # a run cancelled during a validation saved it as due
        lengths = [len(e.ids) for e in self.train_set.examples]
        for epoch in range(state.epoch, s.epochs):
            steps = batching.optimizer_steps(batching.epoch_batches(lengths, s.batch_size, s.seed, epoch),
                                             self.batches_per_step)
            for pos in range(state.position, len(steps)):
                rng = _rng_state(self.device)  # dropout draws from it: a step cut short must not count
                try:
                    self._step(epoch, pos, steps[pos], last=pos == len(steps) - 1)
                except Cancelled:
                    self._save_on_cancel(rng)
                    raise
                try:
                    self._finish_eval()
                except Cancelled:
                    self._save_on_cancel()
                    raise
                self.notes.maybe(self._note)
                if pos == len(steps) - 1 or (s.save_every and state.step % s.save_every == 0):
                    self.save()
                if stop_after_steps is not None and state.step >= stop_after_steps:
                    raise StopRequested(f"stopped after step {state.step} (stop_after_steps)")

    def _step(self, epoch: int, pos: int, batches: list[list[int]], last: bool) -> None:
        """One optimizer step over its micro-batches; the loss is the mean over their trained tokens."""
        s, state, ctx, world = self.s, self.state, self.ctx, self.world
        world.before_step(ctx, state.step)
        ctx.check_cancelled()
        t0 = time.monotonic()
        micro = [[self.train_set.examples[i] for i in b] for b in batches]
        n_trained = sum(e.trained for b in micro for e in b)  # of the whole step, on all workers
        step_tokens = sum(len(e.ids) for b in micro for e in b)
        step_loss = 0.0
        lr = self.scheduler.get_last_lr()[0]
        mine = world.share(micro)
        for k, (b, counted) in enumerate(mine):
            ctx.check_cancelled()
            batch = batching.collate(b, self.pad_id, self.device)
            with world.accumulating(k < len(mine) - 1):
                with self.autocast():
                    value, _n = world.loss(self.model, batch, self.head)
                (world.scaled(value, n_trained) if counted else value * 0.0).backward()
            if counted:
                step_loss += float(value.detach())
        if world.size > 1:
            (step_loss,) = world.total([step_loss])
        train_loss = step_loss / n_trained
        if not math.isfinite(train_loss):
            raise UserError(f"training diverged: the loss is {train_loss} at step {state.step + 1}; lower "
                            f"learning_rate (now {s.learning_rate:g}) or max_grad_norm")
        if s.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(list(self.named.values()), s.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        # from here to the end of the step nothing can be cancelled: the state matches the weights
        elapsed = time.monotonic() - t0
        self.session_steps += 1
        self.session_seconds += elapsed
        self.recent = (self.recent + [train_loss])[-10:]
        state.step += 1
        state.position = pos + 1
        state.tokens += step_tokens
        state.trained_tokens += n_trained
        state.train_seconds += elapsed
        state.epoch_loss += step_loss
        state.epoch_trained += n_trained
        state.history.append({"step": state.step, "epoch": epoch + 1, "train_loss": train_loss, "val_loss": None,
                              "learning_rate": lr, "tokens": state.tokens})
        ctx.log.info("epoch %d step %d/%d: loss %.4f, lr %.3g, %d tokens, %.2f s", epoch + 1, state.step,
                     self.total_steps, train_loss, lr, step_tokens, elapsed)
        if last:
            state.epochs.append({"epoch": epoch + 1, "step": state.step,
                                 "train_loss": state.epoch_loss / max(1, state.epoch_trained), "val_loss": None})
            state.epoch, state.position, state.epoch_loss, state.epoch_trained = epoch + 1, 0, 0.0, 0
        state.pending_eval = bool(self.val_set.examples) and (last or bool(s.eval_every
                                                                           and state.step % s.eval_every == 0))

    # --- the artifact ---------------------------------------------------------------------------

    def write(self, out: Path, duration: float) -> dict[str, Any]:
        s, tok = self.s, self.tok
        out.mkdir(parents=True, exist_ok=True)
        artifact.write_model(self.model, tok, s, out)
        info = artifact.model_json(base_model=s.model, base_source=self.source.describe(), kind=s.kind,
                                   merged=s.merge, max_seq_length=s.max_seq_length, device=self.device,
                                   dtype=self.place.dtype_name,
                                   chat_template=bool(getattr(tok, "chat_template", None)))
        modelref.write(out, info)
        artifact.write_loss_csv(out / "loss.csv", self.state.history)
        metrics = artifact.training_metrics(s, self.state, self.train_set, self.val_set, self.trainable, self.total_params,
                           self.total_steps, self.warmup, self.device, self.threads, self.resumed_from, duration,
                           self.source)
        metrics.update(self.world.metrics())
        artifact.write_json(out / "metrics.json", metrics)
        return metrics
