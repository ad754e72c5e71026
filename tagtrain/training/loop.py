"""The training loop: one class, read top to bottom.

    Trainer(cfg, objective).fit()
      for each epoch:  train_epoch  (batches from the objective, loss from the objective,
                                     one optimiser step each, mid-epoch checkpoints)
                       end_epoch    (callbacks, validation, selection, schedule, last.pt)

Where things live: the device, DDP and autocast in tagtrain.run.runtime; the data in
tagtrain.training.data; schedules and selection in tagtrain.training.schedules; what to train in an
objective (tagtrain.training.objectives, student, patchout) plus callbacks
(tagtrain.training.callbacks), which see the run through a `TrainingContext`
(tagtrain.training.context), never the trainer; a checkpoint's state in
tagtrain.training.state (the file format: tagtrain.run.checkpoint); the run's files in
tagtrain.run.directory and tagtrain.training.log.

Guarantees: a step whose loss is not finite (on any rank) is skipped, never applied, and
counted; `max_bad_steps` in a row stop the run with the keys of the last bad batch.
A mid-epoch resume from last.pt continues with the very batches, RNG states and weights
an uninterrupted run would have (bit-identical on CPU).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import signal
import time
from dataclasses import dataclass

import torch

from pipelines.core.errors import UserError
from tagtrain.inference.metrics import bce_on_probabilities, tag_scores
from tagtrain.inference.predict import predict_split
from tagtrain.loader import LoaderError
from tagtrain.models.registry import create_model, get_entry
from tagtrain.run import checkpoint as ckpt
from tagtrain.run.config import ConfigError, RunConfig
from tagtrain.run.directory import RunDir
from tagtrain.run.runtime import Runtime
from tagtrain.training.context import RunDevice, RunFiles, TrainingContext, TrainingInputs
from tagtrain.training.data import TrainingData, check_batch_norm
from tagtrain.training.log import RunLog, epoch_line, epoch_row, loader_line
from tagtrain.training.objectives import Supervised
from tagtrain.training.state import Progress, resume_training, training_state

# Test hook: SIGKILL this process right after the given global step (a simulated crash).
KILL_AT_STEP_ENV = "TAGTRAIN_KILL_AT_STEP"
# What a resumed remote run downloads first (with its rank's samples log).
RESUME_FILES = (RunDir.LAST, RunDir.LAST_PREVIOUS, RunDir.BEST, RunDir.METRICS)


class TrainingError(UserError, RuntimeError):
    """A run that cannot go on (e.g. losses that stay non-finite); the message is one line."""


@dataclass
class EpochOutcome:
    samples: int  # over all ranks, in this session
    seconds: float
    wait_seconds: float  # blocked on the loader
    stats: object  # LoaderStats summed over ranks
    timed_out: bool
    positions: torch.Tensor | None  # loader positions when the epoch stopped early


class Trainer:
    def __init__(self, cfg: RunConfig, objective=None, resume: bool = False, init_weights=None):
        self.objective = objective or Supervised()
        chain = self.objective.augment_chain(cfg)
        self.cfg = cfg = dataclasses.replace(cfg, augment=chain or "")
        self.rt = Runtime.start(cfg.device, cfg.precision)
        self.data = TrainingData.open(cfg, get_entry(cfg.model).input_spec, chain, self.rt)
        self.run_dir = RunDir(cfg.run_dir(), cfg.effective_storage_options())
        if (
            not self.run_dir.remote
            and self.run_dir.path.exists()
            and not self.run_dir.path.is_dir()
        ):
            raise ConfigError(f"--out {self.run_dir} is a file, not a run directory")
        if not resume and self.run_dir.has_run():
            raise ConfigError(
                f"{self.run_dir} already holds a run: continue it with --resume "
                "or choose another --out"
            )
        self.model = create_model(
            cfg.model, len(self.data.vocabulary), seed=cfg.seed, width=cfg.width
        )
        if cfg.init and not resume:
            # The command resolves --init (tagtrain.pretrained knows published weights; the
            # loop does not): init_weights(model, model name, init, vocabulary) -> one line.
            if init_weights is None:
                raise ConfigError(f"--init {cfg.init}: this command loads no initial weights")
            self._say(init_weights(self.model, cfg.model, cfg.init, self.data.vocabulary))
        check_batch_norm(self.model, cfg.batch_size)
        self.model.to(self.rt.device)
        self.net = self.rt.wrap(self.model)
        self.schedule = self.objective.schedule(cfg)
        self.optimizer = self.schedule.make_optimizer(self.model.parameters())
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.rt.needs_scaler)
        self.progress = Progress()
        # What the objective and its callbacks see of the run: never this trainer.
        self.ctx = TrainingContext(
            cfg, self.model, self.net, RunDevice.of(self.rt), TrainingInputs.of(self.data, cfg.data),
            RunFiles(self.run_dir, self.rt.dist.is_main), self._say,
        )  # fmt: skip
        self.ctx.callbacks = self.callbacks = self.objective.callbacks(self.ctx)
        self.objective.setup(self.ctx)
        self.resume_positions = None
        if resume:
            self.run_dir.pull(*RESUME_FILES, RunDir.samples_name(self.rt.dist.rank))
            self.resume_positions = resume_training(self)
        else:
            # Dropout (and patchout, masks, mixup) draw from torch's generator: seeded per
            # rank here, restored from the checkpoint on --resume.
            torch.manual_seed(cfg.seed * 1000 + self.rt.dist.rank)
            if self.data.plan.kind == "mel" and self.data.plan.mean is None:
                self.data.estimate_stats()

    def _say(self, line: str) -> None:
        if self.rt.dist.is_main:
            print(line, flush=True)

    # -- the loop

    def fit(self) -> dict:
        # The run directory is this process's until the run ends (`RunDir.lock`).
        lock = self.run_dir.lock() if self.rt.dist.is_main else None
        try:
            return self._fit()
        finally:
            RunDir.unlock(lock)

    def _fit(self) -> dict:
        from tagtrain.training.summary import print_header, write_summary

        cfg, dist, progress = self.cfg, self.rt.dist, self.progress
        if dist.is_main:
            self.run_dir.write_text(RunDir.CONFIG, cfg.to_json() + "\n")
            print_header(self)
            if self.run_dir.remote:
                print(
                    f"  {self.run_dir} is written through {self.run_dir.path}: checkpoints, "
                    "config, summary and samples logs are uploaded as written, metrics.csv, "
                    "curves.png and TensorBoard events after each epoch",
                    flush=True,
                )
        dist.barrier()
        self.log = RunLog(self.run_dir, dist.rank, cfg.log_samples)
        start = time.monotonic()
        self.deadline = start + (cfg.max_minutes * 60 if cfg.max_minutes else math.inf)
        stop_reason, last_val = "finished all epochs", None
        try:
            while progress.epoch < cfg.total_epochs() and not self.schedule.stopped:
                if not dist.all_min([float(time.monotonic() < self.deadline)])[0]:
                    stop_reason = f"time budget of {cfg.max_minutes:g} min reached"
                    break
                outcome = self.train_epoch(progress.epoch)
                if outcome.timed_out:
                    stop_reason = f"time budget of {cfg.max_minutes:g} min reached"
                    if outcome.samples:
                        last_val = self.end_epoch(progress.epoch, outcome, partial=True)
                    break
                last_val = self.end_epoch(progress.epoch, outcome, partial=False)
                if self.schedule.stopped and progress.epoch < cfg.total_epochs():
                    stop_reason = (
                        f"early stopping: {self.schedule.bad_epochs} epochs without improvement"
                    )
        finally:
            self.data.close()
            self.log.close()
        summary = write_summary(self, stop_reason, last_val, time.monotonic() - start)
        dist.stop()
        return summary

    def train_epoch(self, epoch: int) -> EpochOutcome:
        progress = self.progress
        reader, steps = self._open_epoch(epoch)
        batches, timed_out = iter(reader), False
        self.samples_here, self.wait, t_epoch = 0, 0.0, time.perf_counter()
        self.net.train()
        while progress.epoch_step < steps:
            t0 = time.perf_counter()
            batch = next(batches, None)
            self.wait += time.perf_counter() - t0
            within = time.monotonic() < self.deadline
            have, within = self.rt.dist.all_min([float(batch is not None), float(within)])
            if not have:
                break  # some rank ran dry (unreadable shards): every rank ends the epoch
            if not within:
                timed_out = True
                break
            self.schedule.before_step(epoch + progress.epoch_step / steps, self.optimizer)
            loss = self.step(batch)
            reader.commit(batch)
            self._count(batch, loss)
            self._after_step(epoch, reader, batch, loss)
        return self._close_epoch(reader, time.perf_counter() - t_epoch, timed_out)

    def _open_epoch(self, epoch: int):
        cfg, progress = self.cfg, self.progress
        resume = self.resume_positions if progress.epoch_step else None
        self.resume_positions = None
        reader = self.objective.reader(self.ctx, epoch, resume)
        steps = self.data.steps(reader, progress.epoch_step)
        if cfg.max_steps_per_epoch:
            steps = min(steps, cfg.max_steps_per_epoch)
        if steps == 0:
            reader.close()
            raise LoaderError(
                f"epoch {epoch + 1} has no full batch of {cfg.batch_size} per rank: lower "
                "--batch-size or --workers"
            )
        show = cfg.progress and self.rt.dist.is_main
        self.log.open_bar(show, steps, progress.epoch_step, epoch, cfg.total_epochs())
        return reader, steps

    def _after_step(self, epoch: int, reader, batch, loss: float | None) -> None:
        cfg, step = self.cfg, self.progress.global_step
        self.samples_here += len(batch.keys)
        log_now = loss is not None and step % max(1, cfg.log_every) == 0
        self.log.step(epoch, step, batch.keys, loss, log_now)
        if cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
            self.save(RunDir.LAST, self.rt.dist.gather_stack(reader.encoded_positions()))
        if step == int(os.environ.get(KILL_AT_STEP_ENV, 0) or 0):
            os.kill(os.getpid(), signal.SIGKILL)

    def _close_epoch(self, reader, seconds: float, timed_out: bool) -> EpochOutcome:
        dist, progress = self.rt.dist, self.progress
        if not timed_out and progress.epoch_step == 0:
            reader.close()
            first = reader.stats.errors[0] if reader.stats.errors else "no samples"
            raise LoaderError(f"no training batch could be read from {self.cfg.data}: {first}")
        progress.train_seconds += seconds
        positions = dist.gather_stack(reader.encoded_positions()) if timed_out else None
        reader.close()
        self.log.close_bar()
        stats = reader.stats
        counts = dist.all_sum([stats.shard_errors, stats.bad_samples, stats.foreign_members])
        stats.shard_errors, stats.bad_samples, stats.foreign_members = (int(c) for c in counts)
        samples = self.samples_here * dist.world
        return EpochOutcome(samples, seconds, self.wait, stats, timed_out, positions)

    def step(self, batch) -> float | None:
        """One optimiser step; None (nothing applied) when the loss is not finite anywhere.
        The forward pass of a skipped step may have moved buffers (batch-norm statistics):
        they are put back."""
        buffers = [b.detach().clone() for b in self.model.buffers()]
        loss = self.objective.loss(self.ctx, batch)
        if not self.rt.dist.all_min([float(torch.isfinite(loss.detach()).item())])[0]:
            with torch.no_grad():
                for buffer, saved in zip(self.model.buffers(), buffers):
                    buffer.copy_(saved)
            return None
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return float(loss.detach())

    def _count(self, batch, loss: float | None) -> None:
        p, world = self.progress, self.rt.dist.world
        p.epoch_step += 1
        p.global_step += 1
        p.samples_seen += len(batch.keys) * world
        p.epoch_samples += len(batch.keys) * world
        if loss is not None:
            p.epoch_loss_sum += loss
            p.epoch_loss_count += 1
            p.bad_in_a_row = 0
            return
        p.skipped_steps += 1
        p.epoch_skipped += 1
        p.bad_in_a_row += 1
        if p.bad_in_a_row >= self.cfg.max_bad_steps:
            keys = ", ".join(batch.keys[:8])
            raise TrainingError(
                f"{p.bad_in_a_row} steps in a row gave a non-finite loss (none was applied); "
                f"last batch (step {p.global_step}): {keys}"
            )

    def end_epoch(self, epoch: int, outcome: EpochOutcome, partial: bool) -> dict:
        progress, schedule = self.progress, self.schedule
        for callback in self.callbacks:
            callback.on_epoch_end(self.ctx, epoch, partial)
        with contextlib.ExitStack() as weights:  # e.g. SWA: validate the averaged weights
            for callback in self.callbacks:
                weights.enter_context(callback.validation_weights(self.ctx))
            row, improved = self.validate(epoch, outcome, partial)
            if improved:
                self.save(RunDir.BEST, None, best=True)
        self.log.epoch(row, progress.global_step)
        self._say(epoch_line(row, partial, improved))
        if (line := loader_line(outcome.stats)) is not None:
            self._say(line)
        if partial:
            self.save(RunDir.LAST, outcome.positions)
            return row
        transition = schedule.after_epoch(epoch)
        if transition is not None:
            # seed 000 reloads at its switch and drops; seed 001's code never does; a
            # plateau halving goes on from the current weights
            if self.cfg.reload_best and transition != "halve":
                self.reload_best()
            if transition == "switch":
                self.optimizer = schedule.make_optimizer(self.model.parameters())
            for group in self.optimizer.param_groups:
                group["lr"] = schedule.lr
        progress.epoch += 1
        progress.epoch_step = progress.epoch_skipped = 0
        progress.epoch_loss_sum, progress.epoch_loss_count, progress.epoch_samples = 0.0, 0, 0
        self.save(RunDir.LAST, None)
        return row

    def validate(self, epoch: int, outcome: EpochOutcome, partial: bool) -> tuple[dict, bool]:
        data, progress = self.data, self.progress
        val = predict_split(
            self.model, data.val_shards, data.plan, data.vocabulary, data.val_loader,
            data.device_input, self.rt.dist, self.rt.autocast_dtype, data.val_reader(),
        )  # fmt: skip
        val_loss = bce_on_probabilities(val.labels, val.probs)
        scores = tag_scores(val.labels, val.probs)
        value = val_loss if self.cfg.select == "val_loss" else -scores.roc_auc
        improved = self.schedule.observe(epoch, value, count=not partial)
        lr = self.optimizer.param_groups[0]["lr"]
        row = epoch_row(epoch, partial, self.schedule.phase, lr, progress, outcome)
        row.update(val_loss=round(val_loss, 6), best=int(improved))
        row.update({name: round(value, 6) for name, value in scores.macro.items()})
        return row, improved

    # -- checkpoints

    def save(self, name: str, positions: torch.Tensor | None, best: bool = False) -> None:
        """Write checkpoint `name` (rank 0); a remote run uploads it, and every rank its
        samples log, so the log in the store covers exactly the steps the checkpoint holds."""
        self.log.publish_samples()
        if self.rt.dist.is_main:
            payload = training_state(self, positions, best=best)
            keep = name == RunDir.LAST
            ckpt.save_checkpoint(self.run_dir / name, payload, keep_previous=keep)
            self.run_dir.publish(name, keep_previous=keep)

    def reload_best(self) -> None:
        self.rt.dist.barrier()
        if self.run_dir.remote and not self.rt.dist.is_main:
            self.run_dir.pull(RunDir.BEST)  # rank 0 staged and uploaded it
        path = self.run_dir / RunDir.BEST
        if path.exists():
            state = ckpt.load_checkpoint(path, map_location=self.rt.device)
            self.model.load_state_dict(state["model"])


def train(cfg: RunConfig, resume: bool = False, objective=None, init_weights=None) -> dict:
    return Trainer(cfg, objective, resume, init_weights).fit()
