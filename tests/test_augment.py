"""The waveform augmentation chain: reproducible per seed, each transform firing at its
probability and doing what the recipe says, YAML configuration, and the loader hook that
runs it in the workers."""

from __future__ import annotations

import random
from collections import Counter

import numpy as np
import pytest
import torch

from pipelines.core.audio import to_int16
from tagtrain.loader import (
    EpochReader,
    LoaderConfig,
    ShardStream,
    load_card,
    plan_input,
    split_shards,
)
from tagtrain.models.registry import get_entry
from tagtrain.training.augment_chain import (
    DEFAULT_CHAIN,
    AugmentError,
    TrainingAugmentChain,
    default_chain,
    resolve_chain,
)
from tests import shardkit
from tests.conftest import run_cli

SR = 22050
SEED_003_P = {
    "polarity_inversion": 0.8,
    "noise": 0.3,
    "gain": 0.2,
    "filter": 0.8,
    "delay": 0.5,
    "pitch_shift": 0.4,
    "reverb": 0.3,
}


def make_signal(seconds: float = 0.5, freqs=(440.0,), seed: int = 0) -> np.ndarray:
    """int16 PCM as the loader hands it over: tones plus a little noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    wav = sum(0.2 * np.sin(2 * np.pi * f * t) for f in freqs) + 0.005 * rng.standard_normal(t.size)
    return to_int16(wav)


def only(name: str, **params) -> TrainingAugmentChain:
    return TrainingAugmentChain([{"transform": name, **params}], SR)


def peak_hz(x: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / SR)[spectrum.argmax()])


def band_energy(x: np.ndarray, hz: float, width: float = 30.0) -> float:
    spectrum = np.abs(np.fft.rfft(x)) ** 2
    freqs = np.fft.rfftfreq(len(x), 1 / SR)
    return float(spectrum[np.abs(freqs - hz) < width].sum())


def test_the_default_chain_is_seed_003s_recipe():
    entries = resolve_chain("default")
    assert [e["transform"] for e in entries] == list(DEFAULT_CHAIN) == list(SEED_003_P)
    assert {e["transform"]: e["p"] for e in entries} == SEED_003_P
    by_name = {e["transform"]: e for e in entries}
    assert (by_name["noise"]["min_ratio"], by_name["noise"]["max_ratio"]) == (0.3, 0.5)
    assert (by_name["gain"]["min_gain_db"], by_name["gain"]["max_gain_db"]) == (-20.0, -1.0)
    assert by_name["filter"]["high_pass_min_hz"] == 200.0
    assert by_name["filter"]["low_pass_max_hz"] == 4000.0
    assert by_name["filter"]["filters"] == "independent"  # the paper; one_of: the reference
    # torchaudio-augmentations' Delay: 200, 250, ..., 450 ms (max exclusive), volume 0.5.
    assert (by_name["delay"]["min_ms"], by_name["delay"]["max_ms"]) == (200.0, 500.0)
    assert by_name["delay"]["step_ms"] == 50.0 and by_name["delay"]["volume"] == 0.5
    # Its Reverb: sox reverb, each percentage a random integer in [0, 100).
    reverb = by_name["reverb"]
    for name in ("reverberance", "damping", "room_scale"):
        assert (reverb[f"min_{name}"], reverb[f"max_{name}"]) == (0.0, 100.0)
    assert by_name["pitch_shift"]["max_semitones"] == 7.0
    assert resolve_chain("") is None and resolve_chain("none") is None


def test_a_fixed_seed_is_reproducible_and_leaves_the_global_rngs_alone():
    chain = TrainingAugmentChain(resolve_chain("default"), SR)
    x = make_signal()
    random.seed(123)
    np.random.seed(123)
    py_before, np_before = random.getstate(), np.random.get_state()[1].copy()
    first = [chain.apply(x, seed) for seed in range(12)]
    again = [
        TrainingAugmentChain(resolve_chain("default"), SR).apply(x, seed) for seed in range(12)
    ]
    for (a, fired_a), (b, fired_b) in zip(first, again):
        assert np.array_equal(a, b) and fired_a == fired_b
    assert a.dtype == np.float32 and a.shape == x.shape
    # Different seeds give different noise (and the input is never modified in place).
    assert len({out.tobytes() for out, _ in first}) == len(first)
    assert np.array_equal(x, make_signal())
    assert random.getstate() == py_before
    assert np.array_equal(np.random.get_state()[1], np_before)


@pytest.mark.parametrize("name", [*DEFAULT_CHAIN, "filter/one_of"])
def test_each_transform_alone_changes_the_audio_at_its_probability(name):
    # Firing is read off the audio itself: output different from input. The filter entry
    # draws its high and low pass independently (either changes the audio: 1 - (1 - p)^2);
    # as one_of, one draw of p picks one of them.
    x = make_signal()
    name, _, filters = name.partition("/")
    chain = only(name, filters=filters) if filters else only(name)
    p = SEED_003_P[name]
    expected = 1 - (1 - p) ** 2 if name == "filter" and not filters else p
    draws = 500
    changed = sum(not np.array_equal(chain(x, seed), x.astype(np.float32)) for seed in range(draws))
    assert abs(changed / draws - expected) < 0.07, (name, filters, changed / draws)


def test_the_whole_chain_fires_each_transform_at_its_probability():
    chain = TrainingAugmentChain(resolve_chain("default"), SR)
    x = make_signal(0.25)
    draws = 600
    counts = Counter()
    for seed in range(draws):
        counts.update(chain.apply(x, seed)[1])
    expected = {**SEED_003_P, "high_pass": 0.8, "low_pass": 0.8}  # independent draws
    expected.pop("filter")
    for name, p in expected.items():
        assert abs(counts[name] / draws - p) < 0.07, (name, counts[name] / draws)
    one_of = [
        {**e, "filters": "one_of"} if e["transform"] == "filter" else e
        for e in resolve_chain("default")
    ]
    chain = TrainingAugmentChain(one_of, SR)
    counts = Counter()
    for seed in range(draws):
        counts.update(chain.apply(x, seed)[1])
    for name in ("high_pass", "low_pass"):  # one draw of 0.8, then one of the two
        assert abs(counts[name] / draws - 0.4) < 0.07, (name, counts[name] / draws)


def test_each_transform_does_what_the_recipe_says():
    x = make_signal(0.5, freqs=(440.0,))
    xf = x.astype(np.float32)
    rms = float(np.sqrt(np.mean(xf**2)))
    for seed in range(6):
        assert np.array_equal(only("polarity_inversion", p=1.0)(x, seed), -xf)

        ratio = only("gain", p=1.0)(x, seed)[1000] / xf[1000]
        assert 10 ** (-20 / 20) - 1e-4 <= ratio <= 10 ** (-1 / 20) + 1e-4

        noise = only("noise", p=1.0)(x, seed) - xf
        assert 0.28 <= noise.std() / rms <= 0.52

        # (x + 0.5 d) / 2: the reference averages the signal and its half-volume echo.
        delayed = only("delay", p=1.0)(x, seed)
        echo = 2 * delayed - xf
        offset = int(np.flatnonzero(np.abs(echo) > 1e-3)[0])
        assert offset in {int(ms * SR / 1000) for ms in range(200, 500, 50)}
        assert np.allclose(delayed[:offset], xf[:offset] / 2, atol=1e-4)
        assert np.allclose(echo[offset:], 0.5 * xf[: len(xf) - offset], atol=1e-3)

        shifted = only("pitch_shift", p=1.0)(x, seed)
        assert 440 * 2 ** (-7 / 12) * 0.97 <= peak_hz(shifted) <= 440 * 2 ** (7 / 12) * 1.03

        # A 50 ms burst then silence: sox's reverb rings on into the silence, and the
        # burst itself is still there (dry + wet, as sox mixes them).
        burst = x.copy()
        burst[int(0.05 * SR) :] = 0
        reverb = only("reverb", p=1.0)
        wet, fired = reverb.apply(burst, seed)
        assert fired == ("reverb",) and wet.shape == burst.shape
        tail = slice(int(0.1 * SR), int(0.2 * SR))
        assert np.sqrt(np.mean(wet[tail] ** 2)) > 0.001 * np.sqrt(np.mean(wet**2))
        head = slice(0, int(0.05 * SR))
        assert np.corrcoef(wet[head], burst[head].astype(float))[0, 1] > 0.5
        drawn = reverb._transforms[0].parameters
        assert all(
            isinstance(drawn[k], int) and 0 <= drawn[k] < 100
            for k in ("reverberance", "damping", "room_scale")
        )

    two_tones = make_signal(0.5, freqs=(100.0, 7000.0))
    low0, high0 = band_energy(two_tones, 100.0), band_energy(two_tones, 7000.0)
    both, fired = only("filter", p=1.0).apply(two_tones, 0)  # independent: both apply
    assert fired == ("high_pass", "low_pass")
    assert band_energy(both, 100.0) < 0.5 * low0 and band_energy(both, 7000.0) < 0.1 * high0
    filters = only("filter", p=1.0, filters="one_of")
    seen = set()
    for seed in range(8):
        out, fired = filters.apply(two_tones, seed)
        (kind,) = fired
        seen.add(kind)
        low, high = band_energy(out, 100.0), band_energy(out, 7000.0)
        low0, high0 = band_energy(two_tones, 100.0), band_energy(two_tones, 7000.0)
        if kind == "high_pass":  # cutoff 200-1200 Hz: the 100 Hz tone goes
            assert low < 0.5 * low0 and high > 0.5 * high0
        else:  # cutoff 2.2-4 kHz: the 7 kHz tone goes
            assert high < 0.1 * high0 and low > 0.5 * low0
    assert seen == {"high_pass", "low_pass"}


def test_a_yaml_chain_runs_what_it_lists_with_the_recipe_filling_gaps(tmp_path):
    path = tmp_path / "chain.yaml"
    path.write_text(
        "- transform: gain\n  p: 1.0\n  min_gain_db: -6\n- transform: polarity_inversion\n"
    )
    entries = resolve_chain(str(path))
    assert [e["transform"] for e in entries] == ["gain", "polarity_inversion"]
    assert entries[0] == {"transform": "gain", "p": 1.0, "min_gain_db": -6.0, "max_gain_db": -1.0}
    assert entries[1]["p"] == 0.8  # the recipe's
    assert resolve_chain(entries) == entries  # a saved config.json's list reads back the same
    x = make_signal()
    out = TrainingAugmentChain(entries, SR)(x, 0)
    ratio = abs(out[1000] / float(x[1000]))
    assert 10 ** (-6 / 20) - 1e-4 <= ratio <= 10 ** (-1 / 20) + 1e-4


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("- transform: chorus\n", "unknown transform 'chorus'"),
        ("- transform: gain\n  gain_db: 3\n", "unknown parameter(s) gain_db"),
        ("- transform: gain\n  p: 1.5\n", "p must lie within 0..1"),
        ("- transform: gain\n  p: high\n", "p must be a float"),
        ("- transform: delay\n  min_ms: 500\n", "max_ms 500.0 must be above min_ms 500.0"),
        ("transform: gain\n", "must be a list of transforms"),
        ("- [unclosed\n", "is not valid YAML"),
    ],
)
def test_a_bad_chain_is_one_clear_line(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(AugmentError) as info:
        resolve_chain(str(path))
    assert message in str(info.value) and "\n" not in str(info.value)


def test_train_refuses_a_bad_augment_file_with_one_line(tmp_path):
    dataset = tmp_path / "data"
    shardkit.make_dataset(dataset, {"train": [2, 2], "valid": [2]}, stored=("pcm",))
    result = run_cli(
        "tagtrain", "train", "--data", str(dataset), "--model", "short_chunk_cnn",
        "--augment", str(tmp_path / "missing.yaml"), "--out", str(tmp_path / "run"),
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().startswith(
        "python -m tagtrain: error: cannot read augmentation file"
    )
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.fixture(scope="module")
def pcm_dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("pcm_shards")
    shardkit.make_dataset(out, {"train": [4, 4], "valid": [3]}, stored=("mel", "pcm"), seed=3)
    return str(out)


def batches(data: str, workers: int, augment, keep_clean=False, train=True, epoch=0):
    card = load_card(data)
    plan = plan_input(card, get_entry("short_chunk_cnn").input_spec, from_pcm=True)
    cfg = LoaderConfig(batch_size=2, workers=workers, shuffle_buffer=4, seed=5, train=train)
    stream = ShardStream(
        split_shards(card, data, "train"),
        plan,
        card["vocabulary"],
        cfg,
        epoch,
        augment=augment,
        keep_clean=keep_clean,
    )
    out = {}
    for batch in EpochReader(stream):
        for i, key in enumerate(batch.keys):
            clean = None if batch.clean is None else batch.clean[i].numpy()
            out[key] = (batch.x[i].numpy(), clean)
    return out


def test_the_loader_augments_training_crops_in_its_workers_reproducibly(pcm_dataset):
    card = load_card(pcm_dataset)
    chain = TrainingAugmentChain(default_chain(), card["features"]["sample_rate"])
    plain = batches(pcm_dataset, 0, None)
    in_main = batches(pcm_dataset, 0, chain, keep_clean=True)
    in_workers = batches(pcm_dataset, 2, chain, keep_clean=True)
    assert sorted(in_main) == sorted(in_workers) == sorted(plain) and len(plain) == 8
    for key, (x, clean) in in_workers.items():
        # The same crop and noise whichever process made it: seeded by (seed, epoch, key).
        assert np.array_equal(x, in_main[key][0])
        assert clean.dtype == np.int16 and np.array_equal(clean, plain[key][0])
        assert x.dtype == np.float32 and not np.array_equal(x, clean.astype(np.float32))
    # Evaluation streams are never augmented.
    evaluation = batches(pcm_dataset, 0, chain, train=False)
    assert all(
        np.array_equal(x, plain_eval)
        for (x, _), plain_eval in zip(
            evaluation.values(), (v[0] for v in batches(pcm_dataset, 0, None, train=False).values())
        )
    )


def test_a_resumed_epoch_re_augments_exactly_as_the_uninterrupted_one(pcm_dataset):
    card = load_card(pcm_dataset)
    chain = TrainingAugmentChain(default_chain(), card["features"]["sample_rate"])
    plan = plan_input(card, get_entry("short_chunk_cnn").input_spec, from_pcm=True)
    cfg = LoaderConfig(batch_size=2, workers=1, shuffle_buffer=4, seed=5)
    shards = split_shards(card, pcm_dataset, "train")

    def reader(resume=None):
        stream = ShardStream(shards, plan, card["vocabulary"], cfg, 0, resume, augment=chain)
        return EpochReader(stream)

    whole = [(b.keys, b.x) for b in reader()]
    interrupted = reader()
    batches = iter(interrupted)
    first = next(batches)
    interrupted.commit(first)
    interrupted.close()
    rest = [(b.keys, b.x) for b in reader(interrupted.positions)]
    assert [k for k, _ in whole] == [first.keys] + [k for k, _ in rest]
    for (_, x_whole), (_, x_rest) in zip(whole[1:], rest):
        assert torch.equal(x_whole, x_rest)


def test_high_and_low_pass_are_drawn_independently_unless_one_of():
    # Seed 003: "Each augmentation method is activated independently"; the reference code
    # draws OneOf(HighPass, LowPass). Over many seeds, independent draws sometimes apply
    # both filters to one crop (p^2 = 0.25 at p 0.5), one_of never does.
    x = make_signal(0.1)
    draws = 300
    together = {}
    for filters in ("independent", "one_of"):
        chain = only("filter", p=0.5, filters=filters)
        fired = [chain.apply(x, seed)[1] for seed in range(draws)]
        together[filters] = sum(f == ("high_pass", "low_pass") for f in fired) / draws
        assert {k for f in fired for k in f} == {"high_pass", "low_pass"}
    assert abs(together["independent"] - 0.25) < 0.07
    assert together["one_of"] == 0
    with pytest.raises(AugmentError, match="filters must be independent or one_of"):
        resolve_chain([{"transform": "filter", "filters": "both"}])
