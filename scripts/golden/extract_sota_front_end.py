"""The real torchaudio front-end buffers of published sota checkpoints, for
tests/test_front_end_reference.py.

Dev-only. minzwon/sota-music-tagging-models' models compute their mel inside the model
with torchaudio's `MelSpectrogram` (defaults: HTK mel, no filter norm, periodic Hann
window), whose `spec.spectrogram.window` [n_fft] and `spec.mel_scale.fb`
[n_fft/2+1, n_mels] are saved with the weights. torchaudio is not installed here, so
these buffers, written by torchaudio itself when the checkpoints were trained, are the
outside reference for our `mel_filterbank(..., "htk", "none")`.

It reads checkpoints straight from a git clone or mirror of a repository that commits
them (dinizvt/sota-music-tagging-models, a fork with the published `models/`; every
published checkpoint there is 16 kHz, n_fft 512, 96 bands: the 128-band architectures'
files are not in it) with `torch.load(weights_only=True)`, checks that the checkpoints
given agree on the buffers, and writes tests/fixtures/sota/front_end.npz (float32,
compressed): `window`, `fb_96`, and `sources` (the repository paths and blob ids).

    PYTHONPATH=$PWD .venv/bin/python scripts/golden/extract_sota_front_end.py \\
        --git-dir /work/.mirror/dinizvt+sota-music-tagging-models/repo
"""

from __future__ import annotations

import argparse
import io
import subprocess
from pathlib import Path

import numpy as np
import torch

CHECKPOINTS = ("models/mtat/fcn/best_model.pth", "models/jamendo/musicnn/best_model.pth")
OUT = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "sota" / "front_end.npz"


def git(git_dir: str, *args: str) -> bytes:
    return subprocess.run(
        ["git", "--git-dir", git_dir, *args], check=True, capture_output=True
    ).stdout


def buffers(git_dir: str, path: str, rev: str) -> dict[str, np.ndarray]:
    state = torch.load(
        io.BytesIO(git(git_dir, "show", f"{rev}:{path}")), map_location="cpu", weights_only=True
    )
    return {
        "window": state["spec.spectrogram.window"].numpy(),
        "fb": state["spec.mel_scale.fb"].numpy(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--git-dir", required=True)
    parser.add_argument("--rev", default="HEAD")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    found = [buffers(args.git_dir, path, args.rev) for path in CHECKPOINTS]
    for other in found[1:]:
        for key, value in other.items():
            if not np.array_equal(value, found[0][key]):
                raise SystemExit(f"the checkpoints' {key} differ")
    first = found[0]
    if first["fb"].shape != (257, 96):
        raise SystemExit(f"expected a 96-band filterbank, got {first['fb'].shape}")
    ids = [
        f"{path} {git(args.git_dir, 'rev-parse', f'{args.rev}:{path}').decode().strip()}"
        for path in CHECKPOINTS
    ]
    np.savez_compressed(
        args.out,
        window=first["window"].astype(np.float32),
        fb_96=first["fb"].astype(np.float32),
        sources=np.array(ids),
    )
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes) from {', '.join(ids)}")


if __name__ == "__main__":
    main()
