"""The checks `load_run` makes on a checkpoint before it builds anything from it.

A checkpoint (or a run directory someone hands over) is untrusted input: its vocabulary,
input plan and normalisation decide what is allocated and computed (a plan with a 2 GHz
sample rate or a million-band mel asks for gigabytes per window; width 40 for about 24 GB
of weights). Each is checked against the registry's schema and sane ranges here, and the
model's parameter count, measured on the meta device (no memory), against a bound stated
from the registry's reference count. Every refusal is one line (CheckpointError).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from pipelines.core.features import FeatureConfig
from tagtrain.loader.input_plan import STANDARDIZE
from tagtrain.models.registry import INPUT_KINDS, create_model, get_entry
from tagtrain.run.checkpoint import CheckpointError

MAX_TAGS = 100_000
# Audio rates the decoders and resamplers handle; a front end outside them is no model of
# ours (the zoo uses 16 kHz and 22.05 kHz).
SAMPLE_RATES = (1_000, 192_000)
# Sizes a front end may ask for: FFT and hop lengths (samples), mel bands, harmonics.
FEATURE_BOUNDS = {
    "n_fft": 1 << 16,
    "hop": 1 << 16,
    "n_mels": 2048,
    "harmonics": 64,
    "harmonic_bands": 2048,
}
# The longest model input (one window), in seconds of audio.
MAX_INPUT_SECONDS = 600
MEMBERS = ("mel.npy", "harm.npy", "pcm.npy")
DEVICE_FEATURES = (None, "mel", "harm")
# A run's model may have at most this many times the parameters of the registry's
# reference (its count at width 1; measured when the registry states none), and never
# more than MAX_PARAMETERS (2 GB of float32 weights).
PARAMETER_HEADROOM = 64
MAX_PARAMETERS = 500_000_000
REFERENCE_TAGS = 50


def checked_vocabulary(values, source: str) -> list[str]:
    if not isinstance(values, (list, tuple)) or not 0 < len(values) <= MAX_TAGS:
        raise CheckpointError(f"{source}: its vocabulary is not a list of 1 to {MAX_TAGS} tags")
    return [str(t) for t in values]


def checked_plan(values, fields: tuple[str, ...], source: str) -> dict:
    """The checkpoint's input plan (its known fields) when every part is in range."""
    if not isinstance(values, Mapping):
        raise CheckpointError(f"{source}: its input plan is not a mapping")
    plan = {k: values[k] for k in fields if k in values}
    kind = plan.get("kind")
    if kind not in INPUT_KINDS:
        raise CheckpointError(
            f"{source}: input plan kind {kind!r} is not one of {', '.join(INPUT_KINDS)}"
        )
    if plan.get("member") not in MEMBERS:
        raise CheckpointError(f"{source}: input plan member {plan.get('member')!r} is unknown")
    if plan.get("device_feature") not in DEVICE_FEATURES:
        raise CheckpointError(
            f"{source}: input plan device_feature {plan.get('device_feature')!r} is unknown"
        )
    if plan.get("standardize", "band") not in STANDARDIZE:
        raise CheckpointError(f"{source}: input plan standardize {plan['standardize']!r}")
    features = _checked_features(plan.get("features"), source)
    length = plan.get("length")
    if not isinstance(length, int) or isinstance(length, bool) or length < 1:
        raise CheckpointError(f"{source}: input plan length must be a positive int")
    per_second = features.sample_rate
    if plan["member"] != "pcm.npy":
        per_second = features.sample_rate / features.hop
    if length > MAX_INPUT_SECONDS * per_second:
        raise CheckpointError(
            f"{source}: input plan length {length} is over {MAX_INPUT_SECONDS} s of input"
        )
    for name in ("mean", "std"):
        plan[name] = _finite_numbers(plan.get(name), FEATURE_BOUNDS["n_mels"], name, source)
    plan["global_stats"] = _finite_numbers(plan.get("global_stats"), 2, "global_stats", source)
    return plan


def _checked_features(values, source: str) -> FeatureConfig:
    if not isinstance(values, Mapping):
        raise CheckpointError(f"{source}: input plan features are not a mapping")
    rate = values.get("sample_rate")
    low, high = SAMPLE_RATES
    if not isinstance(rate, int) or isinstance(rate, bool) or not low <= rate <= high:
        raise CheckpointError(
            f"{source}: input plan sample_rate {rate!r} Hz is not in {low}..{high} Hz"
        )
    for name, bound in FEATURE_BOUNDS.items():
        value = values.get(name)
        if value is not None and (not isinstance(value, (int, float)) or value > bound):
            raise CheckpointError(f"{source}: input plan {name} {value!r} is over {bound}")
    try:
        return FeatureConfig.from_dict(dict(values))
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{source}: input plan features: {exc}") from None


def _finite_numbers(values, most: int, name: str, source: str):
    if values is None:
        return None
    if not isinstance(values, (list, tuple)) or len(values) > most:
        raise CheckpointError(f"{source}: {name} is not a list of at most {most} numbers")
    if not all(_finite(v) for v in values):
        raise CheckpointError(f"{source}: {name} holds a value that is not a finite number")
    return tuple(float(v) for v in values)


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def checked_normalisation(values, source: str) -> dict:
    if not isinstance(values, Mapping):
        raise CheckpointError(f"{source}: its normalisation is not a mapping")
    norm = dict(values)
    for name in ("mean", "std"):
        numbers = _finite_numbers(norm.get(name), FEATURE_BOUNDS["n_mels"], name, source)
        norm[name] = None if numbers is None else list(numbers)
    return norm


def parameter_bound(model: str) -> int:
    entry = get_entry(model)
    reference = entry.reference_params or _parameters(model, REFERENCE_TAGS, 1.0)
    return min(PARAMETER_HEADROOM * reference, MAX_PARAMETERS)


def check_parameter_count(config, tags: int, source: str) -> None:
    """CheckpointError when the run's model would be over its bound (counted without
    allocating: built on the meta device)."""
    count = _parameters(config.model, tags, config.width)
    bound = parameter_bound(config.model)
    if count > bound:
        raise CheckpointError(
            f"{source}: {config.model} at width {config.width:g} with {tags} tags has "
            f"{count:,} parameters, over its bound of {bound:,}"
        )


def _parameters(model: str, tags: int, width: float) -> int:
    with torch.device("meta"):
        built = create_model(model, tags, seed=None, width=width)
    return sum(p.numel() for p in built.parameters())
