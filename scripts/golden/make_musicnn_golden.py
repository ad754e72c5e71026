"""Golden fixtures from the OFFICIAL musicnn (TensorFlow), for tests/test_pretrained.py.

Dev-only: it needs TensorFlow, which the product never does. Create the environment once
(outside the repository, never in requirements.txt) and run it from the repository root:

    python3 -m venv /work/tfvenv
    /work/tfvenv/bin/pip install tensorflow-cpu==2.21.0 tf-keras==2.21.0 librosa==0.11.0 numpy
    /work/tfvenv/bin/pip install --no-deps musicnn==0.1.0
    TF_USE_LEGACY_KERAS=1 /work/tfvenv/bin/python scripts/golden/make_musicnn_golden.py

Run it twice, with numpy 1.26 and with numpy 2 (the official front end's float16 line
computes differently under each; see tagtrain/pretrained/frontend.py): a second venv
/work/tfvenv-np1 made the same way with `numpy==1.26.4` gives the `numpy1` fixtures
(the default front end), /work/tfvenv the `numpy2` ones.

It renders the deterministic clips of tests/musicnn_clips.py, runs the unmodified
`musicnn.extractor.extractor` (3 s windows, no overlap, features on) with MTT_musicnn,
MSD_musicnn, MTT_vgg and MSD_vgg, and writes tests/fixtures/musicnn/CLIP.numpyN.npz (N = numpy's major version):
`mel` (the official float16 log-mel, `batch_data`'s audio_rep) and per model
`MODEL.taggram` [windows, 50], and for musicnn `MODEL.penultimate` [windows, 200],
`MODEL.mean_pool` / `MODEL.max_pool` [windows, 753], for VGG `MODEL.pool5` [windows, 256]
(flattened time-major as the graph flattens it). golden.numpyN.json records the clips' SHA-256
and the library versions. Note: the official extractor's `cnn1..cnn3` and `penultimate`
features repeat the first window's for later windows (its loop appends stale
variables); they are kept as the extractor returns them and the tests compare window 0.
It also runs the official on tests/fixtures/musicnn/chords44k.mp3 (a committed MP3, written
once from the chords clip: real MP3 decoding and 44.1 kHz -> 16 kHz resampling) into
mp3.numpyN.npz (taggrams only), and writes tests/fixtures/musicnn/tiny_bundle/ (once): a TensorFlow-written
checkpoint of a few known tensors for the tests of our checkpoint reader.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "fixtures" / "musicnn"
MODELS = ("MTT_musicnn", "MSD_musicnn", "MTT_vgg", "MSD_vgg")
MUSICNN_FEATURES = ("penultimate", "mean_pool", "max_pool")


def official(path: Path, model: str) -> dict[str, np.ndarray]:
    from musicnn.extractor import extractor

    with contextlib.redirect_stdout(io.StringIO()):  # its progress prints
        taggram, _, features = extractor(str(path), model=model, extract_features=True)
    out = {"taggram": taggram}
    if "vgg" in model:
        out["pool5"] = features["pool5"].reshape(len(taggram), -1)
    else:
        out.update({k: features[k] for k in MUSICNN_FEATURES})
    return {k: np.asarray(v, dtype=np.float32) for k, v in out.items()}


def write_tiny_bundle(folder: Path) -> None:
    """Known values of several dtypes, and enough variables for several index blocks."""
    import tensorflow as tf

    graph = tf.Graph()
    with graph.as_default():
        values = {
            "dense/kernel": np.arange(6, dtype=np.float32).reshape(2, 3) / 8,
            "half": np.array([0.5, -2.0, 65504.0], dtype=np.float16),
            "step": np.array([1, -2, 3, 2**40], dtype=np.int64),
            "scalar": np.float64(3.25),
        }
        values.update({f"many/v{i:03d}": np.full([1], i, np.float32) for i in range(200)})
        for name, value in values.items():
            tf.compat.v1.get_variable(name, initializer=tf.constant(value))
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            folder.mkdir(parents=True, exist_ok=True)
            saver = tf.compat.v1.train.Saver()
            saver.save(sess, str(folder / "bundle"), write_meta_graph=False)
    (folder / "checkpoint").unlink(missing_ok=True)


def main() -> None:
    if os.environ.get("TF_USE_LEGACY_KERAS") != "1":
        sys.exit("set TF_USE_LEGACY_KERAS=1 (musicnn 0.1.0 uses tf.compat.v1 layers)")
    sys.path.insert(0, str(ROOT / "tests"))
    import librosa
    import musicnn
    import tensorflow as tf
    from musicnn.extractor import batch_data
    from musicnn_clips import write_clips

    OUT.mkdir(parents=True, exist_ok=True)
    numpy_major = int(np.__version__.split(".")[0])
    if not (OUT / "tiny_bundle").exists():
        write_tiny_bundle(OUT / "tiny_bundle")
    record = {"clips": {}, "versions": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name, path in write_clips(Path(tmp)).items():
            arrays = {"mel": batch_data(str(path), 187, 187)[1]}  # float32 (numpy 1) or 16
            for model in MODELS:
                for key, value in official(path, model).items():
                    arrays[f"{model}.{key}"] = value
            np.savez_compressed(OUT / f"{name}.numpy{numpy_major}.npz", **arrays)
            record["clips"][name] = {
                "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                "windows": int(len(arrays["MTT_musicnn.taggram"])),
                "mel_frames": int(len(arrays["mel"])),
                "mel_inf": int(np.isinf(arrays["mel"]).sum()),
            }
            print(name, record["clips"][name])
    mp3 = OUT / "chords44k.mp3"
    if not mp3.exists():
        import soundfile as sf
        from musicnn_clips import chords

        audio = chords(44100, 6.5).astype(np.float32)
        sf.write(mp3, audio, 44100, format="MP3", compression_level=0.9)
    taggrams = {f"{m}.taggram": official(mp3, m)["taggram"] for m in MODELS}
    np.savez_compressed(OUT / f"mp3.numpy{numpy_major}.npz", **taggrams)
    record["mp3"] = {"sha256": hashlib.sha256(mp3.read_bytes()).hexdigest()}
    record["versions"] = {
        "tensorflow": tf.__version__,
        "librosa": librosa.__version__,
        "numpy": np.__version__,
        "musicnn": getattr(musicnn, "__version__", "0.1.0"),
    }
    (OUT / f"golden.numpy{numpy_major}.json").write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
