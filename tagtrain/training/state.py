"""A trainer's state in a checkpoint: everything to resume it exactly (weights, optimiser,
schedule, progress, loader positions, every RNG, callbacks' state) and to rebuild its model.
The file format (weights-only loading, atomic writes, last.prev.pt) is tagtrain.run.checkpoint."""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass

import numpy as np
import torch

from tagtrain.loader import is_sample_state, resume_rows
from tagtrain.run.checkpoint import load_latest
from tagtrain.run.config import ConfigError
from tagtrain.run.directory import RunDir

# The loader geometry of a checkpoint written before a setting was part of it.
GEOMETRY_BEFORE = {"epoch_samples": 0, "balance": "none"}

# The payload key of the objective's name and settings; checkpoints written before the
# objective had its name keep them under "recipe" (`saved_objective` reads both).
OBJECTIVE, OLD_OBJECTIVE = "objective", "recipe"


def saved_objective(payload: dict) -> dict:
    """The objective's name and settings a checkpoint payload records ({} if none)."""
    return payload.get(OBJECTIVE) or payload.get(OLD_OBJECTIVE) or {}


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
    skipped_steps: int = 0  # steps with a non-finite loss, never applied
    epoch_skipped: int = 0
    bad_in_a_row: int = 0


def rng_state() -> dict:
    """Every RNG the training process uses, as tensors and plain values."""
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": _python_state_to_plain(random.getstate()),
    }


def restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        cuda = list(state["cuda"])[: torch.cuda.device_count()]
        torch.cuda.set_rng_state_all(cuda)
    np_state = state["numpy"]
    np.random.set_state(
        (
            "MT19937",
            np_state["keys"].numpy().astype(np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["cached_gaussian"],
        )
    )
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def _python_state_to_plain(state) -> list:
    version, internal, gauss = state
    return [int(version), [int(v) for v in internal], gauss]


def training_state(trainer, positions, best: bool = False) -> dict:
    """Everything to resume `trainer` (a tagtrain.training.loop.Trainer) and to rebuild its model.
    best.pt holds the weights being validated and no callback state (no SWA average)."""
    data, cfg = trainer.data, trainer.cfg
    loader = None
    if positions is not None:
        loader = {"positions": positions.cpu(), **data.geometry()}
    payload = {
        "model": trainer.model.state_dict(),
        "optimizer": trainer.optimizer.state_dict(),
        "scaler": trainer.scaler.state_dict() if trainer.scaler.is_enabled() else {},
        "schedule": trainer.schedule.state_dict(),
        "progress": dataclasses.asdict(trainer.progress),
        "loader": loader,
        "rng": rng_state(),
        "config": cfg.to_json(),
        "model_name": cfg.model,
        "width": cfg.width,
        "model_setup": trainer.objective.model_setup(trainer.model),
        "vocabulary": data.vocabulary,
        "card_checksum": data.checksum,
        "input_plan": dataclasses.asdict(data.plan),
        "normalisation": data.norm_state(),
        OBJECTIVE: {"name": trainer.objective.name, **trainer.objective.settings()},
    }
    if not best:
        for callback in trainer.callbacks:
            state = callback.state_dict()
            if callback.name and state is not None:
                payload[callback.name] = state
    return payload


def restore_training(trainer, state: dict) -> torch.Tensor | None:
    """Load `state` into `trainer`; this rank's loader positions for a mid-epoch resume."""
    trainer.model.load_state_dict(state["model"])
    trainer.schedule.load_state_dict(state["schedule"])
    trainer.optimizer = trainer.schedule.make_optimizer(trainer.model.parameters())
    trainer.optimizer.load_state_dict(state["optimizer"])
    if state.get("scaler"):
        trainer.scaler.load_state_dict(state["scaler"])
    trainer.progress = Progress(**state["progress"])
    trainer.data.load_norm(state["normalisation"])
    for callback in trainer.callbacks:
        if callback.name and state.get(callback.name) is not None:
            callback.load_state_dict(state[callback.name])
    restore_rng(state["rng"])
    loader = state.get("loader")
    if not (trainer.progress.epoch_step and loader):
        return None
    table, want = loader["positions"], trainer.data.geometry()
    # Checkpoints from before the epoch sample have no such keys: a full epoch.
    have = {k: loader.get(k, GEOMETRY_BEFORE.get(k)) for k in want}
    if have == want:
        return table[trainer.rt.dist.rank].cpu()
    # A sample-level state is one global count of the epoch's consumed samples: another
    # world size or worker count resumes the same epoch (elastic) when the objective's
    # positions are that plain state (not, e.g., the student's two streams).
    elastic = is_sample_state(table) and getattr(trainer.objective, "elastic_resume", True)
    order = ("shuffle_buffer", "batch_size", "seed", "epoch_samples", "balance")
    if elastic and all(have[k] == want[k] for k in order):
        return resume_rows(table, trainer.rt.dist.rank).cpu()
    diffs = ", ".join(f"{k} {have[k]} -> {want[k]}" for k in want if have[k] != want[k])
    raise ConfigError(
        f"cannot resume mid-epoch with a different loader layout ({diffs}); "
        "use the run's original settings"
    )


def resume_training(trainer) -> torch.Tensor | None:
    """Restore `trainer` from its run's last.pt (or last.prev.pt, with a warning); this
    rank's loader positions when the run stopped mid-epoch."""
    say = trainer._say
    state = load_latest(trainer.run_dir / RunDir.LAST, trainer.rt.device, say)
    if state["card_checksum"] != trainer.data.checksum:
        raise ConfigError(
            f"the dataset card at {trainer.cfg.data} differs from the one this run was "
            "trained on (checksum mismatch); start a new run instead of --resume"
        )
    positions = restore_training(trainer, state)
    p = trainer.progress
    say(
        f"resuming {trainer.run_dir} at epoch {p.epoch + 1}, step {p.epoch_step} of the "
        f"epoch ({p.global_step} in all)"
    )
    return positions
