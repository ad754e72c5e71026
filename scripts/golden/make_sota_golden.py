"""Golden fixtures from the REFERENCE sota models, for tests/test_import_weights.py.

Dev-only. It imports the unmodified model classes of minzwon/sota-music-tagging-models
(`training/model.py`, `modules.py`, `attention_modules.py`; the fixtures were made from
commit 3abe8be7e0620235edfd6f14a1175337c3775e0c, the last one to touch them), fills every
tensor of each of the nine architectures from a fixed seed in state-dict order
(tests/sota_states.py), runs a fixed seeded input through the reference and writes
tests/fixtures/sota/golden.json (per model: the reference class and arguments, the
key/shape/dtype table, the input) and golden.npz (`MODEL.logits`, the output layer's
values before the sigmoid, and `MODEL.probabilities`, the reference's sigmoid output).

The reference computes its input inside the model with torchaudio, which is not installed
here and cannot be (no wheel for this torch offline). The golden starts after the
spectrogram, so a stand-in `torchaudio` module is installed for the run: `MelSpectrogram`
and `Spectrogram` keep torchaudio's buffers (`spectrogram.window` [n_fft], `mel_scale.fb`
[n_fft/2+1, n_mels], `window`), so the state dicts have a real checkpoint's keys, and
pass their input through (the input is a mel or STFT power); `AmplitudeToDB` is
torchaudio's formula for power (10 log10(max(x, 1e-10)), ref 1, no top_db). With
`--published DIR` the key tables are checked against real published checkpoints
(`DIR/{mtat,msd,jamendo}_{fcn,crnn,musicnn}.pth`, e.g. the repository's
`models/mtat/fcn/best_model.pth` copied under those names): same keys, order, shapes.

It runs in the project's venv (torch, numpy, librosa); nothing is installed:

    git clone https://github.com/minzwon/sota-music-tagging-models /tmp/sota
    git -C /tmp/sota checkout 3abe8be7e0620235edfd6f14a1175337c3775e0c
    PYTHONPATH=$PWD .venv/bin/python scripts/golden/make_sota_golden.py \\
        --reference /tmp/sota/training [--published DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import sys
import types
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "fixtures" / "sota"
REFERENCE_COMMIT = "3abe8be7e0620235edfd6f14a1175337c3775e0c"
REFERENCE_FILES = ("model.py", "modules.py", "attention_modules.py")

# our model -> (reference class, its arguments, input kind, input shape after the front end)
GOLDEN = {
    "fcn": ("FCN", {}, "power", (2, 96, 1819)),
    "crnn": ("CRNN", {}, "power", (2, 96, 1819)),
    "musicnn": ("Musicnn", {}, "power", (2, 96, 188)),
    "musicnn_big": ("Musicnn", {"dataset": "msd", "n_class": 20}, "power", (2, 96, 188)),
    "samplecnn": ("SampleCNN", {}, "pcm", (2, 59049)),
    "samplecnn_se": ("SampleCNNSE", {}, "pcm", (2, 59049)),
    "short_chunk_cnn": ("ShortChunkCNN", {}, "power", (2, 128, 231)),
    "short_chunk_resnet": ("ShortChunkCNN_Res", {}, "power", (2, 128, 231)),
    "cnnsa": ("CNNSA", {}, "power", (2, 128, 256)),
    "hcnn": ("HarmonicCNN", {}, "power", (2, 257, 313)),
}
PUBLISHED = {"fcn": "fcn", "crnn": "crnn", "musicnn": "musicnn"}


# --- the torchaudio stand-in ------------------------------------------------------------


class Spectrogram(nn.Module):
    def __init__(self, n_fft=400, win_length=None, window_fn=torch.hann_window, **_):
        super().__init__()
        self.register_buffer("window", window_fn(win_length or n_fft))

    def forward(self, power):  # the golden input is already the power spectrogram
        return power


class MelScale(nn.Module):
    def __init__(self, n_stft: int, n_mels: int):
        super().__init__()
        self.register_buffer("fb", torch.zeros(n_stft, n_mels))


class MelSpectrogram(nn.Module):
    def __init__(self, sample_rate=16000, n_fft=400, n_mels=128, **_):
        super().__init__()
        self.spectrogram = Spectrogram(n_fft=n_fft)
        self.mel_scale = MelScale(n_fft // 2 + 1, n_mels)

    def forward(self, power):  # the golden input is already the mel power
        return power


class AmplitudeToDB(nn.Module):
    def forward(self, x):
        return 10.0 * torch.log10(torch.clamp(x, min=1e-10))


def install_torchaudio_stand_in() -> None:
    transforms = types.ModuleType("torchaudio.transforms")
    for cls in (Spectrogram, MelSpectrogram, AmplitudeToDB):
        setattr(transforms, cls.__name__, cls)
    module = types.ModuleType("torchaudio")
    module.transforms = transforms
    sys.modules["torchaudio"] = module
    sys.modules["torchaudio.transforms"] = transforms


# --- running the reference ----------------------------------------------------------------


def key_table(state: dict) -> list[list]:
    return [[k, list(v.shape), str(v.dtype).removeprefix("torch.")] for k, v in state.items()]


def run_reference(reference, ours: str, spec, seeded_state, seeded_input) -> tuple[dict, dict]:
    from tagtrain.pretrained.importers.sota import ARCHITECTURES

    class_name, kwargs, kind, shape = spec
    model = getattr(reference, class_name)(**kwargs)
    table = key_table(model.state_dict())
    model.load_state_dict(seeded_state(table), strict=True)
    model.eval()
    head = ARCHITECTURES[ours].head.rsplit(".", 1)[0]
    captured = {}
    getattr(model, head).register_forward_hook(lambda m, i, o: captured.update(logits=o))
    with torch.no_grad():
        probabilities = model(seeded_input(kind, shape))
    info = {"reference": class_name, "kwargs": kwargs, "input": {"kind": kind, "shape": shape}}
    info["tensors"] = table
    arrays = {
        f"{ours}.logits": captured["logits"].numpy(),
        f"{ours}.probabilities": probabilities.numpy(),
    }
    return info, arrays


def check_published(folder: Path, tables: dict) -> list[dict]:
    """Our reference tables against real published checkpoints: same keys, order, shapes."""
    checked = []
    for path in sorted(folder.glob("*_*.pth")):
        arch = path.stem.split("_", 1)[1]
        if arch not in PUBLISHED:
            continue
        real = torch.load(path, map_location="cpu", weights_only=True)
        want = tables[PUBLISHED[arch]]
        have = key_table(real)
        if [k for k, *_ in have] != [k for k, *_ in want] or have != want:
            sys.exit(f"{path}: keys/shapes differ from the reference {arch} table")
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        checked.append({"file": path.name, "sha256": digest, "model": PUBLISHED[arch]})
    return checked


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reference", required=True, help="the reference's training/ folder")
    parser.add_argument("--published", help="folder of published checkpoints to check")
    args = parser.parse_args()
    folder = Path(args.reference).resolve()
    install_torchaudio_stand_in()
    sys.path[:0] = [str(folder), str(ROOT / "tests"), str(ROOT)]
    from sota_states import INPUT_SEED, STATE_SEED, seeded_input, seeded_state

    with contextlib.redirect_stdout(io.StringIO()):  # attention_modules' apex notice
        import model as reference

    golden = {
        "reference": {
            "repository": "minzwon/sota-music-tagging-models",
            "commit": REFERENCE_COMMIT,
            "sha256": {
                f: hashlib.sha256((folder / f).read_bytes()).hexdigest() for f in REFERENCE_FILES
            },
        },
        "state_seed": STATE_SEED,
        "input_seed": INPUT_SEED,
        "torch": torch.__version__,
        "models": {},
    }
    arrays = {}
    for ours, spec in GOLDEN.items():
        info, out = run_reference(reference, ours, spec, seeded_state, seeded_input)
        golden["models"][ours] = info
        arrays.update(out)
        print(f"{ours}: {spec[0]}, {len(info['tensors'])} tensors")
    if args.published:
        tables = {k: v["tensors"] for k, v in golden["models"].items()}
        golden["published_checked"] = check_published(Path(args.published), tables)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "golden.json").write_text(json.dumps(golden, indent=1) + "\n")
    np.savez_compressed(OUT / "golden.npz", **arrays)
    print(f"wrote {OUT}/golden.json and golden.npz")


if __name__ == "__main__":
    main()
