"""The Beam prepare job on real audio files: outcomes, shard contents, determinism across
runners and worker counts, object storage, re-runs."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from manifests.schema import key_from_path, write_manifest
from tests.conftest import encode_mp3, run_cli, tone

SR = 16000

# file name -> expected outcome ("sample" or the reject reason)
EXPECTED = {
    "empty.mp3": "empty",
    "truncated.mp3": "truncated",
    "text.mp3": "unreadable",
    "short.wav": "too_short",
    "silent.wav": "silent",
    "nan.wav": "non_finite",
    "missing.mp3": "missing",
    "rate_8k.wav": "sample",
    "stereo_48k.mp3": "sample",
    "lossless.flac": "sample",
    "deep_24bit.wav": "sample",
    "six_channels.wav": "sample",
    "long.ogg": "sample",
    "sub/-dash 'quote' \"dq\" ünïcödé name.mp3": "sample",
    ".hidden dot.wav": "sample",
}


def make_awkward_folder(root: Path) -> list[dict]:
    root.mkdir(parents=True, exist_ok=True)
    (root / "sub").mkdir(exist_ok=True)
    (root / "empty.mp3").write_bytes(b"")
    full = encode_mp3(tone(330, 30, 44100), 44100, root / "full.tmp.mp3")
    data = full.read_bytes()
    (root / "truncated.mp3").write_bytes(data[: len(data) // 8])
    full.unlink()
    (root / "text.mp3").write_text("ID3? no, just a text file pretending to be an mp3\n" * 20)
    sf.write(root / "short.wav", tone(500, 0.2, SR), SR)
    sf.write(root / "silent.wav", np.zeros(3 * SR, np.float32), SR)
    nan = tone(500, 3, SR)
    nan[100] = np.nan
    sf.write(root / "nan.wav", nan, SR, subtype="FLOAT")
    sf.write(root / "rate_8k.wav", tone(440, 4, 8000), 8000)
    stereo = np.stack([tone(440, 5, 48000), tone(550, 5, 48000, seed=1)], axis=1)
    encode_mp3(stereo, 48000, root / "stereo_48k.mp3")
    sf.write(root / "lossless.flac", tone(660, 3, 22050), 22050)
    sf.write(root / "deep_24bit.wav", tone(770, 3, 44100), 44100, subtype="PCM_24")
    six = np.stack([tone(200 + 100 * c, 3, SR, seed=c) for c in range(6)], axis=1)
    sf.write(root / "six_channels.wav", six, SR)
    sf.write(root / "long.ogg", tone(880, 12, SR), SR)
    encode_mp3(tone(990, 3, 44100), 44100, root / "sub/-dash 'quote' \"dq\" ünïcödé name.mp3")
    sf.write(root / ".hidden dot.wav", tone(1100, 3, SR), SR)
    rows = []
    for i, name in enumerate(EXPECTED):
        rows.append(
            {
                "key": key_from_path(name),
                "track_id": name,
                "dataset": "awkward",
                "split": ("train", "valid", "test")[i % 3],
                "audio_path": name,
                "tags": ["odd"] if i % 2 else ["even"],
                "duration": 30.0 if name == "truncated.mp3" else None,
            }
        )
    return rows


def prepare(manifest, audio_root, output, *extra, check=True):
    result = run_cli(
        "beam_runner.py",
        "prepare",
        "--manifest",
        str(manifest),
        "--audio-root",
        str(audio_root),
        "--out",
        str(output),
        *extra,
    )
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


def read_shards(output: Path) -> dict[str, dict[str, bytes]]:
    """Every member of every shard, read with plain tarfile (no webdataset, no pickle)."""
    members: dict[str, dict[str, bytes]] = {}
    for shard in sorted(output.glob("*.tar")):
        with tarfile.open(shard) as tar:
            for info in tar:
                key, _, ext = info.name.partition(".")
                members.setdefault(key, {})[ext] = tar.extractfile(info).read()
    return members


def tree_bytes(output: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(output)): p.read_bytes() for p in sorted(output.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="module")
def awkward(tmp_path_factory):
    base = tmp_path_factory.mktemp("awkward")
    rows = make_awkward_folder(base / "audio")
    write_manifest(rows, base / "manifest.parquet")
    out = base / "out"
    result = prepare(
        base / "manifest.parquet", base / "audio", out, "--max-seconds", "10", "--features",
        "mel,harm,pcm", "--direct_num_workers=2", "--max-reject-fraction", "0.5",
    )  # fmt: skip
    return base, rows, out, result


def test_every_input_is_a_sample_or_a_reject_with_the_expected_reason(awkward):
    _, rows, out, result = awkward
    card = json.loads((out / "dataset.json").read_text())
    index = pq.read_table(out / "index.parquet").to_pylist()
    rejects = pq.read_table(out / "rejects.parquet").to_pylist()
    assert card["counts"]["inputs"] == len(rows) == len(index) + len(rejects)
    outcome = {r["key"]: "sample" for r in index}
    outcome.update({r["key"]: r["reason"] for r in rejects})
    expected = {key_from_path(name): want for name, want in EXPECTED.items()}
    assert outcome == expected
    for r in rejects:
        assert r["stage"] in ("read", "decode", "validate") and r["message"]
    assert "inputs 15 = samples 8 + rejects 7 (ok)" in result.stdout


def test_shards_read_back_with_tarfile_and_numpy(awkward):
    _, rows, out, _ = awkward
    card = json.loads((out / "dataset.json").read_text())
    members = read_shards(out)
    assert set(members) == {key_from_path(n) for n, w in EXPECTED.items() if w == "sample"}
    for key, m in members.items():
        assert set(m) == {"json", "mel.npy", "harm.npy", "pcm.npy"}
        meta = json.loads(m["json"])
        mel = np.load(io.BytesIO(m["mel.npy"]), allow_pickle=False)
        harm = np.load(io.BytesIO(m["harm.npy"]), allow_pickle=False)
        pcm = np.load(io.BytesIO(m["pcm.npy"]), allow_pickle=False)
        assert mel.dtype == np.float16 and harm.dtype == np.float16 and pcm.dtype == np.int16
        assert mel.shape == (128, 1 + len(pcm) // 256) == (128, meta["frames"])
        assert harm.shape == (6, 128, mel.shape[1])
        assert meta["key"] == key and meta["sample_rate"] == SR
        assert meta["duration"] == pytest.approx(len(pcm) / SR)
        assert [card["vocabulary"][i] for i in meta["labels"]] == meta["tags"]
        assert meta["deformation"] == "null"
    by_name = {json.loads(m["json"])["track_id"]: json.loads(m["json"]) for m in members.values()}
    assert by_name["rate_8k.wav"]["source_sample_rate"] == 8000
    assert by_name["rate_8k.wav"]["duration"] == pytest.approx(4.0, abs=1e-3)
    assert by_name["stereo_48k.mp3"]["source_channels"] == 2
    assert by_name["six_channels.wav"]["source_channels"] == 6
    assert by_name["long.ogg"]["cropped"] is True
    assert by_name["long.ogg"]["duration"] == pytest.approx(10.0, abs=1e-3)
    # The card's per-split counts add up to the index, and stats cover every mel band.
    index = pq.read_table(out / "index.parquet").to_pylist()
    for split, info in card["splits"].items():
        assert info["samples"] == sum(r["split"] == split for r in index)
        assert sum(s["samples"] for s in info["shards"]) == info["samples"]
    # Every band varies over the tracks except one whose filter is empty: HTK filters without
    # normalisation at n_fft 512 leave band 0 (0-28 Hz) between two FFT bins, in torchaudio
    # as here, so it is constant (-100 dB) and its std is 0.
    from pipelines.core.features import FeatureConfig, mel_filterbank

    cfg = FeatureConfig.from_dict(card["features"])
    fb = mel_filterbank(cfg.sample_rate, cfg.n_fft, cfg.n_mels, cfg.f_min, cfg.f_max,
                        cfg.mel_scale, cfg.mel_norm)  # fmt: skip
    std = np.array(card["mel_stats"]["std"])
    empty = fb.sum(dim=1).numpy() == 0
    assert empty.sum() == 1
    assert len(std) == 128 and (std[~empty] > 0).all() and (std[empty] == 0).all()


def test_tone_energy_survives_into_the_shard_mel(awkward):
    _, _, out, _ = awkward
    members = read_shards(out)
    meta_by_id = {json.loads(m["json"])["track_id"]: m for m in members.values()}
    mel = np.load(io.BytesIO(meta_by_id["lossless.flac"]["mel.npy"]), allow_pickle=False)
    import librosa

    htk = json.loads((out / "dataset.json").read_text())["features"]["mel_scale"] == "htk"
    centres = librosa.mel_frequencies(n_mels=130, fmin=0, fmax=8000, htk=htk)[1:-1]
    band = int(mel.astype(np.float32).mean(axis=1).argmax())
    assert centres[band - 1] < 660 < centres[band + 1]


def test_rerun_with_same_config_gives_identical_files_and_other_config_is_refused(awkward):
    base, _, out, _ = awkward
    before = tree_bytes(out)
    prepare(base / "manifest.parquet", base / "audio", out, "--max-seconds", "10",
            "--features", "mel,harm,pcm", "--direct_num_workers=1",
            "--max-reject-fraction", "0.5")  # fmt: skip
    assert tree_bytes(out) == before
    refused = prepare(base / "manifest.parquet", base / "audio", out, "--n-mels", "64",
                      "--max-reject-fraction", "0.5", check=False)  # fmt: skip
    assert refused.returncode == 2
    assert refused.stderr.strip().count("\n") == 0 and "--force" in refused.stderr
    assert tree_bytes(out) == before


def test_bad_arguments_get_one_line(tmp_path):
    for args in (
        ["prepare", "--manifest", "m.parquet", "--output", "o", "--features", "mel,spectro"],
        ["prepare", "--manifest", "m.parquet", "--output", "o", "--n-mels", "many"],
        ["prepare", "--manifest", str(tmp_path / "absent.parquet"), "--output", "o"],
        ["prepare", "--output", "o"],
    ):
        result = run_cli("beam_runner.py", *args, cwd=tmp_path)
        assert result.returncode == 2, args
        assert result.stderr.strip().count("\n") == 0, result.stderr
        assert "error" in result.stderr


# "bad.mp3" is 1 of 7 inputs: above the default --max-reject-fraction.
SMALL_ARGS = ("--shard-size-mb", "0.3", "--max-reject-fraction", "0.2")


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    base = tmp_path_factory.mktemp("small")
    audio = base / "audio"
    audio.mkdir()
    rows = []
    for i in range(6):
        name = f"clip{i}.mp3"
        encode_mp3(tone(200 + 150 * i, 4, 22050, seed=i), 22050, audio / name, "64k")
        rows.append(
            {"key": f"clip{i}", "track_id": str(i), "dataset": "small",
             "split": ("train", "train", "train", "valid", "test", "test")[i],
             "audio_path": name, "tags": ["low"] if i < 3 else ["high"]}
        )  # fmt: skip
    (audio / "bad.mp3").write_bytes(b"\x00" * 1000)
    rows.append(
        {"key": "bad", "track_id": "bad", "dataset": "small", "split": "train",
         "audio_path": "bad.mp3", "tags": ["low"]}
    )  # fmt: skip
    write_manifest(rows, base / "manifest.parquet")
    # A small shard size gives several shards per split, so assignment is exercised.
    reference = base / "ref"
    prepare(base / "manifest.parquet", audio, reference, *SMALL_ARGS,
            "--direct_running_mode=in_memory", "--direct_num_workers=1")  # fmt: skip
    return base, reference


@pytest.mark.slow
@pytest.mark.parametrize(
    "runner_args",
    [
        ["--direct_running_mode=multi_processing", "--direct_num_workers=1"],
        ["--direct_running_mode=multi_processing", "--direct_num_workers=2"],
        ["--runner=PortableRunner", "--job_endpoint=embed"],
    ],
    ids=["mp1", "mp2", "portable"],
)
def test_same_bytes_on_every_runner_and_worker_count(small, runner_args):
    base, reference = small
    assert len(list(reference.glob("train-*.tar"))) >= 2
    out = base / ("out-" + "-".join(a.split("=")[-1] for a in runner_args))
    prepare(base / "manifest.parquet", base / "audio", out, *SMALL_ARGS, *runner_args)
    assert tree_bytes(out) == tree_bytes(reference)


@pytest.mark.slow
def test_same_bytes_on_dask_local_cluster(small):
    from distributed import LocalCluster

    base, reference = small
    out = base / "out-dask"
    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster:
        prepare(base / "manifest.parquet", base / "audio", out, *SMALL_ARGS,
                "--runner=DaskRunner", f"--dask_client_address={cluster.scheduler_address}")  # fmt: skip
    assert tree_bytes(out) == tree_bytes(reference)


def s3_objects(server, prefix: str) -> dict[str, bytes]:
    fs = server.filesystem()
    return {
        p.removeprefix(prefix + "/"): fs.cat_file(p) for p in fs.find(prefix) if not p.endswith("/")
    }


def same_as_reference(remote: dict[str, bytes], reference: Path) -> None:
    local = tree_bytes(reference)
    assert set(remote) == set(local)  # no temporary objects left behind
    for name, data in local.items():
        if name == "dataset.json":  # records the manifest's location, which differs
            a, b = json.loads(data), json.loads(remote[name])
            a.pop("manifest"), b.pop("manifest")
            assert a == b
        else:
            assert remote[name] == data, name


def s3_prepare_args(server, *extra):
    from tests.seaweed import seaweed_env_for_beam

    return (
        "beam_runner.py", "prepare", "--manifest", "s3://music/manifest.parquet",
        "--audio-root", "s3://music/audio", "--out", "s3://music/prepared", *SMALL_ARGS,
        *seaweed_env_for_beam(server), *extra,
    )  # fmt: skip


@pytest.mark.slow
def test_s3_round_trip_on_a_real_s3_server(small, seaweed_s3):
    """Audio and manifest read from SeaweedFS, shards written to it: the same bytes as a
    local run, no temporary objects; an orphan of a killed attempt is removed."""
    base, reference = small
    seaweed_s3.upload_dir(base / "audio", "music/audio")
    seaweed_s3.filesystem().pipe_file(
        "music/manifest.parquet", (base / "manifest.parquet").read_bytes()
    )
    seaweed_s3.filesystem().pipe_file("music/prepared/train-000000.tar.tmp-0123456789ab", b"x")
    result = run_cli(*s3_prepare_args(seaweed_s3, "--direct_num_workers=2"))
    assert result.returncode == 0, result.stderr[-3000:]
    same_as_reference(s3_objects(seaweed_s3, "music/prepared"), reference)


@pytest.mark.slow
def test_s3_server_restarted_mid_job_loses_nothing(small, seaweed_s3):
    """The S3 server is stopped once the first shards are written and started again ~15 s
    later: reads and writes wait for it (no spurious reject), the job finishes with the
    bytes of a local run."""
    import os
    import subprocess
    import time

    from tests.conftest import PYTHON, ROOT

    base, reference = small
    seaweed_s3.upload_dir(base / "audio", "music/audio")
    seaweed_s3.filesystem().pipe_file(
        "music/manifest.parquet", (base / "manifest.parquet").read_bytes()
    )
    script, *args = s3_prepare_args(seaweed_s3, "--direct_num_workers=2")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    job = subprocess.Popen([PYTHON, str(ROOT / script), *args], env=env, text=True,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    fs = seaweed_s3.filesystem()
    deadline = time.monotonic() + 300
    while not fs.exists("music/prepared/_progress") or not fs.ls("music/prepared/_progress"):
        assert job.poll() is None and time.monotonic() < deadline, job.communicate()
        time.sleep(0.1)
        fs.invalidate_cache()
    assert job.poll() is None  # the server goes down while the job runs
    seaweed_s3.stop()
    time.sleep(2)
    seaweed_s3.start()
    stdout, stderr = job.communicate(timeout=600)
    assert job.returncode == 0, stderr[-3000:]
    assert "inputs 7 = samples 6 + rejects 1 (ok)" in stdout
    same_as_reference(s3_objects(seaweed_s3, "music/prepared"), reference)
