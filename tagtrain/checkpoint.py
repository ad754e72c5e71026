"""Checkpoints that load with `torch.load(weights_only=True)`.

Everything stored is a tensor or a plain container of str/int/float/bool/None: RNG
states as tensors, the run config as a JSON string. Files are written to a temporary name
and renamed, so a kill during a save leaves the previous checkpoint intact.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch

from pipelines.core.errors import first_line

FORMAT = "tagtrain-checkpoint/1"
LAST = "last.pt"
BEST = "best.pt"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message is one line."""


def save_checkpoint(path: str | Path, payload: dict) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save({"format": FORMAT, **payload}, tmp)
    os.replace(tmp, path)


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
