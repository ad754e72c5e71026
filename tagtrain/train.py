"""`python -m tagtrain train`: the training loop over streamed shards.

BCE on logits; model selection by validation loss, with macro ROC-AUC and PR-AUC each
epoch. Two schedules:
(a) `adam_sgd`: Adam (lr 1e-4, wd 1e-4) for `adam_epochs`, then reload the best
    checkpoint and switch to SGD (Nesterov, momentum 0.9) at 1e-3, reloading the best and
    dividing the rate by 10 after each of `sgd_drop_after` more epochs (20, 40);
(b) `early_stop`: Adam with early stopping after `patience` epochs without improvement.

DDP: started by torchrun (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT in the
environment); gloo on CPU, NCCL on CUDA. Every rank runs the same number of steps per
epoch (see tagtrain.data); rank 0 writes the run directory.

Run directory: config.json, metrics.csv, tb/ (TensorBoard), curves.png, last.pt and
best.pt (checkpoints, see tagtrain.checkpoint), summary.json.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pipelines.core.card import CardError, card_checksum
from pipelines.core.errors import first_line
from tagtrain import checkpoint as ckpt
from tagtrain.augment import WaveformAugment, resolve_chain
from tagtrain.config import PRECISIONS, SCHEDULES, ConfigError, RunConfig, build_config
from tagtrain.data import (
    DeviceInput,
    EpochReader,
    LoaderConfig,
    LoaderError,
    LoaderStats,
    ShardStream,
    check_enough_shards,
    decode_positions,
    estimate_mel_stats,
    load_card,
    plan_input,
    planned_steps,
    split_shards,
)
from tagtrain.metrics import bce_on_probabilities, tag_scores
from tagtrain.openers import OpenerError
from tagtrain.registry import count_parameters, create_model, get_entry

COMMAND = "train"
HELP = "train a tagger on prepared shards (local, https://, s3://, gs://)"
# Test hook: SIGKILL this process right after the given global step (a simulated crash).
KILL_AT_STEP_ENV = "TAGTRAIN_KILL_AT_STEP"
METRIC_FIELDS = (
    "epoch",
    "partial",
    "phase",
    "lr",
    "steps",
    "samples",
    "train_loss",
    "val_loss",
    "roc_auc",
    "pr_auc",
    "best",
    "seconds",
    "samples_per_s",
    "data_wait_fraction",
    "shard_errors",
    "bad_samples",
    "foreign_members",
)


# --- distributed ---------------------------------------------------------------------


@dataclass
class DistEnv:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> DistEnv:
        return cls(
            int(os.environ.get("RANK", 0)),
            int(os.environ.get("WORLD_SIZE", 1)),
            int(os.environ.get("LOCAL_RANK", 0)),
        )

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def start(self, device: torch.device) -> None:
        if self.distributed and not torch.distributed.is_initialized():
            backend = "nccl" if device.type == "cuda" else "gloo"
            torch.distributed.init_process_group(backend, rank=self.rank, world_size=self.world)
        self.comm_device = device if device.type == "cuda" else torch.device("cpu")

    def stop(self) -> None:
        if self.distributed and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()

    def all_min(self, values: list[float]) -> list[float]:
        if not self.distributed:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.comm_device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MIN)
        return t.tolist()

    def all_sum(self, values: list[float]) -> list[float]:
        if not self.distributed:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.comm_device)
        torch.distributed.all_reduce(t)
        return t.tolist()

    def gather_rows(self, t: torch.Tensor) -> torch.Tensor:
        """Concatenate every rank's rows [n_r, ...] (n_r may differ) on every rank."""
        if not self.distributed:
            return t
        local = t.to(self.comm_device)
        sizes = [
            torch.zeros(1, dtype=torch.int64, device=self.comm_device) for _ in range(self.world)
        ]
        torch.distributed.all_gather(
            sizes, torch.tensor([local.shape[0]], dtype=torch.int64, device=self.comm_device)
        )
        longest = int(max(s.item() for s in sizes))
        padded = torch.zeros(
            (longest, *local.shape[1:]), dtype=local.dtype, device=self.comm_device
        )
        padded[: local.shape[0]] = local
        parts = [torch.zeros_like(padded) for _ in range(self.world)]
        torch.distributed.all_gather(parts, padded)
        return torch.cat([p[: int(s.item())] for p, s in zip(parts, sizes)]).to(t.device)

    def barrier(self) -> None:
        if self.distributed:
            torch.distributed.barrier()


def resolve_device(spec: str, local_rank: int) -> torch.device:
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(spec)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("device cuda requested but CUDA is not available")
        if device.index is None:
            device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    return device


def amp_settings(precision: str, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype or None, whether a GradScaler is needed)."""
    if device.type != "cuda" or precision == "fp32":
        return None, False
    if precision == "auto":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    else:
        dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return dtype, dtype == torch.float16


# --- schedules ---------------------------------------------------------------------


class Schedule:
    """Learning-rate phases and model selection; its state is plain values."""

    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        self.phase = "adam"
        self.lr = cfg.lr
        if cfg.schedule == "adam_sgd" and cfg.adam_epochs == 0:
            self.phase, self.lr = "sgd", cfg.sgd_lr
        self.best_loss = math.inf
        self.best_epoch = -1
        self.bad_epochs = 0
        self.stopped = False

    def make_optimizer(self, params) -> torch.optim.Optimizer:
        cfg = self.cfg
        if self.phase == "adam":
            return torch.optim.Adam(params, lr=self.lr, weight_decay=cfg.weight_decay)
        return torch.optim.SGD(
            params,
            lr=self.lr,
            momentum=cfg.sgd_momentum,
            nesterov=True,
            weight_decay=cfg.weight_decay,
        )

    def observe(self, epoch: int, val_loss: float) -> bool:
        """Record an epoch's validation loss; True when it is the best so far."""
        if math.isfinite(val_loss) and val_loss < self.best_loss:
            self.best_loss, self.best_epoch, self.bad_epochs = val_loss, epoch, 0
            return True
        self.bad_epochs += 1
        return False

    def after_epoch(self, epoch: int) -> str | None:
        """Advance past `epoch` (0-based). Returns "switch" (reload best, new SGD
        optimiser), "drop" (reload best, lr / 10) or None; sets `stopped` for (b)."""
        done = epoch + 1
        cfg = self.cfg
        if cfg.schedule == "early_stop":
            if self.bad_epochs >= cfg.patience > 0:
                self.stopped = True
            return None
        if self.phase == "adam" and done == cfg.adam_epochs:
            self.phase, self.lr = "sgd", cfg.sgd_lr
            return "switch"
        if self.phase == "sgd" and (done - cfg.adam_epochs) in cfg.sgd_drop_after:
            self.lr /= 10.0
            return "drop"
        return None

    def state_dict(self) -> dict:
        return {
            "phase": self.phase,
            "lr": self.lr,
            "best_loss": self.best_loss,
            "best_epoch": self.best_epoch,
            "bad_epochs": self.bad_epochs,
            "stopped": self.stopped,
        }

    def load_state_dict(self, state: dict) -> None:
        for k, v in state.items():
            setattr(self, k, v)


# --- the run directory ---------------------------------------------------------------


class RunLog:
    """metrics.csv, TensorBoard, the curves PNG (rank 0) and the per-rank samples log."""

    def __init__(self, cfg: RunConfig, dist: DistEnv, run_dir: Path):
        self.dir = run_dir
        self.main = dist.is_main
        self.history: list[dict] = []
        self.samples_file = None
        if cfg.log_samples:
            self.samples_file = open(run_dir / f"samples-rank{dist.rank}.tsv", "a")  # noqa: SIM115
        self.tb = None
        if self.main:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run_dir / "tb"))
            metrics = run_dir / "metrics.csv"
            if metrics.exists():
                with open(metrics) as f:
                    self.history = list(csv.DictReader(f))
            else:
                with open(metrics, "w", newline="") as f:
                    csv.writer(f).writerow(METRIC_FIELDS)

    def step(self, epoch: int, global_step: int, keys: list[str], loss: float | None) -> None:
        if self.samples_file:
            # Flushed per step: a killed run's log shows exactly what it trained on.
            self.samples_file.write(f"{epoch}\t{global_step}\t{','.join(keys)}\n")
            self.samples_file.flush()
        if self.tb is not None and loss is not None:
            self.tb.add_scalar("train/loss", loss, global_step)

    def epoch(self, row: dict, global_step: int) -> None:
        if not self.main:
            return
        self.history.append(row)
        with open(self.dir / "metrics.csv", "a", newline="") as f:
            csv.DictWriter(f, METRIC_FIELDS).writerow(row)
        for name in ("train_loss", "val_loss", "roc_auc", "pr_auc", "lr", "data_wait_fraction"):
            value = row.get(name)
            if value not in (None, "") and math.isfinite(float(value)):
                self.tb.add_scalar(f"epoch/{name}", float(value), global_step)
        self.tb.flush()
        self.plot()

    def plot(self) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        rows = [r for r in self.history if str(r.get("partial")) in ("0", "False")]
        if not rows:
            return
        epochs = [int(r["epoch"]) + 1 for r in rows]

        def series(name):
            return [float(r[name]) if r[name] not in (None, "") else math.nan for r in rows]

        fig, (ax_loss, ax_auc) = plt.subplots(1, 2, figsize=(10, 4))
        ax_loss.plot(epochs, series("train_loss"), marker="o", label="train")
        ax_loss.plot(epochs, series("val_loss"), marker="o", label="validation")
        ax_loss.set(xlabel="epoch", ylabel="BCE loss", title="loss")
        ax_loss.legend()
        ax_auc.plot(epochs, series("roc_auc"), marker="o", label="ROC-AUC")
        ax_auc.plot(epochs, series("pr_auc"), marker="o", label="PR-AUC")
        ax_auc.set(xlabel="epoch", ylabel="macro AUC", title="validation", ylim=(0, 1))
        ax_auc.legend()
        fig.tight_layout()
        fig.savefig(self.dir / "curves.png", dpi=100)
        plt.close(fig)

    def close(self) -> None:
        if self.samples_file:
            self.samples_file.close()
        if self.tb is not None:
            self.tb.close()


# --- validation ----------------------------------------------------------------------


@dataclass
class SplitPredictions:
    labels: np.ndarray  # [N, C]
    probs: np.ndarray  # [N, C], averaged over chunks
    stats: LoaderStats


def predict_split(
    model, shards, plan, vocabulary, loader_cfg, device_input, dist, autocast_dtype
) -> SplitPredictions:
    """Chunk-averaged probabilities for every track of a split, gathered over ranks."""
    stream = ShardStream(shards, plan, vocabulary, loader_cfg)
    reader = EpochReader(stream, pin_memory=device_input.device.type == "cuda")
    device = device_input.device
    probs, labels = [], []
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        for batch in reader:
            b, k = batch.x.shape[:2]
            x = device_input(batch.x, chunked=True)
            with torch.autocast(
                device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None
            ):
                logits = model(x)
            p = torch.sigmoid(logits.float()).reshape(b, k, -1).mean(dim=1)
            probs.append(p.cpu())
            labels.append(batch.y)
    model.train(was_training)
    n_classes = len(vocabulary)
    p = torch.cat(probs) if probs else torch.zeros(0, n_classes)
    y = torch.cat(labels) if labels else torch.zeros(0, n_classes)
    p, y = dist.gather_rows(p.double()), dist.gather_rows(y.double())
    return SplitPredictions(y.numpy(), p.numpy(), reader.stats)


# --- training -------------------------------------------------------------------------


@dataclass
class Progress:
    """Where the run stands; saved in every checkpoint."""

    epoch: int = 0
    epoch_step: int = 0  # steps done in `epoch` (0 at an epoch boundary)
    global_step: int = 0
    samples_seen: int = 0  # over all ranks
    epoch_samples: int = 0  # over all ranks
    epoch_loss_sum: float = 0.0
    epoch_loss_count: int = 0
    train_seconds: float = 0.0


@dataclass
class EpochOutcome:
    steps: int  # run in this session
    samples: int  # over all ranks, in this session
    seconds: float
    wait_seconds: float  # blocked on the loader
    stats: LoaderStats  # summed over ranks
    timed_out: bool
    positions: torch.Tensor | None  # loader positions when the epoch stopped early


class Trainer:
    def __init__(self, cfg: RunConfig, resume: bool = False):
        augment = resolve_chain(cfg.augment)
        # config.json records the whole chain, not the name of a file that may change
        cfg = dataclasses.replace(cfg, augment=augment or "")
        self.cfg = cfg
        self.dist = DistEnv.from_env()
        self.device = resolve_device(cfg.device, self.dist.local_rank)
        self.dist.start(self.device)
        self.autocast_dtype, use_scaler = amp_settings(cfg.precision, self.device)
        self.options = cfg.effective_storage_options()
        entry = get_entry(cfg.model)
        self.card = load_card(cfg.data, self.options)
        self.checksum = card_checksum(self.card)
        self.vocabulary = list(self.card["vocabulary"])
        self.plan = plan_input(
            self.card, entry.input_spec, source=cfg.data, from_pcm=augment is not None
        )
        sample_rate = self.plan.features["sample_rate"]
        self.augment = WaveformAugment(augment, sample_rate) if augment else None
        self.train_shards = split_shards(self.card, cfg.data, cfg.train_split)
        self.val_shards = split_shards(self.card, cfg.data, cfg.val_split)
        self.train_loader_cfg = LoaderConfig(
            batch_size=cfg.batch_size,
            workers=cfg.workers,
            shuffle_buffer=cfg.shuffle_buffer,
            seed=cfg.seed,
            rank=self.dist.rank,
            world=self.dist.world,
            train=True,
            storage_options=self.options,
        )
        check_enough_shards(self.train_shards, self.train_loader_cfg, cfg.train_split)
        val_workers = min(cfg.workers, len(self.val_shards) // self.dist.world)
        self.val_loader_cfg = dataclasses.replace(
            self.train_loader_cfg, train=False, workers=val_workers, eval_chunks=cfg.val_chunks
        )
        self.run_dir = cfg.run_dir()
        if not resume and (self.run_dir / ckpt.LAST).exists():
            raise ConfigError(
                f"{self.run_dir} already holds a run: continue it with --resume "
                "or choose another --out"
            )
        self.model = create_model(cfg.model, len(self.vocabulary), seed=cfg.seed, width=cfg.width)
        self.model.to(self.device)
        self.net = self.model
        if self.dist.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = torch.nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        self.schedule = Schedule(cfg)
        self.optimizer = self.schedule.make_optimizer(self.model.parameters())
        self.scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
        self.device_input = DeviceInput(self.plan, self.device)
        self.progress = Progress()
        self.resume_positions = None
        self.norm_source = "card" if self.plan.mean is not None else "none"
        if resume:
            self._resume()
        else:
            # Dropout (and the subclasses' patchout, masks, mixup) draw from torch's
            # generator: seeded per rank here, restored from the checkpoint on --resume.
            torch.manual_seed(cfg.seed * 1000 + self.dist.rank)
            if self.plan.kind == "mel" and self.plan.mean is None:
                self._estimate_stats()

    # -- set-up helpers

    def _estimate_stats(self) -> None:
        # No usable card statistics (e.g. mel computed from PCM at other settings): take
        # them from the first training shards, identically on every rank.
        cfg = dataclasses.replace(
            self.val_loader_cfg, rank=0, world=1, workers=0, eval_chunks=1, batch_size=8
        )
        stream = ShardStream(self.train_shards[:2], self.plan, self.vocabulary, cfg)
        flat = (
            dataclasses.replace(b, x=b.x.reshape(-1, *b.x.shape[2:])) for b in EpochReader(stream)
        )
        mean, std = estimate_mel_stats(flat, self.device_input)
        self.device_input.set_stats(mean, std)
        self.norm_source = "estimated"

    def _norm_state(self) -> dict:
        di = self.device_input
        if di.mean is None:
            return {"mean": None, "std": None, "source": self.norm_source}
        return {
            "mean": di.mean[:, 0].cpu().tolist(),
            "std": di.std[:, 0].cpu().tolist(),
            "source": self.norm_source,
        }

    def _resume(self) -> None:
        state = ckpt.load_checkpoint(self.run_dir / ckpt.LAST, map_location=self.device)
        if state["card_checksum"] != self.checksum:
            raise CardError(
                f"the dataset card at {self.cfg.data} differs from the one this run was "
                "trained on (checksum mismatch); start a new run instead of --resume"
            )
        self.model.load_state_dict(state["model"])
        self.schedule.load_state_dict(state["schedule"])
        self.optimizer = self.schedule.make_optimizer(self.model.parameters())
        self.optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.progress = Progress(**state["progress"])
        norm = state["normalisation"]
        self.device_input.set_stats(norm["mean"], norm["std"])
        self.norm_source = norm["source"]
        ckpt.restore_rng(state["rng"])
        loader = state.get("loader")
        if self.progress.epoch_step and loader:
            want = self._loader_geometry()
            have = {k: loader[k] for k in want}
            if have != want:
                diffs = ", ".join(f"{k} {have[k]} -> {want[k]}" for k in want if have[k] != want[k])
                raise ConfigError(
                    f"cannot resume mid-epoch with a different loader layout ({diffs}); "
                    "use the run's original settings"
                )
            self.resume_positions = loader["positions"][self.dist.rank].cpu()
        if self.dist.is_main:
            print(
                f"resuming {self.run_dir} at epoch {self.progress.epoch + 1}, "
                f"step {self.progress.epoch_step} of the epoch ({self.progress.global_step} in all)",
                flush=True,
            )

    def _loader_geometry(self) -> dict:
        c = self.train_loader_cfg
        return {
            "world": c.world,
            "workers": c.slots,
            "shuffle_buffer": c.shuffle_buffer,
            "batch_size": c.batch_size,
            "seed": c.seed,
        }

    # -- checkpoints

    def _payload(self, positions: torch.Tensor | None) -> dict:
        loader = None
        if positions is not None:
            loader = {"positions": positions.cpu(), **self._loader_geometry()}
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else {},
            "schedule": self.schedule.state_dict(),
            "progress": dataclasses.asdict(self.progress),
            "loader": loader,
            "rng": ckpt.rng_state(),
            "config": self.cfg.to_json(),
            "model_name": self.cfg.model,
            "width": self.cfg.width,
            "vocabulary": self.vocabulary,
            "card_checksum": self.checksum,
            "input_plan": dataclasses.asdict(self.plan),
            "normalisation": self._norm_state(),
        }

    def _gather_positions(self, reader: EpochReader) -> torch.Tensor:
        local = reader.encoded_positions().to(self.dist.comm_device)
        if not self.dist.distributed:
            return local[None].cpu()
        parts = [torch.zeros_like(local) for _ in range(self.dist.world)]
        torch.distributed.all_gather(parts, local)
        return torch.stack(parts).cpu()

    def save(self, name: str, positions: torch.Tensor | None) -> None:
        if self.dist.is_main:
            ckpt.save_checkpoint(self.run_dir / name, self._payload(positions))

    def reload_best(self) -> None:
        self.dist.barrier()
        path = self.run_dir / ckpt.BEST
        if path.exists():
            state = ckpt.load_checkpoint(path, map_location=self.device)
            self.model.load_state_dict(state["model"])

    # -- the loop

    def run(self) -> dict:
        cfg, dist, progress = self.cfg, self.dist, self.progress
        if dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.json").write_text(self.cfg.to_json() + "\n")
            self._print_header()
        dist.barrier()
        log = RunLog(cfg, dist, self.run_dir)
        start = time.monotonic()
        budget = cfg.max_minutes * 60 if cfg.max_minutes else math.inf
        kill_at = int(os.environ.get(KILL_AT_STEP_ENV, 0) or 0)
        total_epochs = cfg.total_epochs()
        stop_reason = "finished all epochs"
        last_val = None
        try:
            while progress.epoch < total_epochs and not self.schedule.stopped:
                epoch = progress.epoch
                if not dist.all_min([float(time.monotonic() - start < budget)])[0]:
                    stop_reason = f"time budget of {cfg.max_minutes:g} min reached"
                    break
                outcome = self._train_epoch(epoch, log, start, budget, kill_at)
                if outcome.timed_out:
                    stop_reason = f"time budget of {cfg.max_minutes:g} min reached"
                    if outcome.steps:
                        last_val = self._end_epoch(epoch, outcome, log, partial=True)
                    break
                last_val = self._end_epoch(epoch, outcome, log, partial=False)
                if self.schedule.stopped:
                    stop_reason = (
                        f"early stopping: {self.schedule.bad_epochs} epochs without improvement"
                    )
            if self.schedule.stopped and progress.epoch >= total_epochs:
                stop_reason = "finished all epochs"
        finally:
            log.close()
        summary = self._summary(stop_reason, last_val, time.monotonic() - start)
        dist.stop()
        return summary

    def _train_epoch(self, epoch, log, start, budget, kill_at) -> EpochOutcome:
        cfg, dist, progress = self.cfg, self.dist, self.progress
        resume = self.resume_positions if progress.epoch_step else None
        self.resume_positions = None
        reader = self._train_reader(epoch, resume)
        steps = planned_steps(reader.stream.assignment, cfg.batch_size)
        if cfg.max_steps_per_epoch:
            steps = min(steps, cfg.max_steps_per_epoch)
        bar = _progress_bar(
            cfg.progress and dist.is_main, steps, progress.epoch_step, epoch, cfg.total_epochs()
        )
        self.net.train()
        batches = iter(reader)
        done_here, samples_here, wait, t_epoch = 0, 0, 0.0, time.perf_counter()
        timed_out = False
        while progress.epoch_step < steps:
            t0 = time.perf_counter()
            batch = next(batches, None)
            wait += time.perf_counter() - t0
            within = time.monotonic() - start < budget
            have, within = dist.all_min([float(batch is not None), float(within)])
            if not have:
                break  # some rank ran dry (unreadable shards): every rank ends the epoch
            if not within:
                timed_out = True
                break
            loss = self._step(batch)
            reader.commit(batch)
            progress.epoch_step += 1
            progress.global_step += 1
            progress.samples_seen += len(batch.keys) * dist.world
            progress.epoch_samples += len(batch.keys) * dist.world
            progress.epoch_loss_sum += loss
            progress.epoch_loss_count += 1
            done_here += 1
            samples_here += len(batch.keys)
            log.step(
                epoch,
                progress.global_step,
                batch.keys,
                loss if progress.global_step % max(1, cfg.log_every) == 0 else None,
            )
            if bar is not None:
                rate = samples_here * dist.world / max(1e-9, time.perf_counter() - t_epoch)
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}", samples_s=f"{rate:.0f}", refresh=False)
            if cfg.checkpoint_every and progress.global_step % cfg.checkpoint_every == 0:
                self.save(ckpt.LAST, self._gather_positions(reader))
            if kill_at and progress.global_step == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
        if not timed_out and progress.epoch_step == 0 and steps > 0:
            reader.close()
            first = reader.stats.errors[0] if reader.stats.errors else "no samples"
            raise LoaderError(f"no training batch could be read from {cfg.data}: {first}")
        seconds = time.perf_counter() - t_epoch
        progress.train_seconds += seconds
        positions = self._gather_positions(reader) if timed_out else None
        reader.close()
        if bar is not None:
            bar.close()
        stats = reader.stats
        counts = dist.all_sum([stats.shard_errors, stats.bad_samples, stats.foreign_members])
        stats.shard_errors, stats.bad_samples, stats.foreign_members = (int(c) for c in counts)
        return EpochOutcome(
            done_here, samples_here * dist.world, seconds, wait, stats, timed_out, positions
        )

    def _train_reader(self, epoch: int, resume: torch.Tensor | None) -> EpochReader:
        """The epoch's training batches, from the checkpointed position table `resume`
        (a subclass may pair them with other streams)."""
        stream = ShardStream(
            self.train_shards,
            self.plan,
            self.vocabulary,
            self.train_loader_cfg,
            epoch,
            None if resume is None else decode_positions(resume),
            augment=self.augment,
        )
        return EpochReader(stream, pin_memory=self.device.type == "cuda")

    def _loss(self, batch) -> torch.Tensor:
        """The training loss of a batch (a subclass may train on other targets)."""
        x = self.device_input(batch.x)
        y = batch.y.to(self.device, non_blocking=True)
        dtype = self.autocast_dtype
        with torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None):
            logits = self.net(x)
        return F.binary_cross_entropy_with_logits(logits.float(), y)

    def _step(self, batch) -> float:
        loss = self._loss(batch)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return float(loss.detach())

    def _end_epoch(self, epoch: int, outcome, log: RunLog, partial: bool) -> dict:
        progress, schedule = self.progress, self.schedule
        val = predict_split(
            self.model,
            self.val_shards,
            self.plan,
            self.vocabulary,
            self.val_loader_cfg,
            self.device_input,
            self.dist,
            self.autocast_dtype,
        )
        val_loss = bce_on_probabilities(val.labels, val.probs)
        scores = tag_scores(val.labels, val.probs)
        train_loss = progress.epoch_loss_sum / max(1, progress.epoch_loss_count)
        if partial:
            improved = math.isfinite(val_loss) and val_loss < schedule.best_loss
            if improved:
                schedule.best_loss, schedule.best_epoch = val_loss, epoch
        else:
            improved = schedule.observe(epoch, val_loss)
        if improved:
            self.save(ckpt.BEST, None)
        row = {
            "epoch": epoch,
            "partial": int(partial),
            "phase": schedule.phase,
            "lr": self.optimizer.param_groups[0]["lr"],
            "steps": progress.epoch_step,
            "samples": progress.epoch_samples,
            "train_loss": round(train_loss, 6),
            "val_loss": round(val_loss, 6),
            "roc_auc": round(scores.roc_auc, 6),
            "pr_auc": round(scores.pr_auc, 6),
            "best": int(improved),
            "seconds": round(outcome.seconds, 3),
            "samples_per_s": round(outcome.samples / max(1e-9, outcome.seconds), 1),
            "data_wait_fraction": round(outcome.wait_seconds / max(1e-9, outcome.seconds), 4),
            "shard_errors": outcome.stats.shard_errors,
            "bad_samples": outcome.stats.bad_samples,
            "foreign_members": outcome.stats.foreign_members,
        }
        log.epoch(row, progress.global_step)
        if self.dist.is_main:
            print(
                f"epoch {epoch + 1}{' (partial)' if partial else ''}: "
                f"train loss {train_loss:.4f}  val loss {val_loss:.4f}  "
                f"ROC-AUC {scores.roc_auc:.4f}  PR-AUC {scores.pr_auc:.4f}  "
                f"{row['samples_per_s']:.0f} samples/s  "
                f"data wait {100 * row['data_wait_fraction']:.0f}%{'  *best*' if improved else ''}",
                flush=True,
            )
            problems = outcome.stats.shard_errors + outcome.stats.bad_samples
            if problems or outcome.stats.foreign_members:
                print(
                    f"  loader: {outcome.stats.shard_errors} shard error(s), "
                    f"{outcome.stats.bad_samples} bad sample(s), "
                    f"{outcome.stats.foreign_members} foreign member(s) skipped unread"
                    + (f"; first: {outcome.stats.errors[0]}" if outcome.stats.errors else ""),
                    flush=True,
                )
        if partial:
            self.save(ckpt.LAST, outcome.positions)
            return row
        transition = schedule.after_epoch(epoch)
        if transition is not None:
            self.reload_best()
            if transition == "switch":
                self.optimizer = schedule.make_optimizer(self.model.parameters())
            for group in self.optimizer.param_groups:
                group["lr"] = schedule.lr
        progress.epoch += 1
        progress.epoch_step = 0
        progress.epoch_loss_sum, progress.epoch_loss_count, progress.epoch_samples = 0.0, 0, 0
        self.save(ckpt.LAST, None)
        return row

    # -- reporting

    def _print_header(self) -> None:
        entry = get_entry(self.cfg.model)
        p = self.plan
        source = (
            f"{p.member} -> {p.device_feature} on {self.device}" if p.device_feature else p.member
        )
        print(f"run {self.run_dir}: {self.cfg.model} on {self.dist.world} rank(s)")
        print(self.cfg.describe())
        print(
            f"model: {entry.name}  {count_parameters(self.model):,} parameters at width "
            f"{self.cfg.width:g}; input {p.kind} x {p.length} from {source}; "
            f"normalisation: {self.norm_source}"
        )
        if self.augment:
            print(f"augmentation: {self.augment.describe()}")
        print(
            f"data: {self.cfg.data}  {len(self.vocabulary)} tags; "
            f"{len(self.train_shards)} train / {len(self.val_shards)} validation shards; "
            f"device {self.device}"
            + (f", autocast {self.autocast_dtype}" if self.autocast_dtype else ""),
            flush=True,
        )

    def _summary(self, reason: str, last_val: dict | None, seconds: float) -> dict:
        s, p = self.schedule, self.progress
        summary = {
            "run_dir": str(self.run_dir),
            "model": self.cfg.model,
            "stopped": reason,
            "epochs_completed": p.epoch,
            "global_step": p.global_step,
            "samples_seen": p.samples_seen,
            "best_epoch": s.best_epoch + 1 if s.best_epoch >= 0 else None,
            "best_val_loss": s.best_loss if math.isfinite(s.best_loss) else None,
            "last": last_val,
            "seconds": round(seconds, 1),
            "train_samples_per_s": round(p.samples_seen / max(1e-9, p.train_seconds), 1),
        }
        if self.dist.is_main:
            (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
            best = (
                f"epoch {summary['best_epoch']}, val loss {s.best_loss:.4f}"
                if s.best_epoch >= 0
                else "none"
            )
            print(f"done: {reason}")
            print(
                f"  {p.epoch} epoch(s), {p.global_step} steps, {p.samples_seen} samples in "
                f"{seconds / 60:.1f} min ({summary['train_samples_per_s']:.0f} samples/s training)"
            )
            print(f"  best: {best}")
            if last_val:
                print(
                    f"  last validation: ROC-AUC {last_val['roc_auc']:.4f}  "
                    f"PR-AUC {last_val['pr_auc']:.4f}; loader: {last_val['shard_errors']} shard "
                    f"error(s), {last_val['bad_samples']} bad sample(s), "
                    f"{last_val['foreign_members']} foreign member(s) skipped"
                )
            print(
                f"  run directory: {self.run_dir} (config.json, metrics.csv, tb/, curves.png, "
                "last.pt, best.pt)",
                flush=True,
            )
        return summary


def _progress_bar(enabled: bool, total: int, initial: int, epoch: int, epochs: int):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(
        total=total,
        initial=initial,
        desc=f"epoch {epoch + 1}/{epochs}",
        unit="batch",
        dynamic_ncols=True,
        leave=False,
    )


def train(cfg: RunConfig, resume: bool = False) -> dict:
    return Trainer(cfg, resume).run()


# --- command line ---------------------------------------------------------------------

# Flags that override the config file: field -> (type, help).
_FLAGS = {
    "data": (str, "dataset directory or URL prefix (https://, s3://, gs://) holding dataset.json"),
    "model": (str, "registered model name (see `python -m tagtrain models`)"),
    "out": (str, "run directory (default runs/MODEL)"),
    "epochs": (int, "epochs (default: the schedule's: adam_sgd 140, early_stop 200)"),
    "batch_size": (int, "batch size per rank (default 16)"),
    "workers": (int, "loader worker processes per rank (default 4; 0 = main process)"),
    "seed": (int, "seed of initialisation, shuffles and crops (default 0)"),
    "device": (str, "auto, cpu, cuda or cuda:N (default auto)"),
    "width": (float, "channel-width multiplier of the model (default 1.0)"),
    "schedule": (str, "adam_sgd (a) or early_stop (b) (default adam_sgd)"),
    "lr": (float, "Adam learning rate (default 1e-4)"),
    "patience": (int, "early_stop: epochs without improvement before stopping (default 20)"),
    "adam_epochs": (int, "adam_sgd: Adam epochs before SGD (default 80)"),
    "max_minutes": (float, "time budget; the run checkpoints and stops when it is spent"),
    "max_steps_per_epoch": (int, "cap on steps per epoch (demos)"),
    "checkpoint_every": (int, "steps between mid-epoch checkpoints (default 500; 0 = off)"),
    "shuffle_buffer": (int, "samples in each loader worker's shuffle buffer (default 256)"),
    "val_chunks": (int, "chunks averaged per validation track (default 4)"),
    "precision": (str, "auto, fp32, bf16 or fp16 autocast on CUDA (default auto)"),
    "augment": (str, "waveform augmentation: default (seed 003's chain), a YAML file, or none"),
    "s3_endpoint_url": (str, "S3-compatible endpoint (or set AWS_ENDPOINT_URL)"),
}
_CHOICES = {"schedule": SCHEDULES, "precision": PRECISIONS}


def add_config_flags(parser: argparse.ArgumentParser, exclude=()) -> None:
    """--config and one flag per run setting (other commands that train reuse them)."""
    parser.add_argument("--config", help="YAML or JSON file of settings (flags override it)")
    for name, (kind, text) in _FLAGS.items():
        if name in exclude:
            continue
        parser.add_argument(
            "--" + name.replace("_", "-"),
            type=kind,
            default=None,
            choices=_CHOICES.get(name),
            help=text,
        )


def config_overrides(args: argparse.Namespace) -> dict:
    """The run settings given as flags (see `add_config_flags`)."""
    overrides = {k: getattr(args, k) for k in _FLAGS if getattr(args, k, None) is not None}
    if getattr(args, "no_progress", False):
        overrides["progress"] = False
    if getattr(args, "log_samples", False):
        overrides["log_samples"] = True
    return overrides


def add_run_flags(parser: argparse.ArgumentParser, resume_help: str) -> None:
    """--resume, --no-progress and --log-samples: how to run, not what to train."""
    parser.add_argument("--resume", action="store_true", help=resume_help)
    parser.add_argument("--no-progress", action="store_true", help="no tqdm progress bars")
    parser.add_argument(
        "--log-samples",
        action="store_true",
        help="write samples-rankR.tsv: the sample keys of every training step",
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_flags(parser)
    add_run_flags(parser, "continue the run in --out")


def config_from_args(args: argparse.Namespace) -> RunConfig:
    overrides = config_overrides(args)
    base = None
    if args.resume:
        probe = build_config(args.config, {"data": "-", "model": "-", **overrides})
        if not (probe.out or "model" in overrides):
            raise ConfigError("--resume needs the run directory: give --out (or --model)")
        saved = probe.run_dir() / "config.json"
        if not saved.is_file():
            raise ConfigError(f"--resume: no run to resume at {probe.run_dir()}")
        base = json.loads(saved.read_text())
    return build_config(args.config, overrides, base)


def run(args: argparse.Namespace) -> int:
    return run_trainer(lambda: Trainer(config_from_args(args), resume=args.resume))


def run_trainer(build) -> int:
    """Build a trainer and run it: a user error is one line and exit 2, a loader that
    cannot deliver one line and exit 1."""
    try:
        trainer = build()
    except (ConfigError, CardError, LoaderError, OpenerError, ckpt.CheckpointError) as exc:
        print(f"error: {first_line(exc)}", file=sys.stderr)
        return 2
    except KeyError as exc:  # unknown model
        print(f"error: {exc.args[0] if exc.args else exc}", file=sys.stderr)
        return 2
    try:
        trainer.run()
    except LoaderError as exc:  # e.g. not one training batch could be read
        print(f"error: {first_line(exc)}", file=sys.stderr)
        return 1
    return 0
