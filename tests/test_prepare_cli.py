"""The prepare and perturb command lines fail loudly: unknown flags, bad values, a wrong or
missing audio root, an empty manifest, all or too many inputs rejected; and a run is quiet
(no Beam or worker log lines) unless --verbose."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from manifests.schema import write_manifest
from tests.conftest import encode_mp3, run_cli, tone

FAST = ("--direct_running_mode=in_memory", "--direct_num_workers=1")


def make_corpus(base: Path, n: int = 3, missing: int = 0, record_root: bool = True) -> Path:
    """`n` real MP3 clips (plus `missing` rows whose file does not exist) and a manifest
    that records its audio root (as `manifests folder` does) when `record_root`."""
    audio = base / "audio"
    audio.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n + missing):
        name = f"clip{i}.mp3"
        if i < n:
            encode_mp3(tone(300 + 100 * i, 3, 22050, seed=i), 22050, audio / name, "64k")
        rows.append(
            {"key": f"clip{i}", "track_id": str(i), "dataset": "cli", "split": "train",
             "audio_path": name, "tags": ["a"]}
        )  # fmt: skip
    metadata = {"audio_root": str(audio)} if record_root else None
    write_manifest(rows, base / "manifest.parquet", metadata=metadata)
    return base / "manifest.parquet"


def beam(*args, cwd=None):
    return run_cli("beam_runner.py", *args, cwd=cwd)


def one_line_error(result, *needles):
    assert result.returncode == 2, (result.stdout[-2000:], result.stderr[-2000:])
    err = result.stderr.strip()
    assert err.count("\n") == 0, err
    assert "error" in err
    for needle in needles:
        assert needle in err, err


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return make_corpus(tmp_path_factory.mktemp("cli"))


@pytest.mark.parametrize(
    "args, needles",
    [
        (["prepare", "--nmels", "96"], ["--nmels", "did you mean --n-mels"]),
        (["prepare", "--runnr=FnApiRunner"], ["--runnr", "did you mean --runner"]),
        (["prepare", "--shard-size-mb", "0"], ["--shard-size-mb"]),
        (["prepare", "--shard-size-mb", "-1"], ["--shard-size-mb"]),
        (["prepare", "--max-reject-fraction", "2"], ["--max-reject-fraction"]),
        (["prepare", "--audio-root", "/nonexistent"], ["/nonexistent", "not a directory"]),
        (["prepare", "--sample-rate", "0"], ["--sample-rate"]),
        (["prepare", "--f-max", "9000"], ["f_max"]),  # FeatureConfig's own check
        (["prepare", "--harmonics", "0"], ["--harmonics"]),
        (["prepare", "--recipe", "nope"], ["unknown recipe 'nope'"]),
        (["prepare", "stray"], ["stray"]),
    ],
)
def test_prepare_refuses_bad_flags_in_one_line(corpus, tmp_path, args, needles):
    out = tmp_path / "out"
    result = beam(*args[:1], "--manifest", str(corpus), "--out", str(out), *args[1:], *FAST)
    one_line_error(result, *needles)
    assert not (out / "dataset.json").exists()


def test_a_recipe_hands_prepare_its_models_features_and_a_flag_overrides_them(corpus, tmp_path):
    from tagtrain.models.registry import get_entry

    out = tmp_path / "out"
    result = beam("prepare", "--recipe", "won2019_spec", "--manifest", str(corpus),
                  "--out", str(out), "--n-fft", "1024", "--features", "mel", *FAST)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "recipe won2019_spec: features=mel,pcm sample_rate=16000" in result.stdout
    features = json.loads((out / "dataset.json").read_text())["features"]
    spec = get_entry("won2019_spec").input_spec  # 96 Slaney bands
    wanted = {**spec.features.to_dict(), "n_fft": 1024, "stored": ["mel"]}
    assert features == wanted


def test_perturb_refuses_an_unknown_flag_in_one_line(tmp_path):
    result = beam("perturb", "--data", str(tmp_path), "--nsplit", "test")
    one_line_error(result, "--nsplit", "did you mean --split")


def test_an_empty_manifest_and_a_missing_root_are_one_line(tmp_path):
    # Written past the builder's own check: what someone else's tool may hand prepare.
    write_manifest([], tmp_path / "empty.parquet", validate=False)
    one_line_error(
        beam(
            "prepare", "--manifest", str(tmp_path / "empty.parquet"), "--out", str(tmp_path / "o")
        ),
        "no rows",
    )
    bare = make_corpus(tmp_path / "bare", n=1, record_root=False)
    one_line_error(
        beam("prepare", "--manifest", str(bare), "--out", str(tmp_path / "o2"), cwd=tmp_path),
        "--audio-root",
    )


def test_every_input_rejected_fails_after_writing_the_rejects(tmp_path):
    manifest = make_corpus(tmp_path, n=2)
    out = tmp_path / "out"
    temp = tmp_path / "temp"
    temp.mkdir()
    result = run_cli("beam_runner.py", "prepare", "--manifest", str(manifest), "--out", str(out),
                     "--audio-root", str(tmp_path), *FAST, env={"TMPDIR": str(temp)})  # fmt: skip
    one_line_error(result, "every input was rejected", "missing 2", "rejects.parquet")
    assert not list(temp.glob("prepare-progress-*"))  # the progress tick file's directory
    rejects = pq.read_table(out / "rejects.parquet").to_pylist()
    assert sorted(r["reason"] for r in rejects) == ["missing", "missing"]
    assert not (out / "dataset.json").exists()


def test_too_many_rejects_fail_loudly_and_a_higher_limit_accepts_them(tmp_path):
    manifest = make_corpus(tmp_path, n=3, missing=1)
    out = tmp_path / "out"
    failed = beam("prepare", "--manifest", str(manifest), "--out", str(out), *FAST)
    one_line_error(failed, "1 of 4 inputs rejected", "25.0%", "--max-reject-fraction 0.05")
    assert (out / "rejects.parquet").exists() and not (out / "dataset.json").exists()
    ok = beam("prepare", "--manifest", str(manifest), "--out", str(out),
              "--max-reject-fraction", "0.25", *FAST)  # fmt: skip
    assert ok.returncode == 0, ok.stderr[-2000:]
    # The job's settings, printed at its start as a diff from the defaults.
    assert "settings (vs defaults): " in ok.stdout and "max_reject_fraction=0.25" in ok.stdout
    card = json.loads((out / "dataset.json").read_text())
    assert card["counts"] == {"inputs": 4, "samples": 3, "rejects": 1,
                              "rejects_by_reason": {"missing": 1}}  # fmt: skip


LOG_LINE = re.compile(r"^(INFO|WARNING|WARN|DEBUG)[: ]|severity: |apitools|^[IW]\d{4} ", re.M)


def test_a_run_is_quiet_and_uses_the_manifests_audio_root(corpus, tmp_path):
    """No --audio-root: the manifest's recorded root is used (all three tracks become
    samples). A worker process starts and stops (one shard to build: one of the two asked
    for), yet stderr holds no library log line; --verbose shows them."""
    out = tmp_path / "out"
    result = beam("prepare", "--manifest", str(corpus), "--out", str(out),
                  "--direct_running_mode=multi_processing", "--direct_num_workers=2",
                  "--s3-endpoint-url=http://127.0.0.1:9")  # both spellings of Beam's flags  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((out / "dataset.json").read_text())["counts"]["samples"] == 3
    assert not LOG_LINE.search(result.stderr), result.stderr[-3000:]
    assert "library log lines hidden" in result.stdout
    verbose = beam("prepare", "--manifest", str(corpus), "--out", str(tmp_path / "v"),
                   "--verbose", "--direct_running_mode=multi_processing",
                   "--direct_num_workers=2")  # fmt: skip
    assert verbose.returncode == 0
    assert LOG_LINE.search(verbose.stderr)


def test_a_failed_write_leaves_no_temporary_file(tmp_path):
    """A write that fails midway (here: the disk is full) removes its temporary file and
    leaves the final name untouched."""
    import errno

    from pipelines.beam import beam_io

    target = tmp_path / "train-000000.tar"
    target.write_bytes(b"old")

    def fill_the_disk(f):
        f.write(b"x" * 10000)
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        beam_io.write_atomic_with(str(target), fill_the_disk)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train-000000.tar"]
    assert target.read_bytes() == b"old"
    (tmp_path / "valid-000001.tar.tmp-0123456789ab").write_bytes(b"orphan")
    assert beam_io.remove_orphans(str(tmp_path)) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train-000000.tar"]


def test_decoder_warnings_are_counted_not_printed(tmp_path):
    """mpg123 warns on stderr about a cut MP3 ("Xing stream size off ..."): quiet runs count
    the line in the summary instead of printing it."""
    audio = tmp_path / "audio"
    audio.mkdir()
    full = encode_mp3(tone(330, 30, 44100), 44100, audio / "full.mp3").read_bytes()
    (audio / "cut.mp3").write_bytes(full[: len(full) // 8])
    rows = [{"key": "cut", "track_id": "cut", "dataset": "w", "split": "train",
             "audio_path": "cut.mp3", "tags": ["a"]}]  # fmt: skip
    write_manifest(rows, tmp_path / "m.parquet", metadata={"audio_root": str(audio)})
    args = (
        "prepare",
        "--manifest",
        str(tmp_path / "m.parquet"),
        "--max-reject-fraction",
        "1",
        *FAST,
    )
    verbose = beam(*args, "--out", str(tmp_path / "v"), "--verbose")
    assert "Xing" in verbose.stderr  # the decoder does warn
    quiet = beam(*args, "--out", str(tmp_path / "q"))
    assert "Xing" not in quiet.stderr and "decoder warnings: 1" in quiet.stdout, quiet.stdout


def test_a_second_job_on_an_output_in_use_is_one_line(corpus, tmp_path):
    """prepare and perturb hold their local outputs while they run (an flock in the
    output): a second job there would delete the first's temporary files as orphans
    and mix two configurations under one card; it gets one line naming the first. The
    lock ends with its process."""
    import subprocess
    import sys

    from pipelines.beam.output_lock import LOCK_NAME
    from pipelines.core.deformations import paper_set
    from tests.conftest import ROOT

    out = tmp_path / "out"
    target = out / "perturbed" / paper_set()[0].name

    def holder(output: Path, job: str) -> subprocess.Popen:
        code = (
            "import sys, time; from pipelines.beam.output_lock import outputs_held\n"
            "with outputs_held([sys.argv[1]], sys.argv[2]):\n"
            "    print('held', flush=True); time.sleep(300)"
        )
        process = subprocess.Popen(
            [sys.executable, "-c", code, str(output), job], cwd=ROOT, stdout=subprocess.PIPE,
            text=True, env={**__import__("os").environ, "PYTHONPATH": str(ROOT)},
        )  # fmt: skip
        assert process.stdout.readline().strip() == "held"
        return process

    prepare = ["prepare", "--manifest", str(corpus), "--out", str(out), "--features", "mel,pcm"]
    first = holder(out, "prepare")
    try:
        one_line_error(
            beam(*prepare), f"{out} is being written by another job (pid {first.pid}, prepare)"
        )
        assert [p.name for p in out.iterdir()] == [LOCK_NAME]  # the holder's lock, no more
    finally:
        first.kill()
        first.wait()
    assert beam(*prepare).returncode == 0
    second = holder(target, "perturb")
    try:
        result = beam("perturb", "--dataset", str(out), "--split", "train")
        one_line_error(
            result, f"{target} is being written by another job (pid {second.pid}, perturb)"
        )
        assert [p.name for p in (out / "perturbed").rglob("*")] == [target.name, LOCK_NAME]
    finally:
        second.kill()
        second.wait()
