"""Golden fixtures from the REFERENCE transformer taggers, for
tests/test_import_weights_transformers.py.

Dev-only. It runs the unmodified model classes of three fetched snapshots:
minzwon/semi-supervised-music-tagging-transformer (src/models.py, src/modules.py),
palonso/MAEST (models/) and kkoutini/PaSST (models/passt.py, models/helpers/), given as
git directories (no work tree needed). Their only extra import the product lacks is
einops, installed outside the repository (never in requirements.txt):

    python -m pip install --no-deps --target /work/refvenv/site einops==0.8.2
    PYTHONPATH=/work/refvenv/site:$PWD .venv/bin/python scripts/golden/make_transformer_golden.py \
        --ssmtt GITDIR --maest GITDIR --passt GITDIR

Imports the reference code needs but never uses on the paths run here are stubbed:
torchaudio (its mel front end: the stubs keep torchaudio's buffer names and shapes,
`spectrogram.window` / `mel_scale.fb`, so the state dicts have the reference's keys,
and pass the input through, so the references are fed a mel directly, which is what our
models eat), sacred / ba3l (experiment configuration decorators) and timm's
`load_pretrained` / `download_cached_file` (pretrained=False here).

Each case fills the reference model with `tests.reference_states.seeded_state` (a function
of key, shape and seed), runs it in eval mode on a seeded input and records:
`transformers_golden.json` (snapshot commits; per case the reference state dict's keys
and shapes, input shape and seeds) and `transformers_golden.npz` (the outputs).
"""

from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from tests.reference_states import seeded_input, seeded_state  # noqa: E402

FIXTURES = ROOT / "tests" / "fixtures"
FILES = {
    "ssmtt": ["src/models.py", "src/modules.py"],
    "maest": [
        "models/__init__.py",
        "models/maest.py",
        "models/discogs_labels.py",
        "models/helpers/vit_helpers.py",
        "models/helpers/melspectrogram.py",
    ],
    "passt": ["models/passt.py", "models/helpers/vit_helpers.py"],
}


# --- stubs ---------------------------------------------------------------------------------


class _Spectrogram(nn.Module):
    def __init__(self, n_fft=400, win_length=None, **_):
        super().__init__()
        self.register_buffer("window", torch.hann_window(win_length or n_fft))

    def forward(self, x):
        return x


class _MelScale(nn.Module):
    def __init__(self, n_mels=128, sample_rate=16000, f_min=0.0, f_max=None, n_stft=201, **_):
        super().__init__()
        self.register_buffer("fb", torch.zeros(n_stft, n_mels))

    def forward(self, x):
        return x


class _MelSpectrogram(nn.Module):
    def __init__(self, sample_rate=16000, n_fft=400, n_mels=128, **_):
        super().__init__()
        self.spectrogram = _Spectrogram(n_fft=n_fft)
        self.mel_scale = _MelScale(n_mels=n_mels, n_stft=n_fft // 2 + 1)

    def forward(self, x):
        return x


class _Identity(nn.Module):
    def __init__(self, *_, **__):
        super().__init__()

    def forward(self, x):
        return x


class _Ingredient:
    def __init__(self, *_, **__):
        pass

    def add_config(self, *_, **__):
        pass

    def _passthrough(self, fn):
        return fn

    config = capture = command = _passthrough


def install_stubs() -> None:
    def module(name, **attrs):
        mod = types.ModuleType(name)
        mod.__dict__.update(attrs)
        sys.modules[name] = mod
        return mod

    transforms = module(
        "torchaudio.transforms",
        MelSpectrogram=_MelSpectrogram,
        AmplitudeToDB=_Identity,
        Spectrogram=_Spectrogram,
        MelScale=_MelScale,
    )
    module("torchaudio", transforms=transforms)
    module("sacred", Ingredient=_Ingredient)
    module("ba3l")
    module("ba3l.ingredients")
    module("ba3l.ingredients.ingredient", Ingredient=_Ingredient)
    never = lambda *a, **k: None  # noqa: E731  (pretrained=False: never called)
    module("timm")
    module("timm.models", load_pretrained=never, __path__=[])
    module("timm.models._hub", download_cached_file=never)


def materialise(git_dir: str, files: list[str], into: Path) -> str:
    """Write `files` of the snapshot's HEAD under `into`; returns the commit."""
    for name in files:
        text = subprocess.run(
            ["git", "--git-dir", git_dir, "show", f"HEAD:{name}"],
            check=True,
            capture_output=True,
        ).stdout
        path = into / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text)
    return subprocess.run(
        ["git", "--git-dir", git_dir, "rev-parse", "HEAD"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


def forget(*names: str) -> None:
    """Drop imported reference modules (two snapshots both have a top-level `models`)."""
    for mod in list(sys.modules):
        if mod.split(".")[0] in names:
            del sys.modules[mod]


def fill(model: nn.Module, seed: int) -> dict:
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    model.load_state_dict(seeded_state(shapes, seed))
    return shapes


# --- cases ---------------------------------------------------------------------------------


def ssmtt_cases(root: Path, out: dict, arrays: dict) -> None:
    sys.path.insert(0, str(root / "src"))
    models = importlib.import_module("models")
    sizes = {
        "music_tagging_transformer": (128, 256),
        "music_tagging_transformer_small": (128, 64),
        "music_tagging_transformer_student": (64, 64),
    }
    for i, (name, (conv, attention)) in enumerate(sizes.items()):
        net = models.MusicTaggingTransformer(
            conv_ndim=conv, attention_ndim=attention, n_seq_cls=50
        ).eval()
        seed, input_seed, shape = 10 + i, 20 + i, [2, 128, 431]
        shapes = fill(net, seed)
        with torch.no_grad():
            probabilities = net(seeded_input(shape, input_seed))
        out[name] = {"keys": shapes, "seed": seed, "input": shape, "input_seed": input_seed}
        arrays[f"{name}.probabilities"] = probabilities.numpy()
    forget("models", "modules")
    sys.path.remove(str(root / "src"))


def maest_cases(root: Path, out: dict, arrays: dict) -> None:
    sys.path.insert(0, str(root))
    maest = importlib.import_module("models.maest")
    for i, (seconds, frames) in enumerate(((10, 625),)):
        ref = maest.get_maest(arch=f"discogs-maest-{seconds}s-pw-129e", pretrained=False).eval()
        name, seed, input_seed, shape = f"maest_{seconds}s", 30 + i, 40 + i, [1, 96, frames]
        shapes = fill(ref, seed)
        x = seeded_input(shape, input_seed)
        with torch.no_grad():
            logits, features = ref(x.clone())
            _, block5 = ref(x.clone(), transformer_block=5)
        out[name] = {"keys": shapes, "seed": seed, "input": shape, "input_seed": input_seed}
        arrays[f"{name}.logits"] = logits.numpy()
        arrays[f"{name}.features"] = features.numpy()
        arrays[f"{name}.block5"] = block5.numpy()
    forget("models")
    sys.path.remove(str(root))


def passt_case(passt_root: Path, maest_root: Path, out: dict, arrays: dict) -> None:
    """A PaSST AudioSet-layout checkpoint (128 x 998) made a 96-band 5 s MAEST by MAEST's
    own `checkpoint_filter_fn`, the path of every MAEST "pw" initialisation."""
    sys.path.insert(0, str(passt_root))
    passt = importlib.import_module("models.passt")
    source = passt.passt_s_swa_p16_128_ap476(
        pretrained=False, img_size=(128, 998), stride=(10, 10), in_chans=1, num_classes=527
    )
    seed, input_seed, shape = 50, 60, [1, 96, 312]
    shapes = fill(source, seed)
    state = seeded_state(shapes, seed)
    forget("models")
    sys.path.remove(str(passt_root))
    sys.path.insert(0, str(maest_root))
    maest = importlib.import_module("models.maest")
    target = maest.get_maest(
        arch="passt_s_swa_p16_128_ap476", pretrained=False, n_classes=527, input_t=312
    ).eval()
    missing, unexpected = target.load_state_dict(
        maest.checkpoint_filter_fn(state, target), strict=False
    )
    assert not unexpected and all(k.startswith("melspectrogram.") for k in missing)
    with torch.no_grad():
        logits, _ = target(seeded_input(shape, input_seed))
    out["passt_to_maest_5s"] = {
        "keys": shapes,
        "seed": seed,
        "input": shape,
        "input_seed": input_seed,
    }
    arrays["passt_to_maest_5s.logits"] = logits.numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for source in FILES:
        parser.add_argument(f"--{source}", required=True, help="git directory of the snapshot")
    args = parser.parse_args()
    torch.set_num_threads(1)
    install_stubs()
    out: dict = {"sources": {}, "cases": {}}
    arrays: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        roots = {}
        for source, files in FILES.items():
            roots[source] = Path(tmp) / source
            out["sources"][source] = materialise(getattr(args, source), files, roots[source])
        ssmtt_cases(roots["ssmtt"], out["cases"], arrays)
        maest_cases(roots["maest"], out["cases"], arrays)
        passt_case(roots["passt"], roots["maest"], out["cases"], arrays)
    FIXTURES.mkdir(parents=True, exist_ok=True)
    (FIXTURES / "transformers_golden.json").write_text(json.dumps(out, indent=1) + "\n")
    np.savez_compressed(FIXTURES / "transformers_golden.npz", **arrays)
    print("wrote", sorted(arrays))


if __name__ == "__main__":
    main()
