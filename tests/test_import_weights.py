"""`import-weights --from sota`: the nine seed-000 architectures imported from reference
state dicts give the reference's own outputs (golden fixtures written by
scripts/golden/make_sota_golden.py from minzwon/sota-music-tagging-models' model classes),
and the command writes a run that `tag --run` uses.

Tolerance: the reference and our model run in float32 on the same input after the front
end; the operations are the same but not always the same kernels (mean vs AvgPool,
nn.LayerNorm vs BERT's hand-written one, amax vs MaxPool), so the logits agree to
rounding: |ours - reference| <= 1e-5 * max(1, max |reference|) (measured: at most
8.4e-7 of it). A tensor in the wrong layer (two batch norms swapped, attention
projections exchanged, the HCNN's centre frequencies off by a fifth of a semitone) moves
the logits by far more (test_a_swapped_tensor_moves_the_logits_far_beyond_the_tolerance).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from pipelines.core.features import mel_filterbank
from tagtrain.__main__ import main
from tagtrain.inference.trained_run import load_run
from tagtrain.models.registry import create_model, get_entry
from tagtrain.pretrained.importers import WeightsImportError, importer
from tests.sota_states import seeded_input, seeded_state, to_db

FIXTURES = Path(__file__).parent / "fixtures" / "sota"
GOLDEN = json.loads((FIXTURES / "golden.json").read_text())
ARRAYS = np.load(FIXTURES / "golden.npz")
CLIP = Path(__file__).parent / "fixtures" / "musicnn" / "chords44k.mp3"
SOTA = importer("sota")


def with_front_end(state: dict[str, torch.Tensor], model: str) -> dict[str, torch.Tensor]:
    """The seeded front-end buffers replaced by torchaudio's values for the model (our
    front end's: tests/test_front_end_reference.py), as a real checkpoint has them. The
    golden input comes after the front end, so the logits do not depend on them."""
    spec = get_entry(model).input_spec
    fb = mel_filterbank(
        spec.sample_rate, spec.n_fft, spec.n_mels, spec.f_min, spec.f_max, "htk", "none"
    ).T
    if "spec.mel_scale.fb" in state:
        state["spec.mel_scale.fb"] = fb.clone()
    for key in ("spec.spectrogram.window", "hstft.spec.window"):
        if key in state:
            state[key] = torch.hann_window(state[key].shape[0])
    return state


def reference_state(model: str) -> dict[str, torch.Tensor]:
    table = GOLDEN["models"][model]["tensors"]
    return with_front_end(seeded_state(table, GOLDEN["state_seed"]), model)


def our_logits(model_name: str, net: torch.nn.Module, monkeypatch) -> torch.Tensor:
    """Our forward on the golden input (after the reference's spectrogram)."""
    spec = GOLDEN["models"][model_name]["input"]
    x = seeded_input(spec["kind"], spec["shape"], GOLDEN["input_seed"])
    if model_name == "hcnn":
        # The golden input is the STFT power: our front end's STFT is replaced by it,
        # its harmonic filterbank (with the imported Q) and dB run as they are.
        import tagtrain.models.hcnn as hcnn_module

        power = x
        monkeypatch.setattr(
            hcnn_module, "power_spectrogram", lambda pcm, n_fft, hop, pad_mode="reflect": power
        )
        x = torch.zeros(power.shape[0], 80000)
    elif spec["kind"] == "power":
        x = to_db(x)
    with torch.no_grad():
        return net.eval()(x)


def assert_golden(model_name: str, logits: torch.Tensor) -> None:
    golden = torch.from_numpy(ARRAYS[f"{model_name}.logits"])
    scale = max(1.0, float(golden.abs().max()))
    torch.testing.assert_close(logits, golden, rtol=0, atol=1e-5 * scale)
    probabilities = torch.from_numpy(ARRAYS[f"{model_name}.probabilities"])
    torch.testing.assert_close(torch.sigmoid(logits), probabilities, rtol=0, atol=1e-5)


def test_golden_covers_the_nine_reference_architectures():
    references = {m["reference"] for m in GOLDEN["models"].values()}
    assert references == {
        "FCN", "Musicnn", "CRNN", "SampleCNN", "SampleCNNSE", "ShortChunkCNN",
        "ShortChunkCNN_Res", "CNNSA", "HarmonicCNN",
    }  # fmt: skip
    # The outputs are informative: logits spread over tags and differ between inputs.
    for name in GOLDEN["models"]:
        logits = ARRAYS[f"{name}.logits"]
        assert logits.std() > 0.5 and np.abs(logits[0] - logits[1]).max() > 0.1, name


@pytest.mark.parametrize("model_name", sorted(GOLDEN["models"]))
def test_imported_weights_give_the_reference_outputs(model_name, monkeypatch):
    converted = SOTA.convert(reference_state(model_name), model_name)
    n_classes = int(ARRAYS[f"{model_name}.logits"].shape[1])
    net = create_model(model_name, n_classes, seed=None)
    net.load_state_dict(converted, strict=True)
    assert_golden(model_name, our_logits(model_name, net, monkeypatch))


def test_a_swapped_tensor_moves_the_logits_far_beyond_the_tolerance(monkeypatch):
    # What the golden guards against: two same-shaped tensors in each other's places.
    state = reference_state("short_chunk_resnet")
    a, b = "layer3.bn_1.running_var", "layer3.bn_2.running_var"
    state[a], state[b] = state[b], state[a]
    net = create_model("short_chunk_resnet", 50, seed=None)
    net.load_state_dict(SOTA.convert(state, "short_chunk_resnet"))
    logits = our_logits("short_chunk_resnet", net, monkeypatch)
    golden = torch.from_numpy(ARRAYS["short_chunk_resnet.logits"])
    scale = max(1.0, float(golden.abs().max()))
    assert float((logits - golden).abs().max()) > 100 * 1e-5 * scale


def test_front_end_buffers_are_checked_not_loaded():
    state = reference_state("fcn")
    with pytest.raises(WeightsImportError, match=r"'spec.mel_scale.fb' has shape \(257, 96\)"):
        SOTA.convert(state, "fcn_128")  # a 96-band checkpoint into the 128-band model
    del state["spec.spectrogram.window"]
    with pytest.raises(WeightsImportError, match="spec.spectrogram.window"):
        SOTA.convert(state, "fcn")


@pytest.mark.parametrize(
    ("key", "value", "named"),
    [
        ("spec.mel_scale.fb", mel_filterbank(16000, 512, 96, 0.0, 8000.0, "slaney", "slaney").T,
         "is mel_scale slaney, mel_norm slaney; the model's input is mel_scale htk"),
        ("spec.mel_scale.fb", mel_filterbank(16000, 512, 96, 0.0, 7000.0, "htk", "none").T,
         "is another mel filterbank"),
        ("spec.spectrogram.window", torch.hann_window(512, periodic=False),
         "is a symmetric Hann window"),
        ("spec.spectrogram.window", torch.ones(512), "is a window"),
    ],
)  # fmt: skip
def test_a_checkpoint_of_another_front_end_is_refused_naming_it(key, value, named):
    state = reference_state("musicnn") | {key: value}
    with pytest.raises(WeightsImportError, match="trained on another front end") as caught:
        SOTA.convert(state, "musicnn")
    assert named in str(caught.value) and "\n" not in str(caught.value)


def test_the_hcnn_window_is_checked():
    state = reference_state("hcnn") | {"hstft.spec.window": torch.ones(512)}
    with pytest.raises(WeightsImportError, match="'hstft.spec.window' is a window"):
        SOTA.convert(state, "hcnn")


@pytest.mark.parametrize("model_name", sorted(GOLDEN["models"]))
def test_a_checkpoint_imported_into_another_architecture_names_the_right_model(model_name):
    state = reference_state(model_name)
    assert SOTA.guess_model(state) == model_name
    other = "short_chunk_cnn" if model_name != "short_chunk_cnn" else "fcn"
    with pytest.raises(WeightsImportError, match=f"looks like .*: try --model {model_name}$"):
        SOTA.convert(state, other)


def _save(state: dict, path: Path) -> Path:
    torch.save(state, path)
    return path


def _import(capsys, *argv) -> tuple[int, str, str]:
    code = main(["import-weights", "--from", "sota", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def test_import_command_writes_a_run_that_tags_a_clip(tmp_path, capsys, monkeypatch):
    path = _save({"state_dict": reference_state("musicnn")}, tmp_path / "best_model.pth")
    run_dir = tmp_path / "run"
    code, out, err = _import(
        capsys, path, "--model", "musicnn", "--vocabulary", "mtt", "--out", run_dir
    )
    assert code == 0, err
    assert "musicnn" in out and str(run_dir) in out
    provenance = json.loads((run_dir / "imported.json").read_text())
    assert provenance["source"] == "sota" and provenance["path"] == str(path.resolve())
    assert len(provenance["sha256"]) == 64

    run = load_run(run_dir, device="cpu")
    assert run.model_name == "musicnn" and len(run.vocabulary) == 50
    assert run.vocabulary[:3] == ["guitar", "classical", "slow"]
    # The reference's MTAT order (split/mtat/tags.npy), not manifests' (female voice, metal).
    assert run.vocabulary[47:49] == ["metal", "female voice"]
    assert run.plan.standardize == "none" and run.mean is None
    # The run reads the pipeline's mel (torchaudio's, as the checkpoint was trained on),
    # and the network on it is the reference's.
    assert run.plan.kind == "mel" and run.plan.member == "mel.npy" and run.spec.kind == "mel"
    assert "front_end" not in provenance
    assert_golden("musicnn", our_logits("musicnn", run.model, monkeypatch))

    code = main(["tag", str(CLIP), "--run", str(run_dir), "--json", "--device", "cpu"])
    out, err = capsys.readouterr()
    assert code == 0, err
    (record,) = map(json.loads, out.splitlines())
    assert record["path"] == str(CLIP) and record["windows"] >= 1
    tags = [t for t, _ in record["top"]]
    probabilities = [p for _, p in record["top"]]
    assert len(tags) == 10 and set(tags) <= set(run.vocabulary)
    assert probabilities == sorted(probabilities, reverse=True)
    assert all(0.0 <= p <= 1.0 for p in probabilities)


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ("shape", "'layers.2.conv.weight' has shape (51, 1, 65)"),
        ("extra", "unexpected tensor 'layer4.conv.weight'"),
        ("missing", "no tensor 'layer2.bn.running_mean'"),
    ],
)
def test_a_mismatching_tensor_is_a_one_line_exit_2_naming_it(tmp_path, capsys, change, named):
    state = reference_state("musicnn")
    if change == "shape":
        state["layers.2.conv.weight"] = torch.zeros(51, 1, 65)  # Conv_H 129 -> 65 frames
    elif change == "extra":
        state["layer4.conv.weight"] = torch.zeros(64, 64, 7)
    else:
        del state["layer2.bn.running_mean"]
    path = _save(state, tmp_path / "model.pth")
    code, out, err = _import(
        capsys, path, "--model", "musicnn", "--vocabulary", "mtt", "--out", tmp_path / "r"
    )
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and named in err, err
    assert not (tmp_path / "r" / "best.pt").exists()


def test_unknown_model_and_wrong_vocabulary_are_one_line_errors(tmp_path, capsys):
    path = _save(reference_state("fcn"), tmp_path / "fcn.pth")
    code, _, err = _import(
        capsys, path, "--model", "vgg_tf", "--vocabulary", "mtt", "--out", tmp_path
    )
    assert code == 2 and "has no weights for model 'vgg_tf'" in err
    assert len(err.strip().splitlines()) == 1
    tags = tmp_path / "tags.txt"
    tags.write_text("\n".join(f"tag{i}" for i in range(49)) + "\n")
    code, _, err = _import(
        capsys, path, "--model", "fcn", "--vocabulary", tags, "--out", tmp_path / "r"
    )
    assert code == 2 and "49 tags" in err and "50" in err


def test_a_file_without_a_state_dict_is_refused(tmp_path, capsys):
    path = _save({"epoch": 3, "optimizer": {"lr": 0.1}}, tmp_path / "x.pth")
    code, _, err = _import(
        capsys, path, "--model", "fcn", "--vocabulary", "mtt", "--out", tmp_path / "r"
    )
    assert code == 2 and "no state dict" in err
    assert math.isfinite(len(err)) and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(("model_name", "head"), [("samplecnn", "dense."), ("musicnn", "dense2.")])
def test_evaluate_takes_an_imported_run(demo_dataset, tmp_path, capsys, model_name, head):
    # A checkpoint whose head has the demo dataset's tags, named by a JSON list; musicnn
    # on the shards' mel, SampleCNN on the PCM itself.
    vocabulary = json.loads((demo_dataset / "dataset.json").read_text())["vocabulary"]
    table = [
        [key, [len(vocabulary), *shape[1:]] if key.startswith(head) else shape, dtype]
        for key, shape, dtype in GOLDEN["models"][model_name]["tensors"]
    ]
    path = _save(with_front_end(seeded_state(table), model_name), tmp_path / "model.pth")
    (tmp_path / "tags.json").write_text(json.dumps(vocabulary))
    run_dir = tmp_path / "run"
    code, _, err = _import(
        capsys, path, "--model", model_name, "--vocabulary", tmp_path / "tags.json",
        "--out", run_dir,
    )  # fmt: skip
    assert code == 0, err
    code = main(
        ["evaluate", "--run", str(run_dir), "--data", str(demo_dataset), "--split", "test",
         "--chunks", "1", "--workers", "0", "--batch-size", "16", "--device", "cpu"]
    )  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0, err
    (metrics,) = run_dir.glob("metrics*.json")
    values = json.loads(metrics.read_text())
    assert values["model"] == model_name and values["checkpoint"] == "best.pt"
    assert values["tags"] == len(vocabulary) and values["tracks"] > 0
    assert 0.0 <= values["roc_auc"] <= 1.0


def test_containers_are_unwrapped():
    from tagtrain.pretrained.imported_run import unwrap

    state = {"a.weight": torch.zeros(2), "b.bias": torch.ones(1)}
    assert unwrap(state, "f") == state
    assert unwrap({"epoch": 4, "state_dict": state}, "f") == state  # Lightning
    assert unwrap({"model": {"state_dict": state}, "step": 1}, "f") == state
    parallel = {f"module.{k}": v for k, v in state.items()}  # DataParallel
    assert unwrap({"model": parallel}, "f") == state
    with pytest.raises(WeightsImportError, match="no state dict"):
        unwrap([state], "f")
