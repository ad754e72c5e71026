"""The patchout spectrogram transformer: its patch grid on the pipeline's mel, structured
patchout, block embeddings, the training objective's pieces, and a tiny preset trained (and
resumed) on demo shards prepared with the paper's features, embedded and probed."""

from __future__ import annotations

import collections
import csv
import dataclasses
import json
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from pipelines.core.features import FeatureConfig, log_mel
from tagtrain.__main__ import main
from tagtrain.inference.trained_run import load_run
from tagtrain.loader.index import multi_hot, read_index
from tagtrain.models.patchout import even_keep, grid_size, patchout_input
from tagtrain.models.registry import create_model, get_entry
from tagtrain.run import checkpoint as ckpt
from tagtrain.training.patchout import (
    PatchoutOptions,
    TagBalance,
    lr_factor,
    mixup,
    spec_mask,
)
from tests.conftest import TEST_SEED, run_cli, tone


def tiny(**config):
    return create_model("patchout_tiny", n_classes=5, **config)


def mel_batch(batch: int = 2, frames: int = 625, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 96, frames, generator=torch.Generator().manual_seed(seed))


# --- the patch grid ----------------------------------------------------------------------


def test_ten_seconds_of_the_pipelines_mel_make_9_by_61_patches():
    spec = get_entry("patchout").input_spec
    assert (spec.kind, spec.n_mels, spec.sample_rate, spec.n_fft, spec.hop) == (
        "mel", 96, 16000, 512, 256,
    )  # fmt: skip
    assert (spec.log_scale, spec.f_max, spec.seconds) == ("log10_1p", 8000.0, 10.0)
    # MAEST's 10 s chunk is 625 frames: the pipeline's centred frames give that for 624 hops.
    audio = tone(440.0, spec.samples / spec.sample_rate, spec.sample_rate)
    mel = log_mel(audio, FeatureConfig(n_mels=96, log_scale="log10_1p"))
    assert mel.shape == (96, 625) == (spec.n_mels, spec.frames)
    model = create_model("patchout", n_classes=3).eval()
    assert model.grid == grid_size(96, 625) == (9, 61)
    with torch.no_grad():
        tokens, rows, cols = model.patch_tokens(mel[None].float())
        sequence = model.sequence(mel[None].float())
    assert tokens.shape == (1, 9 * 61, 768)
    assert (len(rows), len(cols)) == (9, 61)
    assert sequence.shape == (1, 2 + 9 * 61, 768)  # CLS and distillation tokens first


@pytest.mark.parametrize(
    "seconds, frames, columns, dropped", [(5, 312, 30, 15), (10, 625, 61, 30), (20, 1250, 124, 60), (30, 1875, 186, 90)]
)  # fmt: skip
def test_input_lengths_and_default_time_patchout_follow_maest(seconds, frames, columns, dropped):
    assert patchout_input(seconds).frames == frames
    model = tiny(seconds=seconds)
    assert model.grid == (9, columns)
    assert model.time_patchout == dropped and model.freq_patchout == 0
    assert model.input_spec.frames == frames


# --- structured patchout -----------------------------------------------------------------


def test_training_patchout_drops_exactly_the_configured_rows_and_columns():
    model = tiny(freq_patchout=3, time_patchout=30)
    x = mel_batch()
    model.eval()
    with torch.no_grad():
        full, rows, cols = model.patch_tokens(x)
    assert full.shape == (2, 9 * 61, 96) and len(rows) == 9 and len(cols) == 61
    grid = full.reshape(2, 9, 61, 96)

    model.train()
    kept = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        with torch.no_grad():
            tokens, rows, cols = model.patch_tokens(x)
        assert tokens.shape == (2, 6 * 31, 96)
        assert len(set(rows.tolist())) == 6 and len(set(cols.tolist())) == 31
        assert rows.tolist() == sorted(rows.tolist()) and cols.tolist() == sorted(cols.tolist())
        # The tokens that remain are the full grid's at exactly those rows and columns.
        expected = grid[:, rows][:, :, cols].reshape(2, -1, 96)
        torch.testing.assert_close(tokens, expected)
        kept.append(cols.tolist())
    assert kept[0] != kept[1]  # a new random choice per batch
    torch.manual_seed(1)
    assert model.sequence(x).shape == (2, 2 + 6 * 31, 96)


def test_inference_patchout_is_optional_evenly_spaced_and_deterministic():
    model = tiny(freq_patchout=3, time_patchout=30).eval()
    x = mel_batch()
    with torch.no_grad():
        assert model.patch_tokens(x)[0].shape[1] == 9 * 61  # off by default at inference
        model.set_patchout(inference=True)
        a, rows, cols = model.patch_tokens(x)
        b = model.patch_tokens(x)[0]
    assert a.shape == (2, 6 * 31, 96)
    torch.testing.assert_close(a, b)
    assert cols.tolist() == list(range(0, 61, 2))  # 31 of 61 columns: every other one
    assert rows.tolist() == even_keep(9, 3).tolist() and rows[0] == 0 and rows[-1] == 8
    with torch.no_grad():
        logits = model(x)
    assert logits.shape == (2, 5) and torch.isfinite(logits).all()
    with pytest.raises(ValueError, match="time patchout"):
        model.set_patchout(time=61)
    with pytest.raises(ValueError, match="freq patchout"):
        model.set_patchout(freq=9)


# --- embeddings --------------------------------------------------------------------------


def test_embeddings_stack_cls_distillation_and_mean_patch_token_from_any_block():
    model = tiny().eval()
    x = mel_batch(3)
    with torch.no_grad():
        final = model.embed(x)
        assert final.shape == (3, 3 * 96) == (3, model.embed_dim)
        torch.testing.assert_close(model.classifier(final), model(x))
        per_block = [model.embed(x, block=b) for b in range(4)]
        tokens = model.blocks[0](model.sequence(x))
    for e in per_block:
        assert e.shape == (3, 288) and torch.isfinite(e).all()
    expected = torch.cat([tokens[:, 0], tokens[:, 1], tokens[:, 2:].mean(dim=1)], dim=1)
    torch.testing.assert_close(per_block[0], expected)
    assert not torch.allclose(per_block[0], per_block[3])
    with torch.no_grad():
        torch.testing.assert_close(model.embed(x, block=-1), per_block[3])
    assert not torch.allclose(final, per_block[3])  # the final embedding is after the norm
    with pytest.raises(ValueError, match="block"):
        model.embed(x, block=4)


# --- the objective's pieces --------------------------------------------------------------


def test_learning_rate_warms_up_then_ramps_down_linearly():
    o = PatchoutOptions()  # MAEST: warm-up 5, ramp-down from 50 over 50 epochs to 0.01
    assert lr_factor(0.0, o) == pytest.approx(math.exp(-5.0))
    rising = [lr_factor(e, o) for e in (0.0, 1.0, 2.5, 4.0, 5.0)]
    assert rising == sorted(rising) and rising[-1] == 1.0
    assert lr_factor(30.0, o) == lr_factor(50.0, o) == 1.0
    assert lr_factor(75.0, o) == pytest.approx(0.01 + 0.99 * 0.5)
    assert lr_factor(100.0, o) == lr_factor(130.0, o) == pytest.approx(0.01)


def test_masks_zero_one_band_and_one_span_per_sample():
    torch.manual_seed(0)
    x = torch.ones(32, 96, 625)
    out = spec_mask(x, 20, 60)
    zero = out == 0
    assert zero.any()
    for z in zero:
        rows, cols = z.all(dim=1), z.all(dim=0)
        assert torch.equal(z, rows[:, None] | cols[None, :])  # nothing but a band and a span
        for line, widest in ((rows, 20), (cols, 60)):
            idx = torch.nonzero(line).flatten()
            assert len(idx) < widest
            if len(idx):
                assert idx[-1] - idx[0] + 1 == len(idx)  # contiguous
    assert torch.equal(spec_mask(x, 0, 0), x)


def test_mixup_mixes_inputs_labels_and_weights_alike():
    torch.manual_seed(0)
    x = torch.randn(8, 96, 50)
    y = torch.eye(8)  # one class per sample: the mixed labels are the mixing weights
    w = torch.arange(1.0, 9.0)
    mx, my, mw = mixup(x, y, w, alpha=0.3)
    torch.testing.assert_close(my.sum(dim=1), torch.ones(8))
    assert (my.diagonal() >= 0.5).all()  # each sample dominates its own mix
    torch.testing.assert_close(mx, torch.einsum("ij,jft->ift", my, x))
    torch.testing.assert_close(mw, my @ w)
    assert (my.diagonal() < 1).any()


def test_tag_balance_weights_tags_by_inverse_frequency():
    vocabulary = ["common", "rare", "absent"]
    tracks = [["common"], ["common"], ["common", "rare"], []]
    balance = TagBalance.from_tags(tracks, vocabulary)
    w = balance(torch.from_numpy(multi_hot(tracks, vocabulary)))
    # 1/3 per common track, 1/3 + 1 for the rare one; no tags: the smallest tag weight.
    torch.testing.assert_close(w, torch.tensor([1, 1, 4, 1]) / 3 * balance.scale)
    assert float(w.mean()) == pytest.approx(1.0)


# --- end to end on demo shards -----------------------------------------------------------


@pytest.fixture(scope="module")
def mel96(demo_corpus, tmp_path_factory):
    """The demo corpus prepared by the Beam job with the paper's features."""
    out = tmp_path_factory.mktemp("patchout") / "data96"
    result = run_cli(
        "beam_runner.py", "prepare", "--manifest", str(demo_corpus / "manifest.parquet"),
        "--audio-root", str(demo_corpus), "--output", str(out), "--features", "mel",
        "--n-mels", "96", "--log-scale", "log10_1p", "--mel-scale", "slaney",
        "--mel-norm", "slaney", "--shard-size-mb", "8", "--direct_num_workers=2",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def test_tag_balance_on_the_demo_index_has_mean_one_and_equal_mass_per_tag(mel96):
    card = json.loads((mel96 / "dataset.json").read_text())
    rows = [r for r in read_index(str(mel96)).to_pylist() if r["split"] == "train"]
    y = torch.from_numpy(multi_hot([r["tags"] for r in rows], card["vocabulary"]))
    balance = TagBalance.from_tags([r["tags"] for r in rows], card["vocabulary"])
    w = balance(y)
    assert float(w.mean()) == pytest.approx(1.0)
    present = y.sum(dim=0) > 0
    mass = (y * torch.tensor(balance.tag_weights)).sum(dim=0)[present]
    torch.testing.assert_close(mass, torch.ones_like(mass))  # every tag drawn alike
    counts = y.sum(dim=0)
    rare, common = int(counts[present].argmin()), int(counts.argmax())
    assert balance.tag_weights[rare] > balance.tag_weights[common]


TRAIN = [
    "--model", "patchout_tiny", "--batch-size", "8", "--workers", "2", "--shuffle-buffer", "8",
    "--val-chunks", "1", "--lr", "1e-3", "--warmup-epochs", "1",
    "--rampdown-start", "1", "--rampdown-epochs", "1", "--swa-start", "1", "--swa-every", "1",
    "--freq-patchout", "2", "--freq-mask", "20", "--time-mask", "60", "--loss-balance", "tags",
]  # fmt: skip


@pytest.mark.slow
def test_tiny_preset_trains_resumes_with_swa_and_its_block_embeddings_probe(
    mel96, tmp_path, capsys
):
    run_dir = tmp_path / "run"
    common = ["--out", str(run_dir), "--no-progress"]
    assert main(["train-patchout", "--data", str(mel96), "--epochs", "1", *common, *TRAIN]) == 0
    assert "drop 30 of 61 time columns and 2 of 9 frequency rows" in capsys.readouterr().out
    assert main(["train-patchout", "--resume", "--epochs", "2", *common]) == 0
    assert "average of 2 epoch(s)" in capsys.readouterr().out  # restored from last.pt

    summary = json.loads((run_dir / "summary.json").read_text())
    epochs = list(csv.DictReader((run_dir / "metrics.csv").open()))
    assert [int(r["epoch"]) for r in epochs] == [0, 1]
    assert summary["global_step"] == sum(int(r["steps"]) for r in epochs) > 0
    assert json.loads((run_dir / "patchout.json").read_text())["loss_balance"] == "tags"
    config = json.loads((run_dir / "config.json").read_text())
    assert config["schedule"] == "early_stop" and config["patience"] == 0
    last = ckpt.load_checkpoint(run_dir / ckpt.LAST)
    best = ckpt.load_checkpoint(run_dir / ckpt.BEST)
    assert int(last["swa"]["n_averaged"]) == 2
    assert last["schedule"]["phase"] == "adamw"
    assert last["optimizer"]["param_groups"][0]["decoupled_weight_decay"]  # AdamW's state
    swa = {k.removeprefix("module."): v for k, v in last["swa"].items() if k != "n_averaged"}
    # last.pt trains on from the live weights; the average is not them.
    assert any(not torch.equal(last["model"][k], swa[k]) for k in swa)
    if summary["best_epoch"] == 2:  # best.pt is what was validated: the average
        assert all(torch.equal(best["model"][k], swa[k]) for k in swa)
    assert "swa" not in best
    # Evaluation uses the run's inference patchout, as its checkpoint records it: off here,
    # on once the checkpoint says so (load_run knows no model: it replays `model_setup`).
    assert not load_run(run_dir).model.inference_patchout
    assert best["model_setup"] == {"set_patchout": {"time": 30, "freq": 2, "inference": False}}
    saved = (run_dir / ckpt.BEST).read_bytes()
    setup = {"set_patchout": {"time": 30, "freq": 2, "inference": True}}
    ckpt.save_checkpoint(run_dir / ckpt.BEST, {**best, "model_setup": setup})
    restored = load_run(run_dir).model
    assert restored.inference_patchout
    assert (restored.time_patchout, restored.freq_patchout) == (30, 2)
    (run_dir / ckpt.BEST).write_bytes(saved)

    emb = tmp_path / "emb.parquet"
    embed = ["embed", "--run", str(run_dir), "--out", str(emb), "--block", "1", "--chunks", "2"]
    assert main([*embed, "--workers", "0"]) == 0
    table = pq.read_table(emb)
    assert table.num_rows == 70
    assert {len(e) for e in table.column("embedding").to_pylist()} == {3 * 96}

    report_path = tmp_path / "probe.json"
    probe = ["probe", "--embeddings", str(emb), "--data", str(mel96), "--out", str(report_path)]
    assert main([*probe, "--epochs", "20", "--lr", "1e-3"]) == 0
    assert "test: macro ROC-AUC" in capsys.readouterr().out
    report = json.loads(report_path.read_text())
    splits = collections.Counter(table.column("split").to_pylist())
    assert report["dim"] == 288
    assert report["tracks"] == {s: splits[s] for s in ("train", "valid", "test")}
    assert 1 <= report["best_epoch"] <= 20 and len(report["history"]) == 20
    assert 0.0 <= report["test"]["roc_auc"] <= 1.0 and 0.0 <= report["test"]["pr_auc"] <= 1.0


# Checked under ATEN_CPU_CAPABILITY=default, avx2 and avx512 and ONEDNN_MAX_CPU_ISA=AVX2, each
# with TAGKIT_TEST_SEED=0, 1 and 2 (on the demo index): test ROC-AUC 0.950-0.971 with the
# tags (bound 0.9), 0.452-0.521 with noise alone, the same to 3 decimals under every kernel.
# With the tags under 0.3 noise (before) it was 0.913-0.930: the probe's own ceiling on 14
# test tracks (the tags alone, no noise: 0.96-0.98) is near the bound, so the tags' noise
# went down to 0.1 rather than the bound.
@pytest.mark.isa
def test_probe_learns_tags_from_informative_embeddings(mel96, tmp_path):
    # Embeddings that carry the tags (the demo index's, plus noise) must probe well; noise
    # alone must not. Written in the embed command's layout: key, split, tags, embedding.
    card = json.loads((mel96 / "dataset.json").read_text())
    rows = read_index(str(mel96)).to_pylist()
    y = multi_hot([r["tags"] for r in rows], card["vocabulary"])
    rng = np.random.default_rng(TEST_SEED)
    noise = rng.standard_normal((len(rows), 32)).astype(np.float32)
    results = {}
    for name, x in (
        ("tags", np.hstack([y + 0.1 * noise[:, : y.shape[1]], noise])),
        ("noise", noise),
    ):
        path = tmp_path / f"{name}.parquet"
        pq.write_table(
            pa.table(
                {
                    "key": [r["key"] for r in rows],
                    "split": [r["split"] for r in rows],
                    "tags": [r["tags"] for r in rows],
                    "embedding": pa.array(x.tolist(), pa.list_(pa.float32())),
                }
            ),
            path,
        )
        # probe --seed seeds the MLP's initial weights and the shuffles; its dropout draws
        # from torch's global generator, seeded here so that the test is deterministic.
        torch.manual_seed(TEST_SEED)
        status = main(
            ["probe", "--embeddings", str(path), "--data", str(mel96), "--epochs", "40",
             "--lr", "3e-3", "--batch-size", "16", "--seed", str(TEST_SEED)]
        )  # fmt: skip
        assert status == 0
        results[name] = json.loads(path.with_suffix(".probe.json").read_text())["test"]
    assert results["tags"]["roc_auc"] > 0.9
    # The control: noise alone fails the same bound, far below the tags.
    assert not results["noise"]["roc_auc"] > 0.9
    assert results["noise"]["roc_auc"] < results["tags"]["roc_auc"] - 0.2


def test_bad_arguments_are_one_line_errors(tmp_path, capsys, mel96):
    assert (
        main(["probe", "--embeddings", str(tmp_path / "none.parquet"), "--data", str(mel96)]) == 2
    )
    assert main(["probe", "--embeddings", "x.parquet", "--data", str(mel96), "--dropout", "1"]) == 2
    common = ["train-patchout", "--data", str(mel96), "--out", str(tmp_path / "r")]
    assert main([*common, "--model", "short_chunk_cnn"]) == 2
    assert main([*common, "--model", "patchout_tiny", "--time-patchout", "61"]) == 2
    assert main([*common, "--model", "patchout_tiny", "--swa-every", "0"]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line]
    assert len(lines) == 5 and all(line.startswith("python -m tagtrain: error: ") for line in lines)
    assert "trains patchout models" in lines[2] and "time_patchout" in lines[3]


def test_probe_learning_rate_follows_the_papers_schedule_by_default(tmp_path, capsys, mel96):
    # MAEST's downstream MLP: 30 epochs, the rate exponentially raised over the first 10,
    # kept constant, then linearly reduced to its final value at the last epoch.
    from tagtrain.inference.probe import ProbeConfig, train_probe

    rng = np.random.default_rng(0)
    x = {r: rng.standard_normal((24, 6)).astype(np.float32) for r in ("train", "valid", "test")}
    y = {r: (v[:, :3] > 0).astype(np.float32) for r, v in x.items()}
    default = ProbeConfig(device="cpu", batch_size=8)
    assert (default.epochs, default.schedule, default.warmup_epochs) == (30, "paper", 10)
    lrs = [h["lr"] for h in train_probe(x, y, default).history]
    lr = default.lr
    assert len(lrs) == 30
    assert lrs[0] == pytest.approx(lr * math.exp(-5.0))
    assert all(a < b for a, b in zip(lrs[:10], lrs[1:11]))  # raised over epochs 1-10
    ratios = [b / a for a, b in zip(lrs[:9], lrs[1:10])]
    assert all(r > 1.1 for r in ratios)  # multiplicative (exponential) growth
    assert lrs[10:20] == [lr] * 10  # constant
    steps = np.diff([lr, *lrs[20:]])
    assert np.allclose(steps, -(1 - 0.01) * lr / 10)  # linear, equal steps
    assert lrs[-1] == pytest.approx(0.01 * lr)
    constant = ProbeConfig(device="cpu", batch_size=8, epochs=5, schedule="constant")
    assert [h["lr"] for h in train_probe(x, y, constant).history] == [lr] * 5
    # The schedule changes what is learnt, not only what is recorded.
    short = dict(device="cpu", batch_size=8, epochs=12, warmup_epochs=6, rampdown_epochs=6)
    paper_run = train_probe(x, y, ProbeConfig(**short))
    flat_run = train_probe(x, y, ProbeConfig(**short, schedule="constant"))
    assert [h["train_loss"] for h in paper_run.history] != [
        h["train_loss"] for h in flat_run.history
    ]
    common = ["probe", "--embeddings", "x.parquet", "--data", str(mel96)]
    assert main([*common, "--epochs", "15"]) == 2  # 10 + 10 epochs of ramps do not fit
    assert main([*common, "--schedule", "cosine"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line]
    assert len(err) == 2 and "exceed --epochs 15" in err[0] and "--schedule" in err[1]


def test_the_probe_is_reproducible_from_its_seed():
    """--seed fixes the whole probe, its dropout included (drawn from torch's global
    generator, which the probe seeds and then leaves as it was)."""
    from tagtrain.inference.probe import ProbeConfig, train_probe

    rng = np.random.default_rng(0)
    y = {s: (rng.random((40, 3)) < 0.4).astype(np.float32) for s in ("train", "valid", "test")}
    x = {s: np.hstack([v, rng.standard_normal((40, 5))]).astype(np.float32) for s, v in y.items()}
    cfg = ProbeConfig(hidden=16, dropout=0.5, epochs=3, schedule="constant", batch_size=8)
    results = []
    for draw in (1, 2):
        torch.manual_seed(draw)  # a caller's generator in another state each time
        before = torch.get_rng_state()
        results.append(train_probe(x, y, cfg).history)
        assert torch.equal(torch.get_rng_state(), before)
    assert results[0] == results[1]
    other = train_probe(x, y, dataclasses.replace(cfg, seed=1)).history
    assert other != results[0]
