"""MUDA 0.4.1 on this stack: thin fixes, a few extra transformers, and the JAMS round trip.

Fixes (applied once, on import of this module; each replaces one muda module function):

- `muda.deformers.colorednoise.noise_generator`: `np.fft.irfft` without `n=` returns one
  sample fewer on odd-length audio, so ColoredNoise fails to broadcast. Same filter, `n=`.
- `muda.deformers.background.slice_clip`: calls `librosa.resample` and
  `librosa.util.fix_length` positionally; both are keyword-only since librosa 0.10.
- `muda.deformers.sox.drc`: sox dithers its 16-bit output with a fresh random seed on
  every run, so DRC was not repeatable; `-R` (sox's repeatable mode) fixes the seed.
  `-V1` silences the warnings muda's misplaced `-q` does not.
- importing muda and jams warns that `pkg_resources` is deprecated (setuptools<81 is
  pinned, so it works); the warning is silenced here, once, instead of in every caller.

muda itself works with the modern `soundfile` (0.14) and numpy 2.x once scripts/setup.sh has
reinstalled soundfile after muda's obsolete `pysoundfile` dependency.

Extra transformers (muda `BaseTransformer`s, so they go through muda's `_transform` and
leave the same kind of history entry as muda's own):

- `AdditiveNoise`: x_mixed = (1 - a) x + a n. Default scaling "peak" is muda's
  ColoredNoise exactly (x and n each peak-normalised to 1 before the mix), with our seeds
  and one fixed weight; "rms" scales n to the RMS of x instead (a fixed SNR of
  20 log10((1 - a) / a) dB on every track, not what the papers ran); "absolute" is
  seed 000's robustness script, x + a n with n ~ N(0, 1) and no normalisation.
- `FixedBackgroundNoise`: muda's BackgroundNoise at one weight instead of a random range.
- `Clipping`: a backport of muda's (post-0.4.1) `Clipping`: clip to
  [clip_limit * min(y), clip_limit * max(y)].

The round trip: `pack` puts PCM into a JAMS sandbox, `run` applies one transformer with a
state fixed beforehand (as `muda.replay` does: randomness comes from our seeds, and no
tuning estimate runs inside muda), `audio_of` and `history_of` read the result back;
`replay` re-applies a recorded history.
"""

from __future__ import annotations

import warnings

import numpy as np
import soundfile as sf

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=".*pkg_resources is deprecated.*")
    import jams
    import librosa
    import muda
    from muda.base import BaseTransformer
    from muda.deformers import background, colorednoise
    from muda.deformers import sox as muda_sox

NOISE_COLORS = tuple(colorednoise.NOISE_TYPES)  # ("white", "pink", "brownian")
DRC_PRESETS = tuple(muda.deformers.PRESETS)


def shape_noise(white: np.ndarray, color: str) -> np.ndarray:
    """muda's spectral noise colouring (1/f^0.5 amplitude for pink, 1/f for brownian),
    returning exactly len(white) samples."""
    n_frames = len(white)
    exponents = {"white": 0.0, "pink": -0.5, "brownian": -1.0}
    if color not in exponents:
        raise ValueError(f"unknown noise color {color!r}; expected one of {NOISE_COLORS}")
    values = np.linspace(1, n_frames * 0.5 + 1, n_frames // 2 + 1)
    return np.fft.irfft(np.fft.rfft(white) * values ** exponents[color], n=n_frames)


def noise_generator(y, sr, color, rng):
    """Drop-in for muda.deformers.colorednoise.noise_generator (fixes odd lengths)."""
    return shape_noise(rng.randn(len(y)), color)


def slice_clip(filename, start, stop, n_samples, sr, mono=True):
    """Drop-in for muda.deformers.background.slice_clip (librosa >= 0.10 keywords)."""
    with sf.SoundFile(str(filename), mode="r") as soundf:
        soundf.seek(start)
        y = soundf.read(stop - start).T
        file_rate = soundf.samplerate
    if mono:
        y = librosa.to_mono(y)
    y = librosa.resample(y, orig_sr=file_rate, target_sr=sr)
    return librosa.util.fix_length(y, size=n_samples)


_run_sox = vars(muda_sox)["__sox"]  # muda's sox runner: temp WAVs, then `sox IN OUT -q ARGS`


def drc(y, sr, preset):
    """Drop-in for muda.deformers.sox.drc: the same compand call plus `-R`, which seeds the
    dither sox adds on writing 16-bit output, so that a re-run gives the same bytes, and
    `-V1`, which does what muda's `-q` (ignored where muda puts it) meant: no per-track
    "clipped N samples" warnings, errors still reported."""
    return _run_sox(y, sr, "-V1", "-R", "compand", *muda_sox.PRESETS[preset])


def install() -> None:
    """Apply the fixes (idempotent; done on import)."""
    colorednoise.noise_generator = noise_generator
    background.slice_clip = slice_clip
    muda_sox.drc = drc


install()


def rms(x: np.ndarray) -> float:
    # float32 BLAS dot: ~1e-4 relative error, far inside what a level needs, and 10x faster
    # than a float64 copy of a whole track.
    x = np.ascontiguousarray(x, dtype=np.float32)
    return float(np.sqrt(np.dot(x, x) / len(x))) if len(x) else 0.0


NOISE_SCALES = ("peak", "rms", "absolute")


def peak_normalised(x: np.ndarray) -> np.ndarray:
    """x / max|x| (librosa.util.normalize's default); silence stays silence."""
    peak = float(np.max(np.abs(x))) if len(x) else 0.0
    return x / np.float32(peak) if peak > 0 else x


class AdditiveNoise(BaseTransformer):
    """White/pink/brownian noise n mixed into x; see the module docstring for `scale`.

    "peak" (muda's ColoredNoise): (1 - w) x/max|x| + w n/max|n|, so the noise's peak is a
    fixed fraction of the signal's peak whatever its crest factor (and the track comes out
    peak-normalised, as muda leaves it). The noise comes from numpy's PCG64 seeded with
    `seed`.
    """

    def __init__(self, color="white", weight=0.1, seed=0, scale="peak"):
        BaseTransformer.__init__(self)
        if color not in NOISE_COLORS:
            raise ValueError(f"unknown noise color {color!r}; expected one of {NOISE_COLORS}")
        if scale not in NOISE_SCALES:
            raise ValueError(f"unknown noise scale {scale!r}; expected one of {NOISE_SCALES}")
        self.color = color
        self.weight = float(weight)
        self.seed = int(seed)
        self.scale = scale

    def states(self, jam):
        yield dict(color=self.color, weight=self.weight, seed=self.seed, scale=self.scale)

    @staticmethod
    def audio(mudabox, state):
        y = np.asarray(mudabox._audio["y"], dtype=np.float32)
        noise = np.random.default_rng(state["seed"]).standard_normal(len(y), dtype=np.float32)
        if state["color"] != "white":
            noise = shape_noise(noise, state["color"]).astype(np.float32)
        weight = state["weight"]
        scale = state.get("scale", "rms")  # histories written before "scale" existed
        if scale == "absolute":
            mudabox._audio["y"] = y + np.float32(weight) * noise
            return
        if scale == "peak":
            y, noise = peak_normalised(y), peak_normalised(noise)
        else:
            noise_rms = rms(noise)
            noise *= rms(y) / noise_rms if noise_rms > 0 else 0.0
        noise *= weight  # in place: a whole track is large
        noise += (1.0 - weight) * y
        mudabox._audio["y"] = noise


class Clipping(BaseTransformer):
    """Backport of muda's Clipping (not in 0.4.1): clip to clip_limit x the signal's range."""

    def __init__(self, clip_limit=0.8):
        BaseTransformer.__init__(self)
        self.clip_limit = float(clip_limit)

    def states(self, jam):
        yield dict(clip_limit=self.clip_limit)

    @staticmethod
    def audio(mudabox, state):
        y = mudabox._audio["y"]
        limit = state["clip_limit"]
        mudabox._audio["y"] = np.clip(y, np.min(y) * limit, np.max(y) * limit)


class FixedBackgroundNoise(background.BackgroundNoise):
    """muda's BackgroundNoise (peak-normalised x and noise) at one fixed weight; muda's own
    draws the weight from a range. The clip offset is drawn from `rng` as muda does."""

    def __init__(self, files=None, weight=0.1, rng=None):
        background.BackgroundNoise.__init__(self, n_samples=1, files=files, rng=rng)
        self.weight = float(weight)

    def states(self, jam):
        for state in background.BackgroundNoise.states(self, jam):
            state["weight"] = self.weight
            yield state


EXTRA_TRANSFORMERS = {
    "AdditiveNoise": AdditiveNoise,
    "Clipping": Clipping,
    "FixedBackgroundNoise": FixedBackgroundNoise,
}


def pack(pcm: np.ndarray, sample_rate: int) -> jams.JAMS:
    """A JAMS whose muda sandbox holds the audio, as muda.load_jam_audio would make it."""
    jam = jams.JAMS()
    jam.file_metadata.duration = len(pcm) / sample_rate
    return muda.jam_pack(jam, _audio=dict(y=pcm, sr=sample_rate))


def run(transformer: BaseTransformer, jam: jams.JAMS, state: dict) -> jams.JAMS:
    """Apply one transformer with a fixed state; returns a new JAMS (muda copies)."""
    return transformer._transform(jam, state)


def audio_of(jam: jams.JAMS) -> np.ndarray:
    return np.ascontiguousarray(jam.sandbox.muda._audio["y"], dtype=np.float32)


def to_plain(value):
    """muda's history as plain JSON types (muda itself would reach for jsonpickle)."""
    if isinstance(value, dict):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return to_plain(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, type):
        return value.__name__
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    raise TypeError(f"cannot record {type(value).__name__} in a deformation history")


def history_of(jam: jams.JAMS) -> list[dict]:
    return to_plain(list(jam.sandbox.muda["history"]))


def versions_of(jam: jams.JAMS) -> dict:
    return to_plain(dict(jam.sandbox.muda["version"]))


def transformer_class(name: str) -> type:
    if name in EXTRA_TRANSFORMERS:
        return EXTRA_TRANSFORMERS[name]
    cls = getattr(muda.deformers, name, None)
    if not (isinstance(cls, type) and issubclass(cls, BaseTransformer)):
        raise ValueError(f"unknown muda transformer {name!r} in deformation history")
    return cls


def replay(history: list[dict], pcm: np.ndarray, sample_rate: int) -> np.ndarray:
    """Re-apply a recorded (plain JSON) history to the original audio."""
    jam = pack(np.asarray(pcm, dtype=np.float32), sample_rate)
    for step in history:
        transformer = step["transformer"]
        cls = transformer_class(transformer["__class__"])
        jam = run(cls(**transformer["params"]), jam, step["state"])
    return audio_of(jam)
