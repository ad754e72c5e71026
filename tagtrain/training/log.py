"""What a run writes as it goes (rank 0): metrics.csv, TensorBoard, curves.png, the
per-rank samples log, and the lines printed per epoch."""

from __future__ import annotations

import csv
import math
import sys
import time

from tagtrain.inference.metrics import METRICS
from tagtrain.run.directory import RunDir


def metric_fields() -> tuple[str, ...]:
    """metrics.csv's columns: one per registered metric (read when a run starts)."""
    return (
        "epoch", "partial", "phase", "lr", "steps", "samples", "train_loss", "val_loss",
        *METRICS, "best", "seconds", "samples_per_s", "data_wait_fraction",
        "shard_errors", "bad_samples", "foreign_members", "skipped_steps",
    )  # fmt: skip


def tensorboard_fields() -> tuple[str, ...]:
    return ("train_loss", "val_loss", *METRICS, "lr", "data_wait_fraction")


class RunLog:
    def __init__(self, run: RunDir, rank: int, log_samples: bool):
        self.run = run
        self.rank = rank
        self.main = rank == 0
        self.history: list[dict] = []
        self.bar = None
        self.samples_file = open(run.samples(rank), "a") if log_samples else None  # noqa: SIM115
        self.tb = None
        self.fields = metric_fields()
        if self.main:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run / RunDir.TENSORBOARD))
            metrics = run / RunDir.METRICS
            if metrics.exists():
                with open(metrics) as f:
                    reader = csv.DictReader(f)
                    self.history = list(reader)
                    self.fields = tuple(reader.fieldnames or self.fields)  # a resumed run's
            else:
                with open(metrics, "w", newline="") as f:
                    csv.writer(f).writerow(self.fields)

    def open_bar(self, enabled: bool, total: int, initial: int, epoch: int, epochs: int) -> None:
        self.bar = progress_bar(enabled, total, initial, epoch, epochs)

    def close_bar(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def step(self, epoch: int, global_step: int, keys, loss: float | None, to_tb: bool) -> None:
        """A training step: its keys (samples log), its loss (TensorBoard when `to_tb`;
        None: skipped as non-finite) and the progress bar."""
        if self.samples_file:
            # Flushed per step: a killed run's log shows exactly what it trained on.
            self.samples_file.write(f"{epoch}\t{global_step}\t{','.join(keys)}\n")
            self.samples_file.flush()
        if self.tb is not None and loss is not None and to_tb:
            self.tb.add_scalar("train/loss", loss, global_step)
        if self.bar is not None:
            self.bar.update(1)
            shown = f"{loss:.4f}" if loss is not None else "skipped"
            self.bar.set_postfix(loss=shown, refresh=False)

    def epoch(self, row: dict, global_step: int) -> None:
        if not self.main:
            return
        self.history.append(row)
        with open(self.run / RunDir.METRICS, "a", newline="") as f:
            csv.DictWriter(f, self.fields, extrasaction="ignore").writerow(row)
        for name in tensorboard_fields():
            value = row.get(name)
            if value not in (None, "") and math.isfinite(float(value)):
                self.tb.add_scalar(f"epoch/{name}", float(value), global_step)
        self.tb.flush()
        self.plot()
        for name in (RunDir.METRICS, RunDir.CURVES, RunDir.TENSORBOARD):
            if (self.run / name).exists():
                self.run.publish(name)

    def publish_samples(self) -> None:
        """Upload this rank's samples log (remote runs; it is flushed per step)."""
        if self.samples_file is not None:
            self.run.publish(RunDir.samples_name(self.rank))

    def best_row(self) -> dict | None:
        rows = [r for r in self.history if str(r.get("best")) in ("1", "True")]
        return rows[-1] if rows else None

    def plot(self) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        rows = [r for r in self.history if str(r.get("partial")) in ("0", "False")]
        if not rows:
            return
        epochs = [int(r["epoch"]) + 1 for r in rows]

        def series(name):
            return [float(r[name]) if r.get(name) not in (None, "") else math.nan for r in rows]

        fig, (ax_loss, ax_auc) = plt.subplots(1, 2, figsize=(10, 4))
        ax_loss.plot(epochs, series("train_loss"), marker="o", label="train")
        ax_loss.plot(epochs, series("val_loss"), marker="o", label="validation")
        ax_loss.set(xlabel="epoch", ylabel="BCE loss", title="loss")
        ax_loss.legend()
        values = []
        for metric in METRICS.values():
            values += series(metric.name)
            ax_auc.plot(epochs, series(metric.name), marker="o", label=metric.label)
        ax_auc.set(xlabel="epoch", ylabel="macro score", title="validation")
        if all(0 <= v <= 1 for v in values if math.isfinite(v)):
            ax_auc.set_ylim(0, 1)
        ax_auc.legend()
        fig.tight_layout()
        fig.savefig(self.run / RunDir.CURVES, dpi=100)
        plt.close(fig)

    def close(self) -> None:
        self.close_bar()
        if self.samples_file:
            self.samples_file.close()
        if self.tb is not None:
            self.tb.close()


def progress_bar(enabled: bool, total: int, initial: int, epoch: int, epochs: int, stream=None):
    """A tqdm bar on a terminal; elsewhere (a log file, a pipe) `LineProgress`, since every
    tqdm redraw would be kept there."""
    if not enabled:
        return None
    stream = stream or sys.stderr
    desc = f"epoch {epoch + 1}/{epochs}"
    if not stream.isatty():
        return LineProgress(stream, total, initial, desc)
    from tqdm import tqdm

    return tqdm(
        total=total, initial=initial, desc=desc, unit="batch", dynamic_ncols=True,
        leave=False, file=stream,
    )  # fmt: skip


class LineProgress:
    """Progress for a stream that is not a terminal: a whole line at each 1/`parts` of the
    epoch, and only once `quiet` seconds have passed since the epoch began or the last
    line, so a short epoch writes nothing besides its summary line."""

    def __init__(
        self, stream, total: int, initial: int, desc: str, parts: int = 10,
        quiet: float = 60.0, clock=time.monotonic,
    ):  # fmt: skip
        self.stream, self.total, self.n, self.desc = stream, max(1, total), initial, desc
        self.parts, self.quiet, self.clock = parts, quiet, clock
        self.last = self.clock()
        self.shown = self._part()
        self.postfix = ""

    def _part(self) -> int:
        return self.n * self.parts // self.total

    def set_postfix(self, refresh: bool = False, **values) -> None:
        self.postfix = ", ".join(f"{k} {v}" for k, v in values.items())

    def update(self, n: int = 1) -> None:
        self.n += n
        part, now = self._part(), self.clock()
        if part > self.shown and now - self.last >= self.quiet:
            self.shown, self.last = part, now
            extra = f", {self.postfix}" if self.postfix else ""
            print(
                f"{self.desc}: {100 * self.n / self.total:.0f}% ({self.n}/{self.total} "
                f"batches{extra})", file=self.stream, flush=True,
            )  # fmt: skip

    def close(self) -> None:
        pass


def epoch_row(epoch: int, partial: bool, phase: str, lr: float, progress, outcome) -> dict:
    """An epoch's metrics.csv row, less the validation figures."""
    p, seconds = progress, max(1e-9, outcome.seconds)
    train_loss = p.epoch_loss_sum / p.epoch_loss_count if p.epoch_loss_count else math.nan
    return {
        "epoch": epoch, "partial": int(partial), "phase": phase, "lr": lr,
        "steps": p.epoch_step, "samples": p.epoch_samples, "train_loss": round(train_loss, 6),
        "seconds": round(outcome.seconds, 3),
        "samples_per_s": round(outcome.samples / seconds, 1),
        "data_wait_fraction": round(outcome.wait_seconds / seconds, 4),
        "shard_errors": outcome.stats.shard_errors, "bad_samples": outcome.stats.bad_samples,
        "foreign_members": outcome.stats.foreign_members, "skipped_steps": p.epoch_skipped,
    }  # fmt: skip


def epoch_line(row: dict, partial: bool, improved: bool) -> str:
    return (
        f"epoch {row['epoch'] + 1}{' (partial)' if partial else ''}: "
        f"train loss {row['train_loss']:.4f}  val loss {row['val_loss']:.4f}  "
        + "".join(f"{m.label} {row[m.name]:.4f}  " for m in METRICS.values())
        + f"{row['samples_per_s']:.0f} samples/s  "
        f"data wait {100 * row['data_wait_fraction']:.0f}%{'  *best*' if improved else ''}"
        + (f"  ({row['skipped_steps']} non-finite step(s) skipped)" if row["skipped_steps"] else "")
    )


def loader_line(stats) -> str | None:
    if not (stats.shard_errors or stats.bad_samples or stats.foreign_members):
        return None
    return (
        f"  loader: {stats.shard_errors} shard error(s), {stats.bad_samples} bad sample(s), "
        f"{stats.foreign_members} foreign member(s) skipped unread"
        + (f" ({_reasons(stats.bad_by_reason)})" if stats.bad_by_reason else "")
        + (f"; first: {stats.errors[0]}" if stats.errors else "")
    )


def _reasons(counts: dict) -> str:
    return ", ".join(f"{reason} {n}" for reason, n in sorted(counts.items()))
