"""musicnn's published weights in our port, compared with the official TensorFlow
implementation (fixtures from scripts/golden/make_musicnn_golden.py).

Tolerances (float32 throughout):
- NET_ATOL = 1e-5 on sigmoid outputs when our network is fed the official log-mel: the
  inputs are identical, so only the summation order of the convolutions differs (oneDNN
  vs torch); measured max 1.4e-6 over 3 clips x 4 models x 2 front ends. A one-frame
  window shift, ReLU/BN swapped, a 'same' padding on the wrong side or the wrong
  pooling order move the outputs by 1e-4 to 1e-1 (tests below show each one failing).
- FEATURE_RTOL = 1e-4 of the layer's largest magnitude for pooled/penultimate features.
- E2E_ATOL = 5e-5 from audio file to taggram with our decoder and our STFT: about 0.05%
  of the mel bins land one float16 rounding step away from librosa's (the official
  front end rounds the mel to float16), measured max 9.4e-6.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import run_cli
from musicnn_clips import write_clips

from tagtrain.models import musicnn_tf
from tagtrain.pretrained import frontend
from tagtrain.pretrained.musicnn import (
    PRETRAINED,
    checkpoint_state_dict,
    load_pretrained,
    musicnn_mapping,
    musicnn_package_dir,
)
from tagtrain.pretrained.tagger import Tagger
from tagtrain.pretrained.tf_checkpoint import CheckpointError, TFCheckpoint

FIXTURES = Path(__file__).parent / "fixtures" / "musicnn"
NET_ATOL = 1e-5
FEATURE_RTOL = 1e-4
E2E_ATOL = 5e-5
TF_NAME = {"musicnn-mtt": "MTT_musicnn", "musicnn-msd": "MSD_musicnn"}
TF_NAME |= {"vgg-mtt": "MTT_vgg", "vgg-msd": "MSD_vgg"}
CLIPS = ("melody", "beat", "chords")


@pytest.fixture(scope="module")
def models():
    return {name: load_pretrained(name)[0] for name in PRETRAINED}


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    return write_clips(tmp_path_factory.mktemp("clips"))


def golden(clip: str, numpy_major: int = 1):
    return np.load(FIXTURES / f"{clip}.numpy{numpy_major}.npz")


def net_outputs(model, log_mel: np.ndarray, shift: int = 0) -> dict[str, np.ndarray]:
    starts = [s + shift for s in frontend.window_starts(len(log_mel) - shift)]
    with torch.no_grad():
        out = model.features(torch.from_numpy(frontend.cut_windows(log_mel, starts)))
    out["taggram"] = torch.sigmoid(out["logits"])
    return {k: v.numpy() for k, v in out.items()}


def taggram_error(model, clip="chords", numpy_major=1, name="musicnn-mtt", shift=0) -> float:
    g = golden(clip, numpy_major)
    ours = net_outputs(model, g["mel"], shift)["taggram"]
    return float(np.abs(ours - g[f"{TF_NAME[name]}.taggram"]).max())


# --- the clips are the ones the fixtures were made from ------------------------------------


@pytest.mark.parametrize("numpy_major", [1, 2])
def test_rebuilt_clips_are_the_golden_ones(clips, numpy_major):
    record = json.loads((FIXTURES / f"golden.numpy{numpy_major}.json").read_text())
    for name, path in clips.items():
        assert hashlib.sha256(path.read_bytes()).hexdigest() == record["clips"][name]["sha256"]


# --- our network on the official mel ---------------------------------------------------------


@pytest.mark.parametrize("numpy_major", [1, 2])
@pytest.mark.parametrize("name", sorted(PRETRAINED))
def test_network_equals_official_window_by_window(models, name, numpy_major):
    for clip in CLIPS:
        g = golden(clip, numpy_major)
        ours = net_outputs(models[name], g["mel"])
        ref = g[f"{TF_NAME[name]}.taggram"]
        assert ours["taggram"].shape == ref.shape
        assert np.abs(ours["taggram"] - ref).max() <= NET_ATOL, (clip, name)
        if name.startswith("vgg"):
            pairs = [(ours["flat_pool5"], g[f"{TF_NAME[name]}.pool5"])]
        else:
            pairs = [(ours[k], g[f"{TF_NAME[name]}.{k}"]) for k in ("mean_pool", "max_pool")]
            # The official extractor repeats window 0's penultimate for later windows.
            pairs.append((ours["penultimate"][:1], g[f"{TF_NAME[name]}.penultimate"][:1]))
        for got, want in pairs:
            finite = np.isfinite(want)
            assert (np.isfinite(got) == finite).all() and (got[~finite] == want[~finite]).all()
            scale = np.abs(want[finite]).max()
            assert np.abs(got[finite] - want[finite]).max() <= FEATURE_RTOL * scale


def test_numpy2_overflow_is_reproduced_with_tf_nan_semantics(models, monkeypatch):
    """Under numpy >= 2 the official mel has +inf bins; TF's fused ReLU maps the NaN they
    make to 0 and its max-pool skips NaN. With torch's own ReLU the outputs are NaN."""
    g = golden("beat", 2)
    assert np.isinf(g["mel"]).any() and not np.isinf(golden("beat", 1)["mel"]).any()
    assert taggram_error(models["musicnn-mtt"], "beat", 2) <= NET_ATOL
    monkeypatch.setattr(musicnn_tf, "tf_relu", F.relu)
    assert np.isnan(net_outputs(models["musicnn-mtt"], g["mel"])["taggram"]).all()


# --- the comparison is tight enough to catch a wrong port ------------------------------------


def test_one_frame_window_shift_fails_the_comparison(models):
    assert taggram_error(models["musicnn-mtt"]) <= NET_ATOL
    assert taggram_error(models["musicnn-mtt"], shift=1) > 10 * NET_ATOL
    assert taggram_error(models["vgg-mtt"], name="vgg-mtt", shift=1) > 10 * NET_ATOL


def test_batch_norm_before_relu_fails_the_comparison(monkeypatch):
    model = load_pretrained("musicnn-mtt")[0]

    def swapped(self, x):
        return self.bn(self.conv(x)).clamp(min=0)

    monkeypatch.setattr(musicnn_tf.MidEndLayer, "forward", swapped)
    assert taggram_error(model) > 10 * NET_ATOL


def test_same_padding_on_the_wrong_side_fails_the_comparison():
    model = load_pretrained("musicnn-mtt")[0]
    before, after = model.front[2].time_padding
    assert (before, after) == (63, 64)  # TF puts the odd row after
    model.front[2].time_padding = (after, before)
    assert taggram_error(model) > 10 * NET_ATOL


def test_torch_default_batch_norm_epsilon_fails_the_comparison():
    model = load_pretrained("vgg-mtt")[0]
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.eps = 1e-5
    assert taggram_error(model, name="vgg-mtt") > 10 * NET_ATOL


# --- our front end and the whole path from the audio file ------------------------------------


@pytest.mark.parametrize("numpy_major", [1, 2])
def test_front_end_equals_official_mel(clips, numpy_major):
    from pipelines.core.audio import load_audio

    for clip, path in clips.items():
        official = golden(clip, numpy_major)["mel"].astype(np.float32)
        pcm = load_audio(path.read_bytes(), 16000).pcm
        ours = frontend.official_log_mel(pcm, f"numpy{numpy_major}").astype(np.float32)
        assert ours.shape == official.shape
        finite = np.isfinite(official)
        assert (np.isfinite(ours) == finite).all()
        differ = ours[finite] != official[finite]
        assert differ.mean() < 2e-3  # one float16 rounding step on ~0.05% of the bins
        assert np.abs(ours[finite] - official[finite]).max() < 2e-3


def test_log_compression_casts_to_float16_as_numpy_does(clips):
    """musicnn_log casts with torch (fast); the official code casts with numpy: the
    values must agree bit for bit, including subnormals, ties, 65504 and overflow."""
    from pipelines.core.audio import load_audio

    pcm = load_audio(clips["beat"].read_bytes(), 16000).pcm
    edges = [0.0, 6e-8, 3e-5, 1.00048828125, 2049.0, 65504.0, 65519.0, 65520.0, 1e6, 1e-45]
    mel = np.concatenate([frontend.mel_power(pcm).ravel() * 1e3, edges])
    mel = mel.astype(np.float32).reshape(-1, 1)
    with np.errstate(over="ignore"):
        half = mel.astype(np.float16)
        numpy1 = np.log10(np.float32(10000) * half.astype(np.float32) + np.float32(1))
        numpy2 = np.log10(np.float16(10000) * half + np.float16(1))
    for compression, want in (("numpy1", numpy1), ("numpy2", numpy2)):
        got = frontend.musicnn_log(mel, compression)
        assert got.dtype == want.dtype and np.array_equal(got, want, equal_nan=True)


@pytest.mark.parametrize("n", [15, 16, 20])
def test_fourier_tile_transforms_give_the_correlation_exactly(n):
    """In float64 the tile algorithm is the correlation itself (rounding at 1e-15)."""
    from tagtrain.models.fast_front_end import fourier_tile_transforms

    input_t, kernel_t, output_t = fourier_tile_transforms(n, 7)
    products = 1 + 3 * ((n - 1) // 2) + (n % 2 == 0)  # real bins 0 (and n/2), 3 per complex
    assert input_t.shape[0] == kernel_t.shape[0] == output_t.shape[1] == products
    gen = torch.Generator().manual_seed(n)
    d = torch.randn(n, dtype=torch.float64, generator=gen)
    g = torch.randn(7, dtype=torch.float64, generator=gen)
    want = torch.stack([(d[t : t + 7] * g).sum() for t in range(n - 6)])
    got = output_t @ ((kernel_t @ g) * (input_t @ d))
    assert (got - want).abs().max() < 1e-12


def test_fast_vgg_equals_the_direct_path_up_to_rounding(clips, monkeypatch):
    """vgg_tf's "fast" eval path runs a few windows at a time (and block 1's conv at the
    pool's stride, in both paths): per-window layers as the direct path's."""
    fast, _ = load_pretrained("vgg-mtt")
    direct = musicnn_tf.set_conv_algorithm(load_pretrained("vgg-mtt")[0], "direct")
    tagger = Tagger.from_pretrained("vgg-mtt")
    batch = torch.from_numpy(np.concatenate([tagger.windows(p)[0] for p in clips.values()]))
    assert len(batch) > musicnn_tf._VGG_CHUNK
    calls = []
    spy = fast.window_features
    monkeypatch.setattr(fast, "window_features", lambda mel: calls.append(len(mel)) or spy(mel))
    with torch.no_grad():
        got, want = fast.features(batch), direct.features(batch)
        assert max(calls) <= musicnn_tf._VGG_CHUNK and sum(calls) == len(batch)  # chunked
        logits = fast(batch)
    for layer in ("pool1", "pool3", "pool5"):
        scale = want[layer].abs().max()
        assert (got[layer] - want[layer]).abs().max() <= FAST_LAYER_RTOL * scale, layer
    taggram_gap = (torch.sigmoid(logits) - torch.sigmoid(want["logits"])).abs().max()
    assert taggram_gap <= FAST_TAGGRAM_ATOL


@pytest.mark.parametrize("name", sorted(PRETRAINED))
def test_tagger_predict_equals_official_from_audio_file(clips, name):
    tagger = Tagger.from_pretrained(name)
    for clip, path in clips.items():
        ref = golden(clip)[f"{TF_NAME[name]}.taggram"]
        result = tagger.predict(path)
        assert result["path"] == str(path) and len(result["vocabulary"]) == 50
        taggram = np.asarray(result["taggram"])
        assert np.abs(taggram - ref).max() <= E2E_ATOL, clip
        assert np.allclose(result["probabilities"], taggram.mean(axis=0))
        assert result["windows_s"][1] == [2.992, 5.984]
        assert len(result["windows_s"]) == len(ref)


def test_short_file_is_an_error_not_a_padded_window(tmp_path):
    import soundfile as sf

    path = tmp_path / "short.wav"
    sf.write(path, 0.1 * np.sin(np.arange(40000) / 5.0), 16000)  # 2.5 s < one window
    with pytest.raises(Exception, match="shorter than one 2.98 s window"):
        Tagger.from_pretrained("musicnn-mtt").predict(path)


# --- the checkpoint reader ---------------------------------------------------------------------


def test_reader_reads_a_tensorflow_written_bundle():
    ckpt = TFCheckpoint(FIXTURES / "tiny_bundle" / "bundle")
    assert len(ckpt.names()) == 204
    kernel = ckpt.read("dense/kernel")
    assert kernel.dtype == np.float32 and kernel.shape == (2, 3)
    assert np.array_equal(kernel, np.arange(6, dtype=np.float32).reshape(2, 3) / 8)
    half = ckpt.read("half")
    assert half.dtype == np.float16 and half.tolist() == [0.5, -2.0, 65504.0]
    assert ckpt.read("step").tolist() == [1, -2, 3, 2**40]
    assert ckpt.read("scalar").shape == () and float(ckpt.read("scalar")) == 3.25
    assert [float(ckpt.read(f"many/v{i:03d}")[0]) for i in range(200)] == list(range(200))


def test_reader_detects_damage(tmp_path):
    for f in (FIXTURES / "tiny_bundle").iterdir():
        shutil.copy(f, tmp_path / f.name)
    data = tmp_path / "bundle.data-00000-of-00001"
    raw = bytearray(data.read_bytes())
    raw[0] ^= 0x40
    data.write_bytes(bytes(raw))
    ckpt = TFCheckpoint(tmp_path / "bundle")
    damaged = [n for n in ckpt.names() if ckpt.entries[n].offset == 0][0]
    with pytest.raises(CheckpointError, match="CRC32C"):
        ckpt.read(damaged)
    index = tmp_path / "bundle.index"
    index.write_bytes(index.read_bytes()[:-1] + b"\0")
    with pytest.raises(CheckpointError, match="magic"):
        TFCheckpoint(tmp_path / "bundle")
    with pytest.raises(CheckpointError, match="no checkpoint index"):
        TFCheckpoint(tmp_path / "nothing")


def test_conversion_is_strict():
    ckpt = TFCheckpoint(str(musicnn_package_dir() / "MTT_musicnn") + "/")
    model = musicnn_tf.musicnn_tf(n_classes=50)
    mapping = musicnn_mapping()
    assert len(checkpoint_state_dict(ckpt, mapping, model)) == len(mapping)
    partial = {k: v for k, v in mapping.items() if not k.startswith("batch_normalization_9/")}
    with pytest.raises(CheckpointError, match="batch_normalization_9/.* has no place"):
        checkpoint_state_dict(ckpt, partial, model)
    with pytest.raises(
        CheckpointError,
        match=r"dense_1/kernel \(50, 200\) does not fit classifier.weight \(10, 200\)",
    ):
        checkpoint_state_dict(ckpt, mapping, musicnn_tf.musicnn_tf(n_classes=10))


# --- commands -------------------------------------------------------------------------------


def test_tag_command_writes_json_lines_and_error_records(clips, tmp_path):
    folder = tmp_path / "audio"
    folder.mkdir()
    for path in clips.values():
        shutil.copy(path, folder / path.name)
    (folder / "broken.mp3").write_bytes(b"not audio at all" * 10)
    out = tmp_path / "preds.jsonl"
    args = ("tagtrain", "tag", str(folder), "--pretrained", "musicnn-mtt", "--top", "3")
    proc = run_cli(*args, "--out", str(out))
    assert proc.returncode == 1, proc.stderr
    records = {Path(r["path"]).stem: r for r in map(json.loads, out.read_text().splitlines())}
    assert set(records) == {"broken", *CLIPS}
    assert "error" in records["broken"] and "taggram" not in records["broken"]
    chords = records["chords"]
    ref = golden("chords")["MTT_musicnn.taggram"]
    assert np.abs(np.asarray(chords["taggram"]) - ref).max() <= E2E_ATOL
    assert len(chords["top"]) == 3 and chords["top"][0][0] == "piano"
    assert chords["windows_s"] == [[0.0, 2.992], [2.992, 5.984]]


def test_tag_command_rejects_an_unknown_model_in_one_line(clips):
    proc = run_cli("tagtrain", "tag", str(clips["chords"]), "--pretrained", "musicnn-xyz")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1


def test_embed_command_writes_named_layer(clips, tmp_path):
    import pyarrow.parquet as pq

    out = tmp_path / "emb.parquet"
    paths = [str(clips["chords"]), str(clips["melody"])]
    args = ("tagtrain", "embed", *paths, "--pretrained", "musicnn-msd", "--layer", "max_pool")
    proc = run_cli(*args, "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    table = pq.read_table(out).to_pydict()
    assert table["path"] == paths and table["windows"] == [2, 2]
    want = golden("chords")["MSD_musicnn.max_pool"].mean(axis=0)
    got = np.asarray(table["embedding"][0])
    assert got.shape == (753,) and np.abs(got - want).max() <= FEATURE_RTOL * np.abs(want).max()


def test_pool_first_front_end_is_bit_identical_to_the_full_computation(models):
    """Eval mode pools the front end's conv output before ReLU and BN (monotone per
    channel); it must pick exactly the element the literal graph order picks."""
    model = musicnn_tf.set_conv_algorithm(load_pretrained("musicnn-mtt")[0], "direct")
    x = torch.from_numpy(frontend.cut_windows(golden("chords")["mel"], [0, 187]))
    with torch.no_grad():
        normed = model.input_bn(x.transpose(1, 2).unsqueeze(1))
        for block in model.front:
            z = block.conv(F.pad(normed, (0, 0, *block.time_padding)))
            literal = musicnn_tf.tf_max(block.bn(musicnn_tf.tf_relu(z)), dim=3)
            assert torch.equal(block(normed), literal)
    assert (model.front[0].bn.weight < 0).any()  # both pooling directions are exercised


# Fast front end (conv_algorithm "fast", the default in eval mode) vs the direct conv on
# real audio: only rounding differs. Measured on these clips: front-end layers 7.5e-7 of
# their largest magnitude, taggram 9e-8; a wrong tap, tile or band moves them by 1e-2+.
FAST_LAYER_RTOL = 1e-5
FAST_TAGGRAM_ATOL = 1e-6


def test_fast_front_end_equals_the_direct_conv_up_to_rounding(clips):
    fast, _ = load_pretrained("musicnn-mtt")
    direct = musicnn_tf.set_conv_algorithm(load_pretrained("musicnn-mtt")[0], "direct")
    batch = torch.from_numpy(Tagger.from_pretrained("musicnn-mtt").windows(clips["chords"])[0])
    with torch.no_grad():
        got, want = fast.features(batch), direct.features(batch)
    assert all(block._fast_cache is not None for block in fast.front)  # the fast path ran
    assert all(block._fast_cache is None for block in direct.front)
    for layer in ("timbral", "temporal", "cnn3", "penultimate"):
        scale = want[layer].abs().max()
        assert (got[layer] - want[layer]).abs().max() <= FAST_LAYER_RTOL * scale, layer
    taggram_gap = (torch.sigmoid(got["logits"]) - torch.sigmoid(want["logits"])).abs().max()
    assert taggram_gap <= FAST_TAGGRAM_ATOL
    fast.train()  # training runs the graph's literal order: no fast operator is built
    for block in fast.front:
        block._fast_cache = None
    fast(batch[:2])
    assert all(block._fast_cache is None for block in fast.front)


def test_init_from_pretrained_keeps_or_replaces_the_head():
    from tagtrain.models.registry import create_model
    from tagtrain.pretrained.finetune import init_from_pretrained
    from tagtrain.pretrained.musicnn import musicnn_labels

    published, _ = load_pretrained("musicnn-msd")
    msd = musicnn_labels("MSD_LABELS")
    same = create_model("musicnn_tf", 50, seed=0)
    assert "its output layer" in init_from_pretrained(
        same, "musicnn_tf", "pretrained:musicnn-msd", msd
    )
    for key, value in published.state_dict().items():
        assert torch.equal(same.state_dict()[key], value), key
    other = create_model("musicnn_tf", 7, seed=0)
    fresh_head = other.classifier.weight.clone()
    line = init_from_pretrained(other, "musicnn_tf", "pretrained:musicnn-msd", list("abcdefg"))
    assert "new 7-tag output layer" in line
    assert torch.equal(other.classifier.weight, fresh_head)
    assert torch.equal(other.dense.weight, published.dense.weight)
    with pytest.raises(Exception, match="holds vgg_tf weights"):
        init_from_pretrained(other, "musicnn_tf", "pretrained:vgg-msd", list("abcdefg"))
    with pytest.raises(Exception, match="unknown pretrained model"):
        init_from_pretrained(other, "musicnn_tf", "pretrained:nope", list("abcdefg"))


@pytest.mark.parametrize("numpy_major", [1, 2])
def test_mp3_tagged_as_the_official_does(numpy_major):
    """A real MP3 (44.1 kHz stereo): decoding, downmix and resampling as librosa.load."""
    mp3 = FIXTURES / "chords44k.mp3"
    record = json.loads((FIXTURES / f"golden.numpy{numpy_major}.json").read_text())
    assert hashlib.sha256(mp3.read_bytes()).hexdigest() == record["mp3"]["sha256"]
    official = np.load(FIXTURES / f"mp3.numpy{numpy_major}.npz")
    for name in ("musicnn-mtt", "vgg-msd"):
        tagger = Tagger.from_pretrained(name, compression=f"numpy{numpy_major}")
        taggram = np.asarray(tagger.predict(mp3)["taggram"])
        ref = official[f"{TF_NAME[name]}.taggram"]
        assert taggram.shape == ref.shape == (2, 50)
        assert np.abs(taggram - ref).max() <= E2E_ATOL, name


def test_train_init_pretrained_fine_tunes_from_the_published_weights(tmp_path):
    from pipelines.core.features import FeatureConfig
    from tagtrain.loader.synthetic import make_dataset
    from tagtrain.models.musicnn_tf import MUSICNN_TF_INPUT
    from tagtrain.pretrained.musicnn import musicnn_labels

    spec = MUSICNN_TF_INPUT
    features = FeatureConfig(
        sample_rate=spec.sample_rate, n_fft=spec.n_fft, hop=spec.hop, n_mels=spec.n_mels,
        f_min=spec.f_min, f_max=spec.f_max, log_scale=spec.log_scale,
        mel_scale=spec.mel_scale, mel_norm=spec.mel_norm, pad_mode=spec.pad_mode,
    )  # fmt: skip
    data = tmp_path / "data"
    make_dataset(data, {"train": [4], "valid": [2]}, stored=("mel",), features=features)
    out = tmp_path / "run"
    result = run_cli(
        "tagtrain", "train", "--data", str(data), "--out", str(out), "--model", "musicnn_tf",
        "--init", "pretrained:musicnn-msd", "--epochs", "1", "--batch-size", "2",
        "--workers", "0", "--val-chunks", "1", "--no-progress", "--lr", "1e-12",
        "--device", "cpu",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "new 5-tag output layer" in result.stdout + result.stderr
    published, _ = load_pretrained("musicnn-msd")
    trained = torch.load(out / "last.pt", map_location="cpu", weights_only=True)["model"]
    # A learning rate of 1e-12: the published body is what training started from.
    assert torch.allclose(trained["dense.weight"], published.dense.weight, atol=1e-6)
    assert len(musicnn_labels("MSD_LABELS")) == 50 and trained["classifier.weight"].shape[0] == 5


def test_predict_many_gives_predicts_records_in_order_with_errors_in_place(clips, tmp_path):
    """Windows of several files share forwards and decoding runs ahead on a thread; the
    records are predict's, file by file, and a broken file is its error, in its place."""
    broken = tmp_path / "broken.mp3"
    broken.write_bytes(b"not audio at all" * 10)
    paths = [clips["melody"], broken, clips["beat"], clips["chords"]]
    tagger = Tagger.from_pretrained("musicnn-mtt", batch_size=3)  # forwards span files
    results = list(tagger.predict_many(paths, prefetch=2))
    assert [p for p, _ in results] == paths
    assert isinstance(results[1][1], Exception) and "broken.mp3" in str(results[1][1])
    for path, record in results[:1] + results[2:]:
        alone = tagger.predict(path)
        assert record["windows_s"] == alone["windows_s"] and record["path"] == str(path)
        assert np.abs(np.asarray(record["taggram"]) - alone["taggram"]).max() <= NET_ATOL
        ref = golden(path.stem)["MTT_musicnn.taggram"]
        assert np.abs(np.asarray(record["taggram"]) - ref).max() <= E2E_ATOL


def test_vgg_pool_first_is_bit_identical_to_the_graph_order(models):
    """Eval mode max-pools VGG's conv output before ReLU and BN, negating the channels
    whose BN decreases; it must give exactly the graph order's values."""
    model = models["vgg-msd"]
    x = torch.from_numpy(frontend.cut_windows(golden("chords")["mel"], [0, 187]))
    with torch.no_grad():
        h = model.input_bn(x.transpose(1, 2).unsqueeze(1))
        for i, (conv, bn, pool) in enumerate(zip(model.convs, model.bns, model.pools)):
            literal = pool(bn(musicnn_tf.tf_relu(conv(h))))
            pooled_first = model.pooled_first(conv, bn, pool, h)  # None: it fell back
            assert pooled_first is not None and torch.equal(pooled_first, literal)
            assert torch.equal(model.block(i, h), literal)
            h = literal
    assert all((musicnn_tf.bn_scale_sign(bn) < 0).any() for bn in model.bns)
