"""What a run prints at its start (the config as a diff from the defaults, the model, the
data) and writes and prints at its end (summary.json)."""

from __future__ import annotations

import json
import math

from pipelines.core.flags import diff_from_defaults
from tagtrain.inference.metrics import METRICS
from tagtrain.models.registry import count_parameters
from tagtrain.run.directory import RunDir


def print_header(trainer) -> None:
    cfg, data, rt = trainer.cfg, trainer.data, trainer.rt
    p = data.plan
    source = f"{p.member} -> {p.device_feature} on {rt.device}" if p.device_feature else p.member
    print(f"run {trainer.run_dir}: {cfg.model} on {rt.dist.world} rank(s)")
    changed = diff_from_defaults(cfg, skip=("augment",))
    print(
        "config (vs defaults; whole in config.json): "
        + (" ".join(changed) if changed else "defaults")
        + f"; {cfg.total_epochs()} epochs of schedule {cfg.schedule}, selection by {cfg.select}"
    )
    print(
        f"model: {cfg.model}  {count_parameters(trainer.model):,} parameters at width "
        f"{cfg.width:g}; input {p.kind} x {p.length} from {source}; "
        f"normalisation: {data.norm_source}"
    )
    if data.augment:
        print(f"augmentation: {data.augment.describe()}")
    print(
        f"data: {cfg.data}  {len(data.vocabulary)} tags; "
        f"{len(data.train_shards)} train / {len(data.val_shards)} validation shards; "
        f"device {rt.device}" + (f", autocast {rt.autocast_dtype}" if rt.autocast_dtype else "")
    )
    if (sample := data.train_loader.epoch_sample) is not None:
        tracks = sum(s.samples for s in data.train_shards)
        weights = "uniform" if sample.weights is None else "weighted by inverse tag frequency"
        print(
            f"epoch sample: {min(sample.size, tracks)} of {tracks} training tracks per epoch, "
            f"drawn without replacement, {weights}"
            + (" (--epoch-samples is more: every track)" if sample.size > tracks else "")
        )
    for line in trainer.objective.describe(trainer.ctx):
        print(line)
    print(end="", flush=True)


def write_summary(trainer, reason: str, last_val: dict | None, seconds: float) -> dict:
    s, p, cfg = trainer.schedule, trainer.progress, trainer.cfg
    best = trainer.log.best_row()
    summary = {
        "run_dir": str(trainer.run_dir),
        "model": cfg.model,
        "objective": trainer.objective.name,
        "stopped": reason,
        "epochs_completed": p.epoch,
        "global_step": p.global_step,
        "samples_seen": p.samples_seen,
        "skipped_steps": p.skipped_steps,
        "select": cfg.select,
        "best_epoch": s.best_epoch + 1 if s.best_epoch >= 0 else None,
        "best_val_loss": float(best["val_loss"]) if best else None,
        **{f"best_{m}": _number(best.get(m)) if best else None for m in METRICS},
        "last": last_val,
        "seconds": round(seconds, 1),
        "train_samples_per_s": round(p.samples_seen / max(1e-9, p.train_seconds), 1),
        **trainer.objective.summary(trainer.ctx),
    }
    if not trainer.rt.dist.is_main:
        return summary
    trainer.run_dir.write_text(RunDir.SUMMARY, json.dumps(summary, indent=2) + "\n")
    chosen = (
        f"epoch {summary['best_epoch']} by {cfg.select} (val loss "
        f"{_fmt(summary['best_val_loss'])}"
        + "".join(f", {m.label} {_fmt(summary[f'best_{m.name}'])}" for m in METRICS.values())
        + ")"
        if best
        else "none"
    )
    print(f"done: {reason}")
    print(
        f"  {p.epoch} epoch(s), {p.global_step} steps, {p.samples_seen} samples in "
        f"{seconds / 60:.1f} min ({summary['train_samples_per_s']:.0f} samples/s training)"
        + (f"; {p.skipped_steps} non-finite step(s) skipped" if p.skipped_steps else "")
    )
    print(f"  best: {chosen}")
    if last_val:
        print(
            "  last validation: "
            + "  ".join(f"{m.label} {_fmt(last_val.get(m.name))}" for m in METRICS.values())
            + f"; loader: {last_val['shard_errors']} shard "
            f"error(s), {last_val['bad_samples']} bad sample(s), "
            f"{last_val['foreign_members']} foreign member(s) skipped"
        )
    print(
        f"  run directory: {trainer.run_dir} (config.json, metrics.csv, tb/, curves.png, "
        "last.pt, best.pt)",
        flush=True,
    )
    return summary


def _number(value) -> float | None:
    """A metrics.csv cell as a number (None when empty: a metric registered later)."""
    return None if value in (None, "") else float(value)


def _fmt(value) -> str:
    return "-" if value in (None, "") or not math.isfinite(float(value)) else f"{float(value):.4f}"
