"""`explain`: the attention models' heat maps point at the moments that carry a tag.

A tiny CNNSA learns two tags on real log-mels of synthetic audio where each sound
(drum-like noise bursts, a tone) sits in a random half of the clip. On clips silent for one
half with bursts in the other, the drum tag's contribution curve (every layer masked to one
moment) is higher over the bursts than over the silence, and its positive mass sits there."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pipelines.core.features import FeatureConfig, log_mel
from tagtrain.inference.contributions import explain_window, explainable
from tagtrain.models.registry import create_model
from tests.conftest import TEST_SEED

SR = 16000
SECONDS = 2.0
HALF = int(SR * SECONDS / 2)
TAGS = ["drums", "tone"]
STEPS = 160


def bursts(rng, n: int) -> np.ndarray:
    """30 ms decaying white-noise hits every 100 ms: one in every 128 ms token."""
    y = np.zeros(n)
    hit = rng.standard_normal(int(0.03 * SR)) * np.exp(-np.arange(int(0.03 * SR)) / 80)
    for start in range(int(rng.integers(0, 1600)), n - len(hit), 1600):
        y[start : start + len(hit)] += 0.5 * hit
    return y


def tone(rng, n: int) -> np.ndarray:
    return 0.3 * np.sin(2 * np.pi * rng.uniform(440, 880) * np.arange(n) / SR)


def clip(rng, halves) -> tuple[np.ndarray, np.ndarray]:
    """halves: two sets of sounds ({"drums", "tone"} subsets), one per half."""
    y = 1e-4 * rng.standard_normal(2 * HALF)
    for i, sounds in enumerate(halves):
        part = slice(i * HALF, (i + 1) * HALF)
        if "drums" in sounds:
            y[part] += bursts(rng, HALF)
        if "tone" in sounds:
            y[part] += tone(rng, HALF)
    labels = np.array([any(t in h for h in halves) for t in TAGS], dtype=np.float32)
    return y.astype(np.float32), labels


def mels(pcm: np.ndarray) -> torch.Tensor:
    # The toy model below was tuned on librosa's Slaney mel; the attribution under test does
    # not depend on the mel scale, so the input is pinned rather than left to the default.
    cfg = FeatureConfig(
        sample_rate=SR, n_fft=512, hop=256, n_mels=128, f_max=8000.0,
        mel_scale="slaney", mel_norm="slaney", pad_mode="constant",
    )  # fmt: skip
    return log_mel(torch.from_numpy(pcm), cfg).float()


@pytest.fixture(scope="module")
def trained_cnnsa():
    rng = np.random.default_rng(TEST_SEED)
    choices = [set(), {"drums"}, {"tone"}, {"drums", "tone"}]
    data = [clip(rng, [choices[rng.integers(4)], choices[rng.integers(4)]]) for _ in range(128)]
    x = mels(np.stack([d[0] for d in data]))
    y = torch.from_numpy(np.stack([d[1] for d in data]))
    # One thread, whatever other modules set at import: the same summation order on every
    # machine with the same kernels (and no waiting on a busy second core).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(TEST_SEED)
    model = create_model("cnnsa", len(TAGS), width=0.125)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for _ in range(STEPS):
        idx = torch.randint(len(x), (16,))
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x[idx]), y[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    torch.set_num_threads(threads)
    return model.eval()


def drum_test_clips() -> list[tuple[np.ndarray, bool]]:
    """Four clips with the bursts in their second half and four in their first:
    (pcm, drums in the second half?)."""
    rng = np.random.default_rng(99)
    halves = {True: [set(), {"drums"}], False: [{"drums"}, set()]}
    return [(clip(rng, halves[second])[0], second) for _ in range(4) for second in (True, False)]


def drums_located(model, clips) -> tuple[bool, list[tuple[float, ...]]]:
    """Whether `model` learnt the tags and its drum contribution curve (every layer masked)
    sits on the bursts, on every clip, and the figures, per clip: p(drums) > 0.7 and
    p(tone) < 0.3; the curve's mean over the drum tokens exceeds its mean over the silent
    ones by more than 0.5 logit, leaving out the 2 tokens either side of the middle (the
    front end's receptive field, and the bursts' random start, reach across it); the centre
    of the curve's positive mass lies in the drum half (its place from the clip's silent
    end, as a fraction of the clip, over 0.5). Statistics over every token, not one peak:
    the curve is a plateau over the bursts, its maximum on any of them or next to them."""
    figures = []
    for pcm, second in clips:
        _, contribution, p = explain_window(model, mels(pcm)[None], [0, 1], mask_layers="all")
        curve = contribution[0]
        n = len(curve)
        token = np.arange(n)
        drums = token >= n // 2 if second else token < n // 2
        away = np.abs(token + 0.5 - n / 2) > 2
        contrast = curve[drums & away].mean() - curve[~drums & away].mean()
        mass = np.clip(curve, 0, None)
        centre = float((mass * (token + 0.5)).sum() / max(mass.sum(), 1e-12) / n)
        at = centre if second else 1 - centre
        figures.append((float(p[0]), float(p[1]), float(contrast), at))
    learnt = all(pd > 0.7 and pt < 0.3 and c > 0.5 and at > 0.5 for pd, pt, c, at in figures)
    return learnt, [tuple(round(f, 3) for f in row) for row in figures]


# Checked under ATEN_CPU_CAPABILITY=default, avx2 and avx512 and ONEDNN_MAX_CPU_ISA=AVX2, each
# with TAGKIT_TEST_SEED=0, 1 and 2 (12 trainings, 8 clips each): p(drums) 0.93-0.97 and
# p(tone) 0.03-0.06 (bounds 0.7, 0.3); contrast 1.13-7.5 logits (bound 0.5; seeds 0 and 2
# at least 4.7, seed 1 1.13-1.8, 3.6-4.5 under avx512); centre 0.63-0.80 (bound 0.5).
# The untrained control: p 0.58 and 0.52, contrast 0.00-0.01, centre 0.50-0.52. Before
# (bursts every 200 ms, 80 steps, one clip each way, the peak's token and the halves' whole
# means) the peak fell on the silent side next to the middle in 5 of 24 clips, seed 1's
# contrast was 0.96-1.1 against a bound of 1, and ONEDNN_MAX_CPU_ISA=AVX2 with seed 0 learnt
# the tags (p 0.90) with no plateau at all (contrast 0.3-0.5). The peak is no statistic of a
# plateau: even now it falls on the silent side of the middle in 23 of the 96 clips.
@pytest.mark.isa
def test_the_drum_contribution_sits_where_the_drums_are(trained_cnnsa):
    model = trained_cnnsa
    assert explainable(model)
    clips = drum_test_clips()
    attention, contribution, _ = explain_window(model, mels(clips[0][0])[None], [0, 1])
    assert contribution.shape[1] == attention.shape[0] == 16  # 251 frames / 8 per token
    assert attention.sum() == pytest.approx(1.0, abs=1e-4)
    learnt, figures = drums_located(model, clips)
    assert learnt, figures  # (p drums, p tone, contrast, centre) per clip
    # The control: the same network untrained (its initial weights) fails the same test.
    untrained = create_model("cnnsa", len(TAGS), width=0.125).eval()
    learnt, figures = drums_located(untrained, clips)
    assert not learnt, figures


def test_attention_maps_come_from_the_models():
    for name in ("cnnsa", "music_tagging_transformer_small"):
        model = create_model(name, 3, width=0.25).eval()
        spec = model.input_spec
        x = torch.randn(1, spec.n_mels, spec.frames)
        with torch.no_grad():
            logits, maps = model.attention(x)
            assert torch.allclose(logits, model(x), atol=1e-5)
            n = model.tokens(x).shape[1] - 1
        assert abs(n - spec.frames / model.token_frames) <= 1
        assert len(maps) == len(model.encoder.layers)
        assert maps[-1].shape == (1, 8, n + 1, n + 1)
        assert torch.allclose(maps[-1].sum(-1), torch.ones(()), atol=1e-5)
    assert not explainable(create_model("fcn", 3))


def test_won2019_models_are_explained_token_by_token():
    """Won et al. 2019's own models (mel and raw waveform) work with explain: one curve
    value per token, at the token's duration, and a mel to show for the waveform model."""
    from tagtrain.inference.contributions import display_mel, seconds_per_token
    from tagtrain.loader.device import DeviceInput
    from tagtrain.loader.input_plan import InputPlan

    for name, x, tokens, per_token in (
        ("won2019_spec", torch.randn(1, 96, 40), 40, 256 / SR),
        ("won2019_wave", 0.1 * torch.randn(1, 243 * 12), 12, 243 / SR),
    ):
        model = create_model(name, 3, width=0.125).eval()
        assert explainable(model)
        attention, contribution, probability = explain_window(model, x, [0, 2])
        assert attention.shape == (tokens,) and contribution.shape == (2, tokens)
        assert attention.sum() == pytest.approx(1.0, abs=1e-4) and probability.shape == (2,)
        assert seconds_per_token(model, model.input_spec) == pytest.approx(per_token)
    wave = create_model("won2019_wave", 3, width=0.125)
    plan = InputPlan(
        kind="pcm", member="pcm.npy", length=wave.input_spec.samples, chunk_level=True,
        device_feature=None, features={"sample_rate": SR}, mean=None, std=None,
        standardize="none",
    )  # fmt: skip
    device_input = DeviceInput(plan, torch.device("cpu"))
    shown = display_mel(device_input, torch.zeros(1, 16000, dtype=torch.int16), wave.input_spec)
    assert shown.shape == (96, 63)


@pytest.mark.slow
def test_explain_writes_a_heat_map_for_a_cnnsa_run_on_the_demo_corpus(
    demo_corpus, demo_dataset, tmp_path, capsys
):
    from tagtrain.__main__ import main
    from tagtrain.commands.train import train
    from tagtrain.inference.trained_run import load_run
    from tagtrain.run.config import RunConfig

    run = tmp_path / "cnnsa"
    cfg = RunConfig(
        data=str(demo_dataset), model="cnnsa", out=str(run), width=0.125, batch_size=2,
        workers=0, shuffle_buffer=4, epochs=1, max_steps_per_epoch=2, val_chunks=1,
        schedule="early_stop", lr=1e-3, progress=False,
    )  # fmt: skip
    train(cfg)
    tags = load_run(run, device="cpu").vocabulary[:2]
    audio = sorted(p for p in (demo_corpus / "audio").rglob("*") if p.is_file())[0]
    png, out_json = tmp_path / "heat.png", tmp_path / "heat.json"
    args = ["explain", str(audio), "--run", str(run), "--device", "cpu", "--out", str(png)]
    assert main([*args, "--tag", tags[0], "--tag", tags[1], "--json", str(out_json)]) == 0
    printed = capsys.readouterr().out
    assert f"{tags[0]}: p=" in printed and f"heat map: {png}" in printed
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    curves = json.loads(out_json.read_text())
    assert curves["tags"] == tags and len(curves["contribution"]) == 2
    tokens = len(curves["attention"])
    assert all(len(c) == tokens for c in curves["contribution"])
    import soundfile as sf

    seconds = sf.info(str(audio)).duration if audio.suffix != ".mp3" else None
    if seconds:
        assert abs(tokens * curves["seconds_per_token"] - max(seconds, 15.0)) < 1.0
    assert main([*args, "--tag", "no-such-tag"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown tag(s) no-such-tag" in err[0]


def _record_attention(model):
    """Forward hooks on every encoder layer: the attention probabilities each call made."""
    calls = [[] for _ in model.encoder.layers]
    handles = [
        layer.register_forward_hook(lambda m, args, out, i=i: calls[i].append(out[1].clone()))
        for i, layer in enumerate(model.encoder.layers)
    ]
    return calls, handles


@pytest.mark.parametrize("name", ["cnnsa", "won2019_spec"])
def test_last_layer_masking_leaves_the_earlier_layers_attention_as_trained(name):
    """Won et al. 2019 set the attention of the last layer to 1 on one token and 0
    elsewhere (`mask_layers="last"`, the default); `"all"` masks every layer."""
    torch.manual_seed(0)
    model = create_model(name, 3, width=0.125).eval()
    x = torch.randn(1, model.input_spec.n_mels, 48)
    with torch.no_grad():
        _, unmasked = model.attention(x)
    curves = {}
    for mode in ("last", "all"):
        calls, handles = _record_attention(model)
        try:
            kwargs = {} if mode == "last" else {"mask_layers": "all"}
            curves[mode] = explain_window(model, x, [0, 1], batch=5, **kwargs)[1]
        finally:
            for handle in handles:
                handle.remove()
        n = curves[mode].shape[1]
        for layer, probs in enumerate(calls[:-1]):
            batches = torch.cat(probs)  # the plain pass, the floor's, the token rows'
            untouched = torch.allclose(batches, unmasked[layer].expand_as(batches), atol=1e-6)
            assert untouched == (mode == "last"), (mode, layer)
        last = torch.cat(calls[-1])[2:, :, 0]  # [CLS]'s attention, per token row
        target = torch.eye(n + 1)[1:, None, :].expand_as(last)
        if mode == "last":  # the chosen token 1, everything else ([CLS] too) 0
            torch.testing.assert_close(last, target)
        else:  # [CLS] and the token share it
            assert (last[..., 1:] * (1 - target[..., 1:])).abs().max() == 0
            assert (last[..., 0] > 0).all()
    assert not np.allclose(curves["last"], curves["all"], atol=1e-4)


def test_explain_names_its_mask_layers_and_refuses_others(capsys):
    from tagtrain.__main__ import main
    from tagtrain.inference.contributions import ExplainOptions

    assert ExplainOptions().mask_layers == "last"
    assert main(["explain", "x.wav", "--run", "r", "--tag", "t", "--mask-layers", "first"]) == 2
    assert "--mask-layers" in capsys.readouterr().err
    with pytest.raises(ValueError, match="mask_layers"):
        explain_window(create_model("cnnsa", 3, width=0.125).eval(), torch.randn(1, 96, 40),
                       [0], mask_layers="first")  # fmt: skip


def test_masking_every_layer_keeps_the_drum_evidence_where_the_drums_are(trained_cnnsa):
    # `mask_layers="all"`: no other moment reaches [CLS] through the earlier layers, so on
    # the toy model the drum evidence sits in the drum half (the last-layer-only masking of
    # the paper leaves the earlier layers' global mixing in every token).
    # Where it sits, across kernels and seeds: test_the_drum_contribution_sits_where_the_
    # drums_are (the maximum and minimum of one curve, asserted here before, are not stable).
    x = mels(clip(np.random.default_rng(99), [set(), {"drums"}])[0])[None]
    _, contribution, _ = explain_window(trained_cnnsa, x, [0], mask_layers="all")
    _, last, _ = explain_window(trained_cnnsa, x, [0])
    assert not np.allclose(last, contribution, atol=1e-3)
