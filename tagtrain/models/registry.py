"""Model registry: models are registered by name and built from a config (as in timm).

Each model declares its input through an `InputSpec`; the trainer derives crops and the
card check from it. The zoo registers itself when the package `tagtrain.models` is
imported, which Python does before any of its modules, this one included: so every
`from tagtrain.models.registry import ...` sees every model, and this module imports none.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

INPUT_KINDS = ("mel", "harm", "pcm")


@dataclass(frozen=True)
class InputSpec:
    """What a model eats.

    kind: "mel" ([B, n_mels, frames]), "harm" ([B, H, bands, frames]) or "pcm" ([B, samples]).
    seconds: training input length; `samples`/`frames` are derived from it.
    chunk_level: True when the model sees chunks and evaluation averages over chunks;
    False for song-level models (FCN, CRNN) that see one crop of the track.
    The feature fields must match the dataset card (`features`) for mel/harm inputs.
    standardize: what is done to a mel/harm input before the model, as its paper does:
    "none" (the model's own input batch-norm), "band" (per-band mean/std of the training
    split, from the card), or "global" (one (mean, std) pair, `global_stats`, as in MAEST).
    """

    kind: str
    seconds: float
    sample_rate: int = 16000
    n_mels: int = 128
    n_fft: int = 512
    hop: int = 256
    f_min: float = 0.0
    f_max: float = 8000.0
    log_scale: str = "db"
    # The front end of the paper's reference code (pipelines/core/features.py): the
    # defaults are torchaudio's MelSpectrogram, as seeds 000 and 003 use it.
    mel_scale: str = "htk"
    mel_norm: str = "none"
    pad_mode: str = "reflect"
    chunk_level: bool = True
    exact_samples: int | None = None  # e.g. 59,049 for the sample-level CNN
    standardize: str = "band"
    global_stats: tuple[float, float] | None = None

    @property
    def samples(self) -> int:
        return self.exact_samples or int(round(self.seconds * self.sample_rate))

    @property
    def frames(self) -> int:
        return 1 + self.samples // self.hop

    def card_requirements(self) -> dict:
        """The card's feature fields this input depends on."""
        if self.kind == "pcm":
            return {"sample_rate": self.sample_rate}
        return {
            "sample_rate": self.sample_rate,
            "n_fft": self.n_fft,
            "hop": self.hop,
            **({"n_mels": self.n_mels} if self.kind == "mel" else {}),
            **({"f_min": self.f_min, "f_max": self.f_max} if self.kind == "mel" else {}),
            **(
                {"mel_scale": self.mel_scale, "mel_norm": self.mel_norm}
                if self.kind == "mel"
                else {}
            ),
            "pad_mode": self.pad_mode,
            "log_scale": self.log_scale,
        }

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


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
        raise KeyError(f"unknown model {name!r}; known: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


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
