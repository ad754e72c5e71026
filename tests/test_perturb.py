"""The Beam perturb job on a small dataset of real tones prepared by the prepare job: what each
deformation did to the stored audio, the datasets it writes, provenance, determinism, offline
augmentation and its refusals."""

from __future__ import annotations

import io
import json
import os
import re
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from manifests.schema import write_manifest
from pipelines.beam.perturb import length_factor, plan_target_shards
from pipelines.core.audio import from_int16, to_int16
from pipelines.core.card import parse_card
from pipelines.core.deformations import augment_track, paper_set, track_rng
from pipelines.core.muda_compat import replay
from tests.conftest import PYTHON, ROOT, run_cli, tone

SR = 16000
PAPER = [d.name for d in paper_set()]
# key -> (frequency, seconds, split); "odd" has an odd number of samples (40001).
TRACKS = {
    "a440": (440.0, 3.0, "test"),
    "odd": (550.0, 2.5 + 1 / SR, "test"),
    "c660": (660.0, 3.0, "test"),
    "t300": (300.0, 3.0, "train"),
    "t800": (800.0, 3.0, "train"),
}
FAST = ("--direct_running_mode=in_memory", "--direct_num_workers=1")
TWO_PROCESSES = ("--direct_running_mode=multi_processing", "--direct_num_workers=2")


def beam(*args, check=True):
    result = run_cli("beam_runner.py", *args)
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


def perturb(dataset: Path, *extra, check=True):
    return beam("perturb", "--dataset", str(dataset), *extra, check=check)


def read_members(directory: Path) -> dict[str, dict[str, bytes]]:
    """Every member of every shard, with plain tarfile."""
    out: dict[str, dict[str, bytes]] = {}
    for shard in sorted(directory.glob("*.tar")):
        with tarfile.open(shard) as tar:
            for info in tar:
                key, _, ext = info.name.partition(".")
                out.setdefault(key, {})[ext] = tar.extractfile(info).read()
    return out


def npy(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def peak_hz(pcm: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(pcm.astype(np.float64) * np.hanning(len(pcm))))
    return float(np.fft.rfftfreq(len(pcm), 1 / SR)[spectrum.argmax()])


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """Five tones as 16-bit WAVs, prepared (mel + pcm) by the prepare job."""
    base = tmp_path_factory.mktemp("tones")
    audio = base / "audio"
    audio.mkdir()
    rows = []
    for i, (key, (freq, seconds, split)) in enumerate(TRACKS.items()):
        sf.write(audio / f"{key}.wav", tone(freq, seconds, SR, seed=i), SR, subtype="PCM_16")
        rows.append(
            {"key": key, "track_id": key, "dataset": "tones", "split": split,
             "audio_path": f"{key}.wav", "tags": ["low" if freq < 500 else "high"]}
        )  # fmt: skip
    write_manifest(rows, base / "manifest.parquet")
    data = base / "data"
    beam("prepare", "--manifest", str(base / "manifest.parquet"), "--audio-root", str(audio),
         "--output", str(data), "--features", "mel,pcm", *FAST)  # fmt: skip
    return data


@pytest.fixture(scope="module")
def paper(source):
    """The paper's eight deformations of the test split."""
    result = perturb(source, "--split", "test", *FAST)
    return source / "perturbed", result


def originals(source: Path) -> dict[str, dict[str, bytes]]:
    return read_members(source)


def test_paper_set_writes_eight_datasets_that_validate_and_read_back(source, paper):
    root, result = paper
    src_card = json.loads((source / "dataset.json").read_text())
    src = originals(source)
    test_keys = {k for k, (_, _, split) in TRACKS.items() if split == "test"}
    assert sorted(p.name for p in root.iterdir()) == sorted(PAPER)
    for d in paper_set():
        out = root / d.name
        card = parse_card((out / "dataset.json").read_text())
        assert card["deformation"] == {
            "name": d.name, "type": d.kind, "params": d.params(), "seed": 0
        }  # fmt: skip
        for field in ("features", "vocabulary", "mel_stats", "manifest", "format"):
            assert card[field] == src_card[field], field
        assert card["counts"] == {
            "inputs": 3, "samples": 3, "rejects": 0, "rejects_by_reason": {}
        }  # fmt: skip
        assert [s["name"] for s in card["splits"]["test"]["shards"]] == ["test-000000.tar"]
        index = pq.read_table(out / "index.parquet").to_pylist()
        assert {r["key"] for r in index} == test_keys
        assert pq.read_table(out / "rejects.parquet").num_rows == 0
        members = read_members(out)
        assert set(members) == test_keys
        for key, m in members.items():
            assert set(m) == {"json", "mel.npy", "pcm.npy"}
            meta, mel, pcm = json.loads(m["json"]), npy(m["mel.npy"]), npy(m["pcm.npy"])
            assert pcm.dtype == np.int16 and mel.dtype == np.float16
            assert mel.shape == (128, 1 + len(pcm) // 256) == (128, meta["frames"])
            assert meta["duration"] == pytest.approx(len(pcm) / SR, abs=1e-6)
            # The original JSON, with this copy's length and its provenance.
            original = json.loads(src[key]["json"])
            changed = {"duration", "frames", "deformation"}
            assert {k: v for k, v in meta.items() if k not in changed} == {
                k: v for k, v in original.items() if k not in changed
            }
            deformation = json.loads(meta["deformation"])
            assert deformation["name"] == d.name
            assert deformation["source_key"] == key
            assert deformation["seed"] == 0
    for name in PAPER:
        assert name in result.stdout
    assert "wrote 8 dataset(s)" in result.stdout


def test_the_trainer_reads_a_perturbed_set_with_the_clean_statistics(source, paper):
    from tagtrain.loader import load_card, split_shards

    root, _ = paper
    card = load_card(str(root / "noise_0.4"))
    shards = split_shards(card, str(root / "noise_0.4"), "test")
    assert [s.samples for s in shards] == [3]
    assert card["mel_stats"] == json.loads((source / "dataset.json").read_text())["mel_stats"]


@pytest.mark.parametrize("name, expected", [("pitch_+1", 466.16), ("pitch_-1", 415.30)])
def test_a_440_hz_tone_pitched_by_a_semitone_peaks_where_it_should(source, paper, name, expected):
    root, _ = paper
    assert peak_hz(from_int16(npy(originals(source)["a440"]["pcm.npy"]))) == pytest.approx(
        440, abs=1
    )
    pcm = from_int16(npy(read_members(root / name)["a440"]["pcm.npy"]))
    assert peak_hz(pcm) == pytest.approx(expected, abs=3)


@pytest.mark.parametrize(
    "name, factor", [("stretch_rate_0.707", 2**0.5), ("stretch_rate_1.414", 2**-0.5)]
)
def test_stretch_changes_the_length_and_the_mel_frames_follow(source, paper, name, factor):
    root, _ = paper
    src = originals(source)
    for key, m in read_members(root / name).items():
        before = len(npy(src[key]["pcm.npy"]))
        pcm, mel = npy(m["pcm.npy"]), npy(m["mel.npy"])
        assert len(pcm) / before == pytest.approx(factor, rel=0.01)
        assert mel.shape[1] == 1 + len(pcm) // 256
        assert mel.shape[1] / npy(src[key]["mel.npy"]).shape[1] == pytest.approx(factor, rel=0.01)
    # The planned shard count accounts for the longer copy.
    assert length_factor(next(d for d in paper_set() if d.name == name)) == pytest.approx(factor)


@pytest.mark.parametrize("name, a", [("noise_0.1", 0.1), ("noise_0.4", 0.4)])
def test_noise_mix_is_muda_peak_normalised(source, paper, name, a):
    # Seed 000 / muda's ColoredNoise: (1 - a) x/max|x| + a n/max|n| (issue 16.4), so the
    # noise's peak is a fixed fraction of the signal's whatever the track's crest factor.
    root, _ = paper
    x = from_int16(npy(originals(source)["c660"]["pcm.npy"])).astype(np.float64)
    y = from_int16(npy(read_members(root / name)["c660"]["pcm.npy"])).astype(np.float64)
    noise = y - (1 - a) * x / np.abs(x).max()
    assert np.abs(noise).max() == pytest.approx(a, rel=0.01)
    # What remains is noise, not a rescaled copy of the signal.
    assert abs(np.corrcoef(noise, x)[0, 1]) < 0.05


def test_an_odd_length_track_goes_through_every_deformation(source, paper):
    root, _ = paper
    assert len(npy(originals(source)["odd"]["pcm.npy"])) == 40001
    for name in PAPER:
        pcm = npy(read_members(root / name)["odd"]["pcm.npy"])
        assert len(pcm) > SR and np.abs(pcm).max() > 1000, name


def test_provenance_in_the_shard_round_trips_and_replays_the_stored_audio(source, paper):
    root, _ = paper
    src = originals(source)
    for name in PAPER:
        for key, m in read_members(root / name).items():
            provenance = json.loads(json.loads(m["json"])["deformation"])
            assert json.loads(json.dumps(provenance)) == provenance
            original = from_int16(npy(src[key]["pcm.npy"]))
            replayed = to_int16(replay(provenance["history"], original, SR))
            assert np.array_equal(replayed, npy(m["pcm.npy"])), (name, key)
            if name.startswith("noise"):
                # Noise seeded by (run seed, key, deformation).
                expected = int(track_rng(0, key, name).integers(2**63))
                assert provenance["history"][0]["state"]["seed"] == expected


def test_rerun_is_byte_identical_and_other_config_is_refused_unless_force(source, paper, tmp_path):
    root, _ = paper
    before = tree_bytes(root)
    perturb(source, *FAST)
    assert tree_bytes(root) == before
    refused = perturb(source, "--seed", "1", *FAST, check=False)
    assert refused.returncode == 2
    assert refused.stderr.strip().count("\n") == 0 and "--force" in refused.stderr
    assert tree_bytes(root) == before
    # --force with another seed, into another root: the noise changes, pitch does not.
    spec = tmp_path / "two.yaml"
    spec.write_text("- {type: noise, a: 0.1}\n- {type: pitch, semitones: 1}\n")
    other = tmp_path / "seed1"
    perturb(source, "--deformations", str(spec), "--output", str(other), *FAST)
    assert (other / "noise_0.1" / "test-000000.tar").read_bytes() == before[
        "noise_0.1/test-000000.tar"
    ]
    perturb(source, "--deformations", str(spec), "--output", str(other), "--seed", "1",
            "--force", *FAST)  # fmt: skip
    noisy = {k: npy(m["pcm.npy"]) for k, m in read_members(other / "noise_0.1").items()}
    clean = {k: npy(m["pcm.npy"]) for k, m in read_members(root / "noise_0.1").items()}
    assert all(not np.array_equal(noisy[k], clean[k]) for k in clean)
    pitched = {k: npy(m["pcm.npy"]) for k, m in read_members(other / "pitch_+1").items()}
    assert all(np.array_equal(pitched[k], npy(read_members(root / "pitch_+1")[k]["pcm.npy"]))
               for k in pitched)  # fmt: skip


def records(root: Path) -> dict[str, dict]:
    return {str(p.relative_to(root)): json.loads(p.read_text())
            for p in sorted(root.glob("*/_progress/*.json"))}  # fmt: skip


def test_a_killed_job_resumes_to_the_same_bytes_deforming_only_the_unfinished_shards(
    source, paper, tmp_path
):
    """A job killed with SIGKILL once two of the eight target shards have their
    completion record; a re-run with two worker processes deforms only the other shards'
    tracks and ends with the bytes of the uninterrupted one-worker run (so the worker
    count does not change them either)."""
    import os
    import signal
    import subprocess
    import time

    root, _ = paper
    reference = records(root)
    out = tmp_path / "killed"
    cmd = [PYTHON, str(ROOT / "beam_runner.py"), "perturb", "--dataset", str(source),
           "--split", "test", "--out", str(out), *FAST]  # fmt: skip
    job = subprocess.Popen(cmd, env={**os.environ, "PYTHONPATH": str(ROOT)},
                           start_new_session=True, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while len(records(out)) < 2:
            assert job.poll() is None and time.monotonic() < deadline, "job ended early"
            time.sleep(0.02)
    finally:
        os.killpg(job.pid, signal.SIGKILL)
        job.wait()
    done = records(out)
    assert 2 <= len(done) < len(reference)
    assert not list(out.glob("*/dataset.json"))
    resumed = perturb(source, "--split", "test", "--out", str(out), *TWO_PROCESSES)
    line = next(x for x in resumed.stdout.splitlines() if x.startswith("counters: "))
    count = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", line)}
    todo = [r for name, r in reference.items() if name not in done]
    assert count["shards_reused"] == len(done)
    assert count["shards_written"] == len(todo)
    assert count["deformed"] == sum(len(r["index"]) for r in todo) > 0
    assert tree_bytes(out) == tree_bytes(root)  # no temporary file left either


@pytest.mark.slow
def test_same_bytes_on_dask_local_cluster(source, paper, tmp_path):
    from distributed import LocalCluster

    root, _ = paper
    out = tmp_path / "dask"
    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster:
        perturb(source, "--output", str(out), "--runner=DaskRunner",
                f"--dask_client_address={cluster.scheduler_address}")  # fmt: skip
    assert tree_bytes(out) == tree_bytes(root)


def test_augment_writes_k_recorded_copies_per_track(source):
    result = perturb(source, "--augment", "2", "--seed", "3", *FAST)
    out = source / "augmented"
    card = parse_card((out / "dataset.json").read_text())
    assert card["deformation"]["type"] == "augment" and card["deformation"]["params"]["copies"] == 2
    train = [k for k, (_, _, split) in TRACKS.items() if split == "train"]
    assert card["counts"]["inputs"] == card["counts"]["samples"] == 4
    assert [s["name"] for s in card["splits"]["train"]["shards"]] == ["train-000000.tar"]
    members = read_members(out)
    assert set(members) == {f"{k}-aug{i}" for k in train for i in range(2)}
    src = originals(source)
    for key in train:
        expected = augment_track(
            from_int16(npy(src[key]["pcm.npy"])), SR, seed=3, key=key, k=2
        )  # the library's own K copies: the job must write exactly these
        for i, (pcm, provenance) in enumerate(expected):
            m = members[f"{key}-aug{i}"]
            meta = json.loads(m["json"])
            assert meta["key"] == f"{key}-aug{i}" and meta["track_id"] == key
            recorded = json.loads(meta["deformation"])
            assert recorded["copy"] == i and recorded["source_key"] == key
            assert recorded["seed"] == 3
            for field in ("name", "type", "params", "history"):
                assert recorded[field] == provenance[field]
            assert np.array_equal(npy(m["pcm.npy"]), to_int16(pcm))
    assert "augment" in result.stdout


def main_in_process(argv: list[str], capsys) -> tuple[int, str]:
    """`python beam_runner.py ARGV` for commands that fail before any pipeline runs: the
    exit code and stderr (the subprocess path is covered by the refusal test)."""
    import beam_runner

    try:
        code = beam_runner.main(argv)
    except SystemExit as exc:  # argparse: a one-line message as the exit code
        assert isinstance(exc.code, str)
        return 2, exc.code
    return code, capsys.readouterr().err


def test_a_dataset_without_pcm_gets_a_one_line_error(source, tmp_path, capsys):
    mel_only = tmp_path / "mel_only"
    manifest = Path(json.loads((source / "dataset.json").read_text())["manifest"]["path"])
    beam("prepare", "--manifest", str(manifest), "--audio-root", str(manifest.parent / "audio"),
         "--output", str(mel_only), "--features", "mel", *FAST)  # fmt: skip
    code, stderr = main_in_process(["perturb", "--dataset", str(mel_only)], capsys)
    assert code == 2
    assert stderr.strip().count("\n") == 0, stderr
    assert "no pcm" in stderr and "--features mel,pcm" in stderr
    assert not (mel_only / "perturbed").exists()


def test_custom_yaml_set_and_a_failing_deformation_becomes_a_reject(source, tmp_path):
    long_noise = tmp_path / "rain.wav"
    short_noise = tmp_path / "blip.wav"
    rng = np.random.default_rng(0)
    sf.write(long_noise, 0.2 * rng.standard_normal(8 * SR).astype(np.float32), SR)
    sf.write(short_noise, 0.2 * rng.standard_normal(SR // 2).astype(np.float32), SR)
    spec = tmp_path / "custom.yaml"
    spec.write_text(
        "deformations:\n"
        "  - {type: pitch, semitones: 2, name: up_two}\n"
        "  - {type: clip, limit: 0.5}\n"
        "  - {type: noise, a: 0.2, color: pink}\n"
        "  - {type: background, files: [rain.wav], a: 0.3}\n"
        "  - {type: background, files: [blip.wav], a: 0.3, name: too_short}\n"
    )
    out = tmp_path / "custom"
    result = perturb(source, "--deformations", str(spec), "--output", str(out), *FAST)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["up_two", "clip_0.5", "noise_pink_0.2", "background_0.3", "too_short"]
    )
    src = originals(source)
    up = from_int16(npy(read_members(out / "up_two")["a440"]["pcm.npy"]))
    assert peak_hz(up) == pytest.approx(440 * 2 ** (2 / 12), abs=3)
    for key, m in read_members(out / "clip_0.5").items():
        x = npy(src[key]["pcm.npy"]).astype(np.int32)
        assert np.abs(npy(m["pcm.npy"])).max() <= 0.5 * np.abs(x).max() + 1
    assert len(read_members(out / "background_0.3")) == 3
    # The noise file is shorter than every track: each becomes a reject, the job goes on.
    card = parse_card((out / "too_short" / "dataset.json").read_text())
    assert card["counts"]["inputs"] == card["counts"]["rejects"] == 3
    rejects = pq.read_table(out / "too_short" / "rejects.parquet").to_pylist()
    assert {r["stage"] for r in rejects} == {"deform"} and all(r["message"] for r in rejects)
    assert not list((out / "too_short").glob("*.tar"))
    assert "rejects by reason: deform_error: 3" in result.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["--augment", "-1"], "--augment"),
        (["--augment", "2", "--deformations", "paper"], "--deformations"),
        (["--split", "valid"], "split 'valid'"),
        (["--deformations", "nonexistent.yaml"], "neither 'paper'"),
        (["--seed", "-3"], "--seed"),
        (["--seed", "one"], "--seed"),
    ],
)
def test_bad_arguments_get_one_line(source, args, message, capsys):
    code, stderr = main_in_process(["perturb", "--dataset", str(source), *args], capsys)
    assert code == 2
    assert stderr.strip().count("\n") == 0, stderr
    assert message in stderr


def test_a_missing_dataset_gets_one_line(tmp_path, capsys):
    code, stderr = main_in_process(["perturb", "--dataset", str(tmp_path / "absent")], capsys)
    assert code == 2 and stderr.strip().count("\n") == 0
    assert "no dataset card" in stderr


def test_shard_plan_scales_with_length_and_copies():
    card = {
        "splits": {"test": {"samples": 40, "shards": [{"bytes": 100 * 2**20}] * 2}},
        "job": {"shard_size_mb": 64},
    }
    stretch, pitch = paper_set()[2], paper_set()[0]
    assert plan_target_shards(card, "test", pitch, 1) == 4  # 200 MiB / 64
    assert plan_target_shards(card, "test", stretch, 1) == 5  # x sqrt(2): 283 MiB
    assert plan_target_shards(card, "test", None, 3) == 10  # 600 MiB


def test_source_tracks_read_by_byte_range_are_the_shards_members(source, tmp_path):
    """The job reads each source track's JSON and PCM by the byte ranges of the index;
    an index without member offsets (older datasets) falls back to whole tars."""
    import shutil

    from pipelines.beam.perturb_source import SourceTracks, read_split_index

    rows = list(read_split_index(str(source), "test"))
    assert sorted(r["key"] for r in rows) == sorted(
        k for k, (_, _, split) in TRACKS.items() if split == "test"
    )
    old = tmp_path / "old"
    shutil.copytree(source, old, ignore=shutil.ignore_patterns("perturbed", "augmented"))
    index = pq.read_table(source / "index.parquet")
    pq.write_table(index.drop_columns(["members"]), old / "index.parquet")
    old_rows = {r["key"]: r for r in read_split_index(str(old), "test")}
    src = originals(source)
    with SourceTracks(str(source)) as ranged, SourceTracks(str(old)) as whole:
        for row in rows:
            key = row["key"]
            assert [r[0] for r in row["ranges"]] == ["json", "pcm.npy"]
            assert old_rows[key]["ranges"] is None
            meta, pcm = ranged.read(row["shard"], key, row["ranges"])
            old_meta, old_pcm = whole.read(row["shard"], key, None)
            assert meta == old_meta == json.loads(src[key]["json"])
            assert np.array_equal(pcm, npy(src[key]["pcm.npy"]))
            assert np.array_equal(old_pcm, pcm)


def test_a_source_card_that_is_no_card_file_gets_one_line(tmp_path, capsys):
    """The source card is read bounded, and only from a regular file: a FIFO named
    dataset.json would block the job, a huge file would be read whole."""
    huge, fifo = tmp_path / "huge", tmp_path / "fifo"
    huge.mkdir(), fifo.mkdir()
    with open(huge / "dataset.json", "wb") as f:
        f.truncate((64 << 20) + 1)  # sparse: one byte over the cap
    os.mkfifo(fifo / "dataset.json")
    for dataset, message in ((huge, "is larger than 67108864 bytes"), (fifo, "not a regular")):
        code, stderr = main_in_process(["perturb", "--dataset", str(dataset)], capsys)
        assert code == 2 and stderr.strip().count("\n") == 0, stderr
        assert message in stderr
