"""Model registry: models are registered by name and built from a config (as in timm).

Each model declares its input through an `InputSpec` (tagtrain/models/input_spec.py,
importable from here too); the trainer derives crops and the card check from it. The zoo
registers itself when the package `tagtrain.models` is imported, which Python does before
any of its modules, this one included: so every `from tagtrain.models.registry import ...`
sees every model, and this module imports none.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from tagtrain.models.input_spec import INPUT_KINDS, InputSpec

__all__ = [
    "INPUT_KINDS",
    "InputSpec",
    "ModelEntry",
    "count_parameters",
    "create_model",
    "get_entry",
    "list_models",
    "register_model",
]


@dataclass(frozen=True)
class ModelEntry:
    name: str
    builder: Callable[..., nn.Module]
    input_spec: InputSpec
    reference_params: int | None
    description: str


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(
    name: str, input_spec: InputSpec, reference_params: int | None = None, description: str = ""
):
    """Class or function decorator; the builder takes (n_classes, **config)."""

    def wrap(builder):
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} registered twice")
        _REGISTRY[name] = ModelEntry(name, builder, input_spec, reference_params, description)
        return builder

    return wrap


def list_models() -> list[ModelEntry]:
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]


def get_entry(name: str) -> ModelEntry:
    if name not in _REGISTRY:
        raise KeyError(unknown_model(name))
    return _REGISTRY[name]


def unknown_model(name: str) -> str:
    """One line for a mistyped model: the close names, not the whole zoo (hundreds of
    characters), which the `models` command lists."""
    close = difflib.get_close_matches(str(name), sorted(_REGISTRY), n=3, cutoff=0.6)
    hint = f" (did you mean {' or '.join(close)}?)" if close else ""
    return f"unknown model {name!r}{hint}; `models` lists the {len(_REGISTRY)} models"


def create_model(name: str, n_classes: int, seed: int | None = 0, **config) -> nn.Module:
    """Build a registered model; `seed` makes initialisation deterministic."""
    entry = get_entry(name)
    if seed is not None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = entry.builder(n_classes=n_classes, **config)
    else:
        model = entry.builder(n_classes=n_classes, **config)
    # A model built with non-default options (e.g. n_mels) sets its own spec.
    model.input_spec = getattr(model, "input_spec", None) or entry.input_spec
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
