"""Checkpoints that load with `torch.load(weights_only=True)`.

Everything stored is a tensor or a plain container of str/int/float/bool/None: RNG
states as tensors, the run config as a JSON string. Files are written to a temporary name
and renamed, so a kill during a save leaves the previous checkpoint intact; `last.pt`
also keeps its predecessor as `last.prev.pt`, which `load_latest` falls back to (with a
warning) when `last.pt` is missing, truncated or corrupt.

A checkpoint says everything needed to rebuild its model without the code that trained
it: `model_name`, `width`, `vocabulary`, `input_plan`, `normalisation` and `model_setup`
(method name -> keyword arguments called on the built model, e.g. a patchout run's
`set_patchout` for inference).
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch

from pipelines.core.errors import UserError, first_line

FORMAT = "tagtrain-checkpoint/1"
LAST = "last.pt"
BEST = "best.pt"
PREVIOUS_SUFFIX = ".prev.pt"


class CheckpointError(UserError, ValueError):
    """A checkpoint that cannot be used; the message is one line."""


def previous_path(path: Path) -> Path:
    return path.with_name(path.name.removesuffix(".pt") + PREVIOUS_SUFFIX)


def save_checkpoint(path: str | Path, payload: dict, keep_previous: bool = False) -> None:
    """Write atomically; with `keep_previous` the file it replaces becomes NAME.prev.pt."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        torch.save({"format": FORMAT, **payload}, tmp)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if keep_previous and path.is_file():
        os.replace(path, previous_path(path))
    os.replace(tmp, path)


def load_latest(path: str | Path, map_location="cpu", warn=print) -> dict:
    """`path`, or its previous version when `path` cannot be loaded (with a warning);
    when neither can, one line says how to restart."""
    path = Path(path)
    try:
        return load_checkpoint(path, map_location)
    except CheckpointError as exc:
        problem = first_line(exc)
    previous = previous_path(path)
    try:
        state = load_checkpoint(previous, map_location)
    except CheckpointError:
        raise CheckpointError(
            f"{problem}, and no usable previous checkpoint: start again with another --out "
            f"(or delete {path.parent})"
        ) from None
    warn(f"warning: {problem}; resuming from the previous checkpoint {previous}")
    return state


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001  (any unreadable file is one message)
        raise CheckpointError(f"cannot load checkpoint {path}: {first_line(exc, 200)}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a {FORMAT} checkpoint")
    return payload


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


# --- a trainer's state ------------------------------------------------------------------


def training_state(trainer, positions, best: bool = False) -> dict:
    """Everything to resume `trainer` (a tagtrain.training.loop.Trainer) and to rebuild its model.
    best.pt holds the weights being validated and no recipe state (no SWA average)."""
    import dataclasses

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
        "model_setup": trainer.recipe.model_setup(trainer.model),
        "vocabulary": data.vocabulary,
        "card_checksum": data.checksum,
        "input_plan": dataclasses.asdict(data.plan),
        "normalisation": data.norm_state(),
        "recipe": {"name": trainer.recipe.name, **trainer.recipe.settings()},
    }
    if not best:
        for callback in trainer.callbacks:
            state = callback.state_dict()
            if callback.name and state is not None:
                payload[callback.name] = state
    return payload


def restore_training(trainer, state: dict) -> torch.Tensor | None:
    """Load `state` into `trainer`; this rank's loader positions for a mid-epoch resume."""
    from tagtrain.training.loop import Progress

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
    from tagtrain.loader import is_sample_state, resume_rows

    table, want = loader["positions"], trainer.data.geometry()
    have = {k: loader[k] for k in want}
    if have == want:
        return table[trainer.rt.dist.rank].cpu()
    # A sample-level state is one global count of the epoch's consumed samples: another
    # world size or worker count resumes the same epoch (elastic) when the recipe's
    # positions are that plain state (not, e.g., the student's two streams).
    elastic = is_sample_state(table) and getattr(trainer.recipe, "elastic_resume", True)
    order = ("shuffle_buffer", "batch_size", "seed")
    if elastic and all(have[k] == want[k] for k in order):
        return resume_rows(table, trainer.rt.dist.rank).cpu()
    from tagtrain.run.config import ConfigError

    diffs = ", ".join(f"{k} {have[k]} -> {want[k]}" for k in want if have[k] != want[k])
    raise ConfigError(
        f"cannot resume mid-epoch with a different loader layout ({diffs}); "
        "use the run's original settings"
    )


def resume(trainer) -> torch.Tensor | None:
    """Restore `trainer` from its run's last.pt (or last.prev.pt, with a warning); this
    rank's loader positions when the run stopped mid-epoch."""
    from tagtrain.run.config import ConfigError

    say = trainer._say
    state = load_latest(trainer.run_dir / LAST, trainer.rt.device, say)
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
