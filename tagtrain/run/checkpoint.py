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
from pathlib import Path

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
