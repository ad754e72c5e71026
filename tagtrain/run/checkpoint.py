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

import errno
import os
import shutil
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
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if _disk_full(exc):
            raise CheckpointError(_full_disk_message(path)) from None
        raise
    if keep_previous and path.is_file():
        os.replace(path, previous_path(path))
    os.replace(tmp, path)


# How torch.save reports a write that stopped short: its zip writer's check on the
# position it reached ("[enforce fail at inline_container.cc:NNN] . unexpected pos ..."),
# with no errno; on a full disk that is all a run would print.
_SHORT_WRITE = ("inline_container.cc", "PytorchStreamWriter failed writing")


def _disk_full(exc: BaseException) -> bool:
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    return isinstance(exc, RuntimeError) and any(m in str(exc) for m in _SHORT_WRITE)


def _full_disk_message(path: Path) -> str:
    where = path.parent.resolve()
    try:
        free = f" ({shutil.disk_usage(where).free / 2**20:.0f} MiB free)"
    except OSError:
        free = ""
    return (
        f"cannot write checkpoint {path.name}: the disk is full at {where}{free}; the "
        "previous checkpoint is kept: free space (or give another --out) and --resume"
    )


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


def check_finite(weights, source: str) -> None:
    """CheckpointError naming the first tensor of `weights` (name -> tensor) that holds a
    NaN or an infinity: such a model tags everything NaN without a word."""
    for name, tensor in weights.items():
        if not isinstance(tensor, torch.Tensor):
            raise CheckpointError(f"{source}: {name} is not a tensor")
        if (tensor.is_floating_point() or tensor.is_complex()) and not bool(
            torch.isfinite(tensor).all()
        ):
            raise CheckpointError(f"{source}: tensor {name} holds NaN or infinite values")
