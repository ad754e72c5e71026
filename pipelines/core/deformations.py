"""Robustness deformations (MUDA through JAMS) with fixed parameters and plain-JSON provenance.

One small frozen dataclass per deformation; `apply(pcm, sample_rate, rng)` returns the
deformed float32 mono PCM and its provenance:

    {"name": "pitch_+1", "type": "pitch", "params": {"semitones": 1.0},
     "history": [...muda's deformation history, plain JSON...], "versions": {...}}

The paper's protocol (`paper_set()`, eight deformations):

| name                 | what                                                              |
|----------------------|-------------------------------------------------------------------|
| pitch_-1, pitch_+1   | rubberband pitch shift by -1 / +1 semitone (muda PitchShift)      |
| stretch_rate_0.707   | rubberband time stretch, rate 2^-1/2: slower, lasts sqrt(2) longer |
| stretch_rate_1.414   | rate 2^1/2: faster, lasts 1/sqrt(2) as long (muda TimeStretch)    |
| drc_music_standard   | sox compand, Dolby E "music standard" (muda DynamicRangeCompression) |
| drc_speech           | sox compand, Dolby E "speech"                                     |
| noise_0.1, noise_0.4 | (1 - a) x + a n, x and white noise n peak-normalised (muda)       |

`rate` follows muda/rubberband (`--tempo`): rate > 1 plays faster, so the output lasts
duration / rate. Noise is mixed as muda's ColoredNoise does: signal and noise each
peak-normalised, then (1 - a) x + a n, so the noise peak is a fixed fraction of the signal
peak. `scale="rms"` (noise at the track's RMS: a fixed SNR of 20 log10((1 - a) / a) dB)
and `scale="absolute"` (seed 000's script: x + a N(0, 1)) are named options
(see muda_compat.AdditiveNoise and docs/FIDELITY.md).

Randomness (noise samples, background-clip offsets) comes only from the `rng` passed to
`apply`; `track_rng(seed, key, name)` seeds it from hashlib, so a re-run gives the same
bytes. rubberband and sox are deterministic. Custom sets come from YAML/JSON
(`load_deformations`); `augmentations` draws random ones for offline training augmentation.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import ClassVar

import numpy as np
import yaml

from pipelines.core import muda_compat
from pipelines.core.muda_compat import DRC_PRESETS, NOISE_COLORS, NOISE_SCALES, BaseTransformer
from pipelines.core.transforms import (
    REGISTRY,
    Transform,
    TransformError,
    check_parameters,
    lookup,
    number,
)

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
MAX_STRETCH = 4.0  # rubberband handles more, but beyond 4x a "deformed copy" is another piece
MAX_SEMITONES = 12.0


class DeformationError(TransformError):
    """A bad deformation or deformation set; the message is one line."""


def _number(value, what: str) -> float:
    return number(value, what, DeformationError)


@dataclass(frozen=True, kw_only=True)
class Deformation(Transform):
    """Base: subclasses add their parameters as fields and say how to run muda. A subclass
    with a `kind` is registered under it (the shared registry, `pipelines.core.transforms`):
    adding a deformation is one class."""

    family: ClassVar[str] = "deformation"
    noun: ClassVar[str] = "deformation type"
    error: ClassVar[type[TransformError]] = DeformationError
    name: str = ""

    def __post_init__(self):
        self.validate()
        if not self.name:
            object.__setattr__(self, "name", self.default_name())
        if not isinstance(self.name, str) or not NAME_PATTERN.fullmatch(self.name):
            raise DeformationError(
                f"deformation name {self.name!r} must be letters, digits, '.', '_', '+', '-'"
            )

    def default_name(self) -> str:
        raise NotImplementedError

    def params(self) -> dict:
        out = {}
        for f in fields(self):
            if f.name != "name":
                value = getattr(self, f.name)
                out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    def spec(self) -> dict:
        """The YAML/JSON entry that makes this deformation again."""
        return {"type": self.kind, "name": self.name, **self.params()}

    def muda_step(self, rng: np.random.Generator, jam) -> tuple[BaseTransformer, dict]:
        """(muda transformer, fixed state) for the track packed in `jam`; any randomness
        is drawn from `rng` here and written into the state, so the history replays."""
        raise NotImplementedError

    def apply(
        self, pcm: np.ndarray, sample_rate: int, rng: np.random.Generator
    ) -> tuple[np.ndarray, dict]:
        """float32 mono -> deformed float32 mono, plus provenance (plain JSON).

        The output may exceed [-1, 1] slightly (noise, DRC make-up gain); to_int16 clips.
        """
        if not np.issubdtype(np.asarray(pcm).dtype, np.floating):
            raise ValueError("expected float PCM in [-1, 1]; convert int16 with audio.from_int16")
        pcm = np.asarray(pcm, dtype=np.float32)
        if pcm.ndim != 1 or len(pcm) == 0:
            raise ValueError(f"expected non-empty mono PCM, got shape {pcm.shape}")
        if sample_rate <= 0:
            raise ValueError(f"sample rate must be positive, got {sample_rate}")
        jam = muda_compat.pack(pcm, sample_rate)
        transformer, state = self.muda_step(rng, jam)
        out = muda_compat.run(transformer, jam, state)
        provenance = {
            "name": self.name,
            "type": self.kind,
            "params": self.params(),
            "history": muda_compat.history_of(out),
            "versions": muda_compat.versions_of(out),
        }
        return muda_compat.audio_of(out), provenance


@dataclass(frozen=True)
class PitchShift(Deformation):
    semitones: float
    kind: ClassVar[str] = "pitch"

    def validate(self):
        value = _number(self.semitones, "pitch: semitones")
        if abs(value) > MAX_SEMITONES:
            raise DeformationError(f"pitch: semitones must be within ±{MAX_SEMITONES:g}")
        object.__setattr__(self, "semitones", value)

    def default_name(self):
        return f"pitch_{self.semitones:+g}"

    def muda_step(self, rng, jam):
        # An explicit state skips muda's tuning estimate (about 4x the cost of the shift
        # itself); muda uses the tuning only to relabel key/chord annotations, absent here.
        transformer = muda_compat.muda.deformers.PitchShift(n_semitones=self.semitones)
        return transformer, {"n_semitones": self.semitones}


@dataclass(frozen=True)
class TimeStretch(Deformation):
    rate: float
    kind: ClassVar[str] = "stretch"

    def validate(self):
        value = _number(self.rate, "stretch: rate")
        if not 1 / MAX_STRETCH <= value <= MAX_STRETCH:
            raise DeformationError(
                f"stretch: rate must be within [{1 / MAX_STRETCH:g}, {MAX_STRETCH:g}] "
                "(rate > 1 is faster/shorter)"
            )
        object.__setattr__(self, "rate", value)

    def default_name(self):
        return f"stretch_rate_{self.rate:.3f}"

    def muda_step(self, rng, jam):
        transformer = muda_compat.muda.deformers.TimeStretch(rate=self.rate)
        return transformer, {"rate": self.rate}


@dataclass(frozen=True)
class DynamicRangeCompression(Deformation):
    preset: str
    kind: ClassVar[str] = "drc"

    def validate(self):
        if self.preset not in DRC_PRESETS:
            raise DeformationError(
                f"drc: unknown preset {self.preset!r}; expected one of {', '.join(DRC_PRESETS)}"
            )

    def default_name(self):
        return "drc_" + self.preset.replace(" ", "_")

    def muda_step(self, rng, jam):
        transformer = muda_compat.muda.deformers.DynamicRangeCompression(preset=self.preset)
        return transformer, {"preset": self.preset}


def _check_weight(kind: str, a) -> float:
    value = _number(a, f"{kind}: a")
    if not 0.0 <= value <= 1.0:
        raise DeformationError(f"{kind}: a must be within [0, 1], got {value:g}")
    return value


@dataclass(frozen=True)
class Noise(Deformation):
    """(1 - a) x + a n, n white/pink/brownian noise; x and n peak-normalised (muda), or
    n at the RMS of x (`scale="rms"`), or x + a N(0, 1) (`scale="absolute"`)."""

    a: float
    color: str = "white"
    scale: str = "peak"
    kind: ClassVar[str] = "noise"

    def validate(self):
        object.__setattr__(self, "a", _check_weight("noise", self.a))
        color = "brownian" if self.color == "brown" else self.color
        if color not in NOISE_COLORS:
            raise DeformationError(
                f"noise: unknown color {self.color!r}; expected one of {', '.join(NOISE_COLORS)}"
            )
        object.__setattr__(self, "color", color)
        if self.scale not in NOISE_SCALES:
            raise DeformationError(
                f"noise: unknown scale {self.scale!r}; expected one of {', '.join(NOISE_SCALES)}"
            )

    def default_name(self):
        color = "" if self.color == "white" else f"{self.color}_"
        scale = "" if self.scale == "peak" else f"{self.scale}_"
        return f"noise_{scale}{color}{self.a:g}"

    def snr_db(self) -> float:
        """The SNR of the mix under `scale="rms"` (infinite at a = 0); under "peak" it
        depends on the crest factors of track and noise."""
        return 20 * math.log10((1 - self.a) / self.a) if self.a > 0 else math.inf

    def muda_step(self, rng, jam):
        seed = int(rng.integers(2**63))
        transformer = muda_compat.AdditiveNoise(
            color=self.color, weight=self.a, seed=seed, scale=self.scale
        )
        return transformer, next(transformer.states(jam))


@dataclass(frozen=True)
class Clipping(Deformation):
    """Clip to `limit` times the signal's range (muda's Clipping)."""

    limit: float
    kind: ClassVar[str] = "clip"

    def validate(self):
        value = _number(self.limit, "clip: limit")
        if not 0.0 < value < 1.0:
            raise DeformationError(f"clip: limit must be within (0, 1), got {value:g}")
        object.__setattr__(self, "limit", value)

    def default_name(self):
        return f"clip_{self.limit:g}"

    def muda_step(self, rng, jam):
        transformer = muda_compat.Clipping(clip_limit=self.limit)
        return transformer, next(transformer.states(jam))


@dataclass(frozen=True)
class BackgroundNoise(Deformation):
    """muda's BackgroundNoise: a random excerpt of one of `files` (chosen per track), mixed
    as (1 - a) x + a n after muda peak-normalises both x and n."""

    files: tuple[str, ...]
    a: float
    kind: ClassVar[str] = "background"

    def validate(self):
        files = (self.files,) if isinstance(self.files, str) else self.files
        if not isinstance(files, (list, tuple)) or not files:
            raise DeformationError("background: files must be a non-empty list of audio files")
        for path in files:
            if not isinstance(path, str) or not Path(path).is_file():
                raise DeformationError(f"background: noise file not found: {path}")
        object.__setattr__(self, "files", tuple(files))
        object.__setattr__(self, "a", _check_weight("background", self.a))

    def default_name(self):
        return f"background_{self.a:g}"

    def muda_step(self, rng, jam):
        chosen = self.files[int(rng.integers(len(self.files)))]
        transformer = muda_compat.FixedBackgroundNoise(
            files=[chosen], weight=self.a, rng=int(rng.integers(2**32))
        )
        try:
            return transformer, next(transformer.states(jam))
        except RuntimeError as exc:  # muda: the noise file is shorter than the track
            raise DeformationError(f"background: {exc}") from None


# Every deformation type by its `type` name (the registry's view, filled as classes are
# defined).
KINDS = REGISTRY.setdefault(Deformation.family, {})


def paper_set() -> list[Deformation]:
    """The eight deformations of the robustness protocol, in a fixed order."""
    return [
        PitchShift(-1),
        PitchShift(+1),
        TimeStretch(2**-0.5),
        TimeStretch(2**0.5),
        DynamicRangeCompression("music standard"),
        DynamicRangeCompression("speech"),
        Noise(0.1),
        Noise(0.4),
    ]


def deformation_seed(seed: int, key: str, name: str) -> int:
    """A 64-bit seed from (run seed, track key, deformation name); stable across runs."""
    digest = hashlib.sha256(f"{seed}\0{key}\0{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def track_rng(seed: int, key: str, name: str) -> np.random.Generator:
    return np.random.default_rng(deformation_seed(seed, key, name))


def deform_track(
    deformation: Deformation, pcm: np.ndarray, sample_rate: int, *, seed: int, key: str
) -> tuple[np.ndarray, dict]:
    """`deformation.apply` with the rng for (seed, key, deformation name)."""
    return deformation.apply(pcm, sample_rate, track_rng(seed, key, deformation.name))


def parse_deformation(entry: dict, base_dir: Path | None = None) -> Deformation:
    """One YAML/JSON entry ({"type": ..., params..., optional "name"}) -> Deformation."""
    if not isinstance(entry, dict):
        raise DeformationError(f"expected a mapping with a 'type', got {entry!r}")
    entry = dict(entry)
    kind = entry.pop("type", None)
    cls = lookup(Deformation, kind)
    check_parameters(cls, entry)
    if kind == "background" and base_dir is not None:
        files = entry["files"]
        files = [files] if isinstance(files, str) else files
        if isinstance(files, list):
            entry["files"] = [
                str(base_dir / f) if isinstance(f, str) and not Path(f).is_absolute() else f
                for f in files
            ]
    return cls(**entry)


def parse_deformations(entries, base_dir: Path | None = None) -> list[Deformation]:
    """A list of entries; the string "paper" stands for the paper's eight."""
    if isinstance(entries, dict) and set(entries) == {"deformations"}:
        entries = entries["deformations"]
    if not isinstance(entries, list) or not entries:
        raise DeformationError(
            "expected a non-empty list of deformations (or a mapping {deformations: [...]})"
        )
    out: list[Deformation] = []
    for i, entry in enumerate(entries, 1):
        if entry == "paper":
            out.extend(paper_set())
            continue
        try:
            out.append(parse_deformation(entry, base_dir))
        except DeformationError as exc:
            raise DeformationError(f"deformation #{i}: {exc}") from None
        except TypeError as exc:  # a field of the wrong shape reaching the dataclass
            raise DeformationError(f"deformation #{i}: {exc}") from None
    seen: set[str] = set()
    for d in out:
        if d.name in seen:
            raise DeformationError(f"two deformations are named {d.name!r}; give one a 'name'")
        seen.add(d.name)
    return out


def load_deformations(spec: str) -> list[Deformation]:
    """The deformation set `spec`: "paper", or the path of a YAML/JSON file.

    The file holds a list (or {deformations: [...]}) of entries such as
    `{type: noise, a: 0.2, color: pink}`, or the string "paper" for the paper's eight.
    Relative background-noise paths are relative to the file. Errors are one line.
    """
    if spec == "paper":
        return paper_set()
    path = Path(spec)
    if not path.is_file():
        raise DeformationError(
            f"deformation set {spec!r} is neither 'paper' nor an existing YAML/JSON file"
        )
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() == ".json":
            entries = json.loads(text)
        else:
            entries = yaml.safe_load(text)
    except json.JSONDecodeError as exc:
        raise DeformationError(f"{spec}: invalid JSON: {exc}") from None
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise DeformationError(f"{spec}: invalid YAML: {problem}{at}") from None
    try:
        return parse_deformations(entries, path.parent)
    except DeformationError as exc:
        raise DeformationError(f"{spec}: {exc}") from None


AUGMENT_KINDS = ("pitch", "stretch", "drc", "noise", "clip")


def random_augmentation(rng: np.random.Generator) -> Deformation:
    """One deformation with random parameters (rounded, so name and params say exactly what
    was applied): pitch 0.25-2 semitones up or down, stretch rate 2^(±0.05-0.5), any DRC
    preset, white/pink/brownian noise at a in [0.02, 0.3], clipping at 50-95 % of the range.
    """
    kind = AUGMENT_KINDS[int(rng.integers(len(AUGMENT_KINDS)))]
    sign = 1.0 if rng.random() < 0.5 else -1.0  # shifts and stretches never near identity
    if kind == "pitch":
        return PitchShift(round(sign * float(rng.uniform(0.25, 2.0)), 2))
    if kind == "stretch":
        return TimeStretch(round(2 ** (sign * float(rng.uniform(0.05, 0.5))), 3))
    if kind == "drc":
        return DynamicRangeCompression(DRC_PRESETS[int(rng.integers(len(DRC_PRESETS)))])
    if kind == "noise":
        color = NOISE_COLORS[int(rng.integers(len(NOISE_COLORS)))]
        return Noise(round(float(rng.uniform(0.02, 0.3)), 3), color=color)
    return Clipping(round(float(rng.uniform(0.5, 0.95)), 2))


def augmentations(seed: int, key: str, k: int) -> list[Deformation]:
    """K random deformations for one track, the same on every run. Names can repeat (two
    draws of one DRC preset); number the copies, e.g. f"{key}.aug{i}"."""
    rng = track_rng(seed, key, "augment")
    return [random_augmentation(rng) for _ in range(k)]


def augment_track(
    pcm: np.ndarray, sample_rate: int, *, seed: int, key: str, k: int
) -> list[tuple[np.ndarray, dict]]:
    """The K augmented copies of one track; copy i draws its noise from (seed, key, "aug{i}")."""
    return [
        d.apply(pcm, sample_rate, track_rng(seed, key, f"aug{i}:{d.name}"))
        for i, d in enumerate(augmentations(seed, key, k))
    ]
