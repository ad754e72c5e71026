"""What the model eats and how it is made: `plan_input` checks the card against the
model's `InputSpec` and decides whether the loader reads a stored feature (mel, harmonic
tensor, PCM) or PCM turned into the model's feature on the training device."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

from pipelines.core.card import CardError, check_features, stored_features
from pipelines.core.features import FeatureConfig
from tagtrain.models.registry import InputSpec

STANDARDIZE = ("none", "band", "global")


@dataclass(frozen=True)
class InputPlan:
    """How the model input is made from the shards.

    member: the shard member read ("mel.npy", "harm.npy" or "pcm.npy").
    length: crop length along the member's last (time) axis: frames, or samples.
    device_feature: None, or "mel"/"harm" to compute from the PCM crop on the device.
    features: the model's feature configuration (for device computation).
    mean/std: per-band normalisation (card mel_stats), or None.
    standardize: "band" (per-band mean/std: `mean`/`std`), "global" (one (mean, std)
    pair: `global_stats`) or "none" (the model's own input normalisation), from the
    model's InputSpec.
    """

    kind: str
    member: str
    length: int
    chunk_level: bool
    device_feature: str | None
    features: dict
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    standardize: str = "band"
    global_stats: tuple[float, float] | None = None

    @property
    def feature_config(self) -> FeatureConfig:
        return FeatureConfig.from_dict(self.features)


def plan_input(
    card: Mapping, spec: InputSpec, source: str = "dataset", from_pcm: bool = False
) -> InputPlan:
    """See `plan_reading`; the plan also carries the spec's standardisation."""
    plan = plan_reading(card, spec, source, from_pcm)
    standardize = getattr(spec, "standardize", "band")
    if standardize not in STANDARDIZE:
        raise CardError(f"standardize must be one of {STANDARDIZE}, not {standardize!r}")
    global_stats = getattr(spec, "global_stats", None)
    if standardize == "global" and (global_stats is None or len(global_stats) != 2):
        raise CardError("standardize 'global' needs global_stats (mean, std)")
    stats = None if global_stats is None else tuple(float(v) for v in global_stats)
    return dataclasses.replace(plan, standardize=standardize, global_stats=stats)


def with_standardize(plan: InputPlan, standardize: str) -> InputPlan:
    """The plan with the run's `standardize` over the model's (RunConfig.standardize; seed
    002's "zero-mean and unit-var"). "global" without the model's own pair takes it from
    the card's per-band statistics (the mean and variance over all bands)."""
    if standardize not in STANDARDIZE:
        raise CardError(f"standardize must be one of {STANDARDIZE}, not {standardize!r}")
    stats = plan.global_stats
    if standardize == "global" and stats is None:
        if plan.mean is None or plan.std is None:
            raise CardError("standardize 'global' needs the card's mel_stats (none usable)")
        n = len(plan.mean)
        mean = sum(plan.mean) / n
        second = sum(s * s + m * m for m, s in zip(plan.mean, plan.std)) / n
        stats = (mean, max(second - mean * mean, 0.0) ** 0.5)
    return dataclasses.replace(plan, standardize=standardize, global_stats=stats)


def plan_reading(
    card: Mapping, spec: InputSpec, source: str = "dataset", from_pcm: bool = False
) -> InputPlan:
    """Check the card against the model's input and decide how to feed it.

    from_pcm: always read PCM (computing a mel/harmonic input on the device), e.g. for
    waveform augmentation, even when the card stores the model's feature.
    Raises CardError (one line) when the shards cannot feed the model: a stored feature
    with other settings and no PCM at the model's sample rate to recompute it from."""
    stored = stored_features(card)
    needs = spec.card_requirements()
    features = spec.features.to_dict()  # the model's, which the card's must match
    if spec.kind == "pcm":
        if "pcm" not in stored:
            raise CardError(f"{source} stores {list(stored)}, the model needs pcm")
        check_features(card, needs, source)
        return InputPlan(
            "pcm", "pcm.npy", spec.samples, spec.chunk_level, None, features, None, None
        )

    mismatch = None
    if spec.kind in stored and not from_pcm:
        try:
            check_features(card, needs, source)
        except CardError as exc:
            mismatch = exc
        else:
            mean, std = _card_stats(card, spec)
            member = f"{spec.kind}.npy"
            return InputPlan(
                spec.kind, member, spec.frames, spec.chunk_level, None, features, mean, std
            )
    if "pcm" in stored and card["features"].get("sample_rate") == spec.sample_rate:
        # Recompute the model's feature from PCM with the pipeline's own function. The
        # card's statistics describe the card's mel: they apply only if that matches.
        mean, std = _card_stats(card, spec) if _matches(card, needs) else (None, None)
        return InputPlan(
            spec.kind, "pcm.npy", spec.samples, spec.chunk_level, spec.kind, features, mean, std
        )
    if mismatch is not None:
        raise mismatch
    if from_pcm:
        raise CardError(
            f"{source} stores {list(stored)}; waveform input needs pcm at {spec.sample_rate} Hz"
        )
    raise CardError(
        f"{source} stores {list(stored)}; the model needs {spec.kind} "
        f"(or pcm at {spec.sample_rate} Hz to compute it)"
    )


def _matches(card: Mapping, needs: Mapping) -> bool:
    try:
        check_features(card, needs)
    except CardError:
        return False
    return True


def _card_stats(card: Mapping, spec: InputSpec):
    stats = card.get("mel_stats")
    if spec.kind != "mel" or not stats:
        return None, None
    mean, std = stats.get("mean"), stats.get("std")
    if not mean or not std or len(mean) != spec.n_mels or len(std) != spec.n_mels:
        return None, None
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)
