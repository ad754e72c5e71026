"""The training augmentation chain: seed 003's online waveform augmentation of PCM training
crops, as the loader makes batches (`--augment` of train/student, RunConfig `augment`). Not
`perturb --augment` (offline: deformed copies of a dataset written as shards, by
pipelines.beam.perturb with the robustness deformations).

Each transform is applied independently with its own probability, in the order listed:

    polarity_inversion  p 0.8  audiomentations PolarityInversion
    noise               p 0.3  Gaussian noise, std 0.3-0.5 x the crop's RMS: AddGaussianSNR with
                               the ratio range as SNR (6.0-10.5 dB; uniform in dB, not in ratio)
    gain                p 0.2  Gain, -20 to -1 dB
    filter              p 0.8  HighPassFilter 200-1200 Hz and LowPassFilter 2.2-4 kHz, each
                               drawn with p on its own (the paper: "each augmentation
                               method is activated independently"); `filters: one_of`
                               is the reference code's OneOf(HighPass, LowPass) with p
    delay               p 0.5  composed here (audiomentations has none), as
                               torchaudio-augmentations' Delay: a delay of 200, 250, ..., 450
                               ms, then (x + 0.5 d) / 2 (the echo at half volume, averaged)
    pitch_shift         p 0.4  PitchShift, +-7 semitones (signalsmith_stretch, ~40 ms per 10 s
                               chunk on one core; librosa_phase_vocoder is similar)
    reverb              p 0.3  sox's reverb effect (the `sox` binary, no shell), as
                               torchaudio-augmentations' Reverb through WavAugment:
                               reverberance, HF damping and room scale each a random integer
                               in [0, 100)

A chain is a list of entries `{transform: NAME, p: ..., PARAM: ...}` (YAML or JSON); missing
parameters take seed 003's values, and only the listed transforms run. `--augment default`
is seed 003's whole chain. Each transform is an `Augmentation` (the registry of named transforms
the robustness deformations share, `pipelines.core.transforms`): adding one is one
subclass with a `kind`, its parameters as fields, and `build` (an audiomentations
transform) or `process` (what it does to float32 PCM); chains then name it.

Seeding: audiomentations draws from the global `random` and `numpy.random` generators. Each
call seeds both from the seed it is given and restores their previous state afterwards, so
a crop's augmentation is a pure function of that seed and nothing else in the process
(shuffles, checkpointed RNG states) is disturbed. The loader derives the seed from
(run seed, epoch, track key) -- see `tagtrain.loader.ShardStream` -- so a worker's stream is
fixed per (seed, epoch, worker) and a resumed epoch re-augments its buffered crops exactly.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import random
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from pipelines.core.transforms import Augmentation, AugmentationError, TransformError, parse
from tagtrain.run.config import ConfigError

PCM_SCALE = 32767.0  # int16 full scale, as in pipelines.core.audio.to_int16/from_int16
DEFAULT = "default"


class AugmentError(ConfigError, AugmentationError):
    """An invalid augmentation chain; the message is one line."""


# --- transforms composed from audiomentations' base class ------------------------------


# audiomentations (with scipy and librosa) takes ~0.6 s to import: only runs that augment
# pay for it, so these classes are made on first use, once per process.


def _waveform_base():
    from audiomentations.core.transforms_interface import BaseWaveformTransform

    return BaseWaveformTransform


@functools.cache
def _make_delay_class():
    class Delay(_waveform_base()):
        """(x + volume · d) / 2, d = x delayed by a multiple of `step_ms` in [min_ms,
        max_ms) (torchaudio-augmentations' Delay, the one seed 003 used)."""

        supports_multichannel = False

        def __init__(self, min_ms=200.0, max_ms=500.0, step_ms=50.0, volume=0.5, p=0.5):
            super().__init__(p)
            self.choices = np.arange(min_ms, max_ms, step_ms)
            self.volume = volume

        def randomize_parameters(self, samples, sample_rate):
            super().randomize_parameters(samples, sample_rate)
            if self.parameters["should_apply"]:
                self.parameters["delay_ms"] = float(random.choice(self.choices))

        def apply(self, samples, sample_rate):
            offset = int(self.parameters["delay_ms"] * sample_rate / 1000.0)
            delayed = np.zeros_like(samples)
            if 0 < offset < samples.shape[-1]:
                delayed[offset:] = samples[:-offset]
            return ((samples + np.float32(self.volume) * delayed) / 2).astype(np.float32)

    return Delay


def sox_reverb(samples: np.ndarray, sample_rate: int, reverberance, damping, room_scale):
    """sox's `reverb` effect on float32 mono PCM, through pipes (no shell, no files)."""
    import subprocess

    raw = ["-t", "f32", "-r", str(int(sample_rate)), "-c", "1"]
    args = ["sox", "-V1", *raw, "-", *raw, "-", "reverb"]
    args += [f"{reverberance:g}", f"{damping:g}", f"{room_scale:g}", "channels", "1"]
    try:
        done = subprocess.run(
            args,
            input=np.ascontiguousarray(samples, np.float32).tobytes(),
            capture_output=True,
            check=True,
            timeout=120,
        )
    except FileNotFoundError:
        raise AugmentError("reverb needs the sox binary on PATH") from None
    except subprocess.CalledProcessError as exc:
        raise RuntimeError(f"sox reverb failed: {exc.stderr.decode(errors='replace')}") from None
    out = np.frombuffer(done.stdout, dtype=np.float32)
    return out[: samples.shape[-1]].copy()


@functools.cache
def _make_reverb_class():
    class SoxReverb(_waveform_base()):
        """sox reverb with reverberance, HF damping and room scale drawn as integers in
        [min, max) (torchaudio.randint, as torchaudio-augmentations' Reverb)."""

        supports_multichannel = False

        def __init__(self, ranges: dict, p=0.3):
            super().__init__(p)
            self.ranges = ranges

        def randomize_parameters(self, samples, sample_rate):
            super().randomize_parameters(samples, sample_rate)
            if self.parameters["should_apply"]:
                for name, (low, high) in self.ranges.items():
                    self.parameters[name] = random.randrange(int(low), max(int(high), int(low) + 1))

        def apply(self, samples, sample_rate):
            values = [self.parameters[name] for name in self.ranges]
            return sox_reverb(samples, sample_rate, *values)

    return SoxReverb


# --- the chain's entries: typed, checked, buildable ------------------------------------


def _check_range(name: str, low: float, high: float) -> None:
    if low > high:
        raise AugmentError(f"{name}: min {low} is above max {high}")


@dataclass(frozen=True)
class PolarityInversion(Augmentation):
    kind: ClassVar[str] = "polarity_inversion"
    p: float = 0.8

    def build(self):
        import audiomentations as am

        return am.PolarityInversion(p=self.p)


@dataclass(frozen=True)
class Noise(Augmentation):
    kind: ClassVar[str] = "noise"
    p: float = 0.3
    min_ratio: float = 0.3  # noise std / signal RMS
    max_ratio: float = 0.5

    def check(self) -> None:
        if self.min_ratio <= 0:
            raise AugmentError(f"noise: min_ratio must be positive, got {self.min_ratio}")
        _check_range("noise ratio", self.min_ratio, self.max_ratio)

    def build(self):
        import audiomentations as am

        return am.AddGaussianSNR(
            min_snr_db=-20.0 * math.log10(self.max_ratio),
            max_snr_db=-20.0 * math.log10(self.min_ratio),
            p=self.p,
        )


@dataclass(frozen=True)
class Gain(Augmentation):
    kind: ClassVar[str] = "gain"
    p: float = 0.2
    min_gain_db: float = -20.0
    max_gain_db: float = -1.0

    def check(self) -> None:
        _check_range("gain", self.min_gain_db, self.max_gain_db)

    def build(self):
        import audiomentations as am

        return am.Gain(min_gain_db=self.min_gain_db, max_gain_db=self.max_gain_db, p=self.p)


FILTER_MODES = ("independent", "one_of")


@dataclass(frozen=True)
class HighOrLowPass(Augmentation):
    kind: ClassVar[str] = "filter"
    p: float = 0.8
    high_pass_min_hz: float = 200.0
    high_pass_max_hz: float = 1200.0
    low_pass_min_hz: float = 2200.0
    low_pass_max_hz: float = 4000.0
    filters: str = "independent"  # or one_of (the reference code)

    def check(self) -> None:
        if min(self.high_pass_min_hz, self.low_pass_min_hz) <= 0:
            raise AugmentError("filter: cutoff frequencies must be positive")
        _check_range("filter high_pass", self.high_pass_min_hz, self.high_pass_max_hz)
        _check_range("filter low_pass", self.low_pass_min_hz, self.low_pass_max_hz)
        if self.filters not in FILTER_MODES:
            raise AugmentError(
                f"filter: filters must be {' or '.join(FILTER_MODES)}, got {self.filters!r}"
            )

    def build(self):
        import audiomentations as am

        if self.filters == "independent":  # each with its own draw of p; both may apply
            return am.Compose(
                [
                    am.HighPassFilter(self.high_pass_min_hz, self.high_pass_max_hz, p=self.p),
                    am.LowPassFilter(self.low_pass_min_hz, self.low_pass_max_hz, p=self.p),
                ]
            )
        # The children always apply once chosen: the OneOf carries the probability.
        return am.OneOf(
            [
                am.HighPassFilter(self.high_pass_min_hz, self.high_pass_max_hz, p=1.0),
                am.LowPassFilter(self.low_pass_min_hz, self.low_pass_max_hz, p=1.0),
            ],
            p=self.p,
        )


@dataclass(frozen=True)
class Delay(Augmentation):
    kind: ClassVar[str] = "delay"
    p: float = 0.5
    min_ms: float = 200.0
    max_ms: float = 500.0  # exclusive: 200, 250, ..., 450 ms
    step_ms: float = 50.0
    volume: float = 0.5

    def check(self) -> None:
        if self.min_ms < 0:
            raise AugmentError(f"delay: min_ms must not be negative, got {self.min_ms}")
        if self.step_ms <= 0:
            raise AugmentError(f"delay: step_ms must be positive, got {self.step_ms}")
        if self.max_ms <= self.min_ms:
            raise AugmentError(f"delay: max_ms {self.max_ms} must be above min_ms {self.min_ms}")

    def build(self):
        return _make_delay_class()(self.min_ms, self.max_ms, self.step_ms, self.volume, p=self.p)


@dataclass(frozen=True)
class PitchShift(Augmentation):
    kind: ClassVar[str] = "pitch_shift"
    p: float = 0.4
    min_semitones: float = -7.0
    max_semitones: float = 7.0
    method: str = "signalsmith_stretch"  # or librosa_phase_vocoder

    def check(self) -> None:
        _check_range("pitch_shift", self.min_semitones, self.max_semitones)
        if self.min_semitones < -24 or self.max_semitones > 24:
            raise AugmentError("pitch_shift: semitones must lie within -24..24")
        if self.method not in ("signalsmith_stretch", "librosa_phase_vocoder"):
            raise AugmentError(
                "pitch_shift: method must be signalsmith_stretch or librosa_phase_vocoder, "
                f"got {self.method!r}"
            )

    def build(self):
        import audiomentations as am

        return am.PitchShift(self.min_semitones, self.max_semitones, self.method, p=self.p)


@dataclass(frozen=True)
class Reverb(Augmentation):
    kind: ClassVar[str] = "reverb"
    p: float = 0.3
    min_reverberance: float = 0.0  # sox reverb's three percentages; max is exclusive
    max_reverberance: float = 100.0
    min_damping: float = 0.0
    max_damping: float = 100.0
    min_room_scale: float = 0.0
    max_room_scale: float = 100.0

    def check(self) -> None:
        for name in ("reverberance", "damping", "room_scale"):
            low, high = getattr(self, f"min_{name}"), getattr(self, f"max_{name}")
            _check_range(f"reverb {name}", low, high)
            if low < 0 or high > 100:
                raise AugmentError(f"reverb: {name} must lie within 0..100")

    def build(self):
        ranges = {
            name: (getattr(self, f"min_{name}"), getattr(self, f"max_{name}"))
            for name in ("reverberance", "damping", "room_scale")
        }
        return _make_reverb_class()(ranges, p=self.p)


# seed 003's chain, in its order (other registered augmentations run only when a chain
# names them).
DEFAULT_CHAIN = ("polarity_inversion", "noise", "gain", "filter", "delay", "pitch_shift", "reverb")


def default_chain() -> list[dict]:
    return [{"transform": name} for name in DEFAULT_CHAIN]


def _parse_entry(entry, index: int, source: str) -> Augmentation:
    where = f"{source}: entry {index + 1}"
    if not isinstance(entry, Mapping) or "transform" not in entry:
        raise AugmentError(f"{where} must be a mapping with a 'transform' name")
    values = {k: v for k, v in entry.items() if k != "transform"}
    try:
        return parse(Augmentation, entry["transform"], values)
    except TransformError as exc:
        raise AugmentError(f"{where}: {exc}") from None


def parse_chain(entries, source: str = "augment") -> tuple:
    """The typed transforms of a chain (list of entries); AugmentError when invalid."""
    if not isinstance(entries, Sequence) or isinstance(entries, str | bytes):
        raise AugmentError(f"{source} must be a list of transforms")
    return tuple(_parse_entry(e, i, source) for i, e in enumerate(entries))


def chain_entries(chain: Sequence) -> list[dict]:
    """Entries with every parameter spelled out (what a run's config.json records)."""
    return [{"transform": spec.kind, **dataclasses.asdict(spec)} for spec in chain]


def read_chain_file(path: str | Path) -> list:
    import yaml

    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise AugmentError(f"cannot read augmentation file {path}: {exc.strerror or exc}") from None
    try:
        return yaml.safe_load(text)
    except Exception as exc:  # noqa: BLE001  (a YAML syntax error: one line)
        raise AugmentError(f"{path} is not valid YAML: {str(exc).splitlines()[0]}") from None


def resolve_chain(value) -> list[dict] | None:
    """A run's `augment` setting -> full entries, or None for no augmentation.

    "" / "none": off; "default": seed 003's chain; any other string: a YAML/JSON file holding a
    list of entries; a list: the entries themselves (as in a saved config.json). An empty
    chain is no augmentation."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none")):
        return None
    if isinstance(value, str):
        if value.strip().lower() == DEFAULT:
            return chain_entries(parse_chain(default_chain(), DEFAULT))
        entries = chain_entries(parse_chain(read_chain_file(value), value))
    else:
        entries = chain_entries(parse_chain(value))
    return entries or None


# --- applying it -----------------------------------------------------------------------


@contextmanager
def seeded_global_rngs(seed: int):
    """Seed `random` and `numpy.random` for a block, then put their states back."""
    py_state, np_state = random.getstate(), np.random.get_state()
    random.seed(seed)
    np.random.seed(seed % 2**32)
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)


def _fired(name: str, transform) -> tuple[str, ...]:
    if name != "filter":
        return (name,) if transform.parameters.get("should_apply") else ()
    kinds = ("high_pass", "low_pass")
    if hasattr(transform, "transform_index"):  # OneOf: which child, if any
        return (kinds[int(transform.transform_index)],) if transform.should_apply else ()
    children = transform.transforms  # independent: every child that drew "apply"
    return tuple(k for k, t in zip(kinds, children) if t.parameters.get("should_apply"))


class TrainingAugmentChain:
    """The training augmentation chain of a run, the callable the loader's `augment` hook takes: (PCM crop, seed) -> augmented crop.

    The crop comes as stored (int16 PCM); the result is float32 at the same scale (int16
    full scale = 32767), so the device input code treats both alike and nothing added by
    gain, noise, delay or reverb is clipped. Transforms are built on first use, in each
    loader worker process."""

    def __init__(self, entries: Sequence[Mapping], sample_rate: int):
        self.chain = parse_chain(entries)
        self.names = tuple(e["transform"] for e in chain_entries(self.chain))
        self.sample_rate = int(sample_rate)
        self._transforms = None

    def __len__(self) -> int:
        return len(self.chain)

    def __getstate__(self):
        return {**self.__dict__, "_transforms": None}  # rebuilt in the receiving process

    def apply(self, pcm: np.ndarray, seed: int) -> tuple[np.ndarray, tuple[str, ...]]:
        """The augmented crop and the names of the transforms that fired, in order."""
        if self._transforms is None:
            self._transforms = [spec.build() for spec in self.chain]
        x = np.asarray(pcm, dtype=np.float32) / np.float32(PCM_SCALE)
        fired = []
        with seeded_global_rngs(seed):
            for name, transform in zip(self.names, self._transforms):
                x = transform(x, self.sample_rate)
                fired.extend(_fired(name, transform))
        return (x * np.float32(PCM_SCALE)).astype(np.float32, copy=False), tuple(fired)

    def __call__(self, pcm: np.ndarray, seed: int) -> np.ndarray:
        return self.apply(pcm, seed)[0]

    def describe(self) -> str:
        return ", ".join(f"{name} p={spec.p:g}" for name, spec in zip(self.names, self.chain))
