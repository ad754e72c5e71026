"""What a model eats: `InputSpec`, its features (a `FeatureConfig`, declared once in
pipelines/core/features.py) and the few settings that are the model's own.

The loader plans its reading from it (tagtrain/loader/input_plan.py), the card check
compares its features with the dataset's, and a recipe hands its features to prepare.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

from pipelines.core.features import FeatureConfig

INPUT_KINDS = ("mel", "harm", "pcm")
# The features each kind of input depends on (a card must match them); a PCM model
# computes its front end itself and needs only the sample rate.
_SPECTRAL = frozenset({"sample_rate", "n_fft", "hop", "log_scale", "pad_mode"})
KIND_FEATURES = {
    "pcm": frozenset({"sample_rate"}),
    "mel": _SPECTRAL | {"n_mels", "f_min", "f_max", "mel_scale", "mel_norm"},
    "harm": _SPECTRAL | {"harmonics", "harmonic_bands"},
}


@dataclass(frozen=True)
class InputSpec:
    """What a model eats.

    kind: "mel" ([B, n_mels, frames]), "harm" ([B, H, bands, frames]) or "pcm" ([B, samples]).
    seconds: training input length; `samples`/`frames` are derived from it.
    features: the model's features (sample rate, FFT, mel front end, log scale); for
    mel/harm inputs the ones the dataset card must match (`card_requirements`). Every
    field of it reads as an attribute of the spec too (`spec.n_mels`, `spec.hop`).
    chunk_level: True when the model sees chunks and evaluation averages over chunks;
    False for song-level models (FCN, CRNN) that see one crop of the track.
    exact_samples: an exact input length in samples (59,049 for the sample-level CNN).
    standardize: what is done to a mel/harm input before the model, as its paper does:
    "none" (the model's own input batch-norm), "band" (per-band mean/std of the training
    split, from the card), or "global" (one (mean, std) pair, `global_stats`, as in MAEST).
    """

    kind: str
    seconds: float
    features: FeatureConfig = FeatureConfig()
    chunk_level: bool = True
    exact_samples: int | None = None
    standardize: str = "band"
    global_stats: tuple[float, float] | None = None

    def __post_init__(self):
        if self.kind not in INPUT_KINDS:
            raise ValueError(f"kind must be one of {INPUT_KINDS}, got {self.kind!r}")
        if not isinstance(self.features, FeatureConfig):
            raise TypeError(f"features must be a FeatureConfig, got {type(self.features).__name__}")

    def with_features(self, **changes) -> InputSpec:
        """This spec with some feature fields changed (e.g. `n_mels=128`)."""
        features = FeatureConfig.from_fields(
            {**self.features.to_dict(), **changes}, "InputSpec.with_features"
        )
        return dataclasses.replace(self, features=features)

    @property
    def samples(self) -> int:
        return self.exact_samples or int(round(self.seconds * self.features.sample_rate))

    @property
    def frames(self) -> int:
        return self.features.num_frames(self.samples)

    def card_requirements(self) -> dict:
        """The card's feature fields this input depends on."""
        names = KIND_FEATURES[self.kind]
        return {k: v for k, v in self.features.to_dict().items() if k in names}

    def to_dict(self) -> dict:
        """Flat: the feature fields, then the model's own."""
        own = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        own.pop("features")
        return {**self.features.to_dict(), **own}

    @classmethod
    def from_dict(cls, d: Mapping) -> InputSpec:
        """From `to_dict`'s flat form."""
        names = set(FeatureConfig.field_names())
        own = {k: v for k, v in d.items() if k not in names}
        if own.get("global_stats") is not None:
            own["global_stats"] = tuple(own["global_stats"])
        features = FeatureConfig.from_fields({k: v for k, v in d.items() if k in names})
        return cls(features=features, **own)


# The feature fields as read-only attributes (spec.n_mels, spec.sample_rate, ...), made
# from FeatureConfig's fields: none is declared on InputSpec a second time.
def _feature_property(name: str) -> property:
    return property(lambda self: getattr(self.features, name), doc=f"`features.{name}` (read-only)")


for _name in FeatureConfig.field_names():
    setattr(InputSpec, _name, _feature_property(_name))
del _name
