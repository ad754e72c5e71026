"""Hostile and broken inputs to the per-track step of prepare: a permanent problem is one
reject with a reason, a transient one is retried and raised (never a reject), nothing
hangs (every test runs under a timeout)."""

from __future__ import annotations

import errno
import http.server
import json
import os
import threading
import time
import urllib.error
from pathlib import Path

import pytest

from pipelines.beam import fetch
from pipelines.beam.track import Reject, Sample, TrackConfig, prepare_track, read_track
from pipelines.core.failures import AudioRejected, TransientError, classify_read_error
from tests.conftest import encode_mp3, tone

pytestmark = pytest.mark.timeout(120)
SR = 22050
VOCAB = ["rock"]


def row(path: str, key: str = "k1") -> dict:
    return {
        "key": key, "track_id": key, "dataset": "d", "split": "train",
        "audio_path": path, "tags": ["rock"], "duration": None,
    }  # fmt: skip


@pytest.fixture()
def no_backoff(monkeypatch):
    monkeypatch.setattr(fetch, "RETRY_BASE_DELAY_S", 0.0)
    monkeypatch.setattr(
        fetch.with_retries, "__defaults__", (fetch.RETRY_ATTEMPTS, 0.0, lambda s: None)
    )


@pytest.fixture(scope="module")
def audio_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("audio")
    encode_mp3(tone(440, 3.0, SR), SR, root / "good.mp3")
    return root


# --- classification of errors ----------------------------------------------------------


def test_classification_of_storage_errors():
    from apache_beam.io.aws.clients.s3.messages import S3ClientError
    from apache_beam.io.filesystem import BeamIOError

    def kind(exc):
        result = classify_read_error(exc)
        return result.reason if isinstance(result, AudioRejected) else "transient"

    http = lambda code: urllib.error.HTTPError("http://x/a.mp3", code, "status", {}, None)  # noqa: E731
    assert kind(FileNotFoundError(errno.ENOENT, "No such file", "/a.mp3")) == "missing"
    assert kind(PermissionError(errno.EACCES, "Permission denied")) == "unreadable"
    assert kind(http(404)) == "missing"
    assert kind(http(403)) == "unreadable"
    for code in (429, 500, 503):
        assert kind(http(code)) == "transient"
    assert kind(S3ClientError("Not Found", 404)) == "missing"
    assert kind(S3ClientError("SlowDown", 503)) == "transient"
    assert kind(S3ClientError('Could not connect to the endpoint URL: "http://h/b/k"', None)) == (
        "transient"
    )
    assert kind(BeamIOError("Match operation failed", {"s3://b/k": S3ClientError("x", 500)})) == (
        "transient"
    )
    for exc in (
        ConnectionResetError(errno.ECONNRESET, "reset"),
        OSError(errno.ENOSPC, "No space left on device"),
        TimeoutError("timed out"),
        urllib.error.URLError(ConnectionRefusedError(errno.ECONNREFUSED, "refused")),
        RuntimeError("something nobody classified"),  # unknown: fail loudly, not a reject
    ):
        assert kind(exc) == "transient", exc
    # botocore's errors (one GET per s3:// file): the status is in the parsed response.
    from botocore.exceptions import ClientError

    boto = lambda code, name: ClientError(  # noqa: E731
        {"Error": {"Code": name}, "ResponseMetadata": {"HTTPStatusCode": code}}, "GetObject"
    )
    assert kind(boto(403, "AccessDenied")) == "unreadable"
    assert kind(boto(404, "NoSuchKey")) == "missing"
    for code, name in ((503, "SlowDown"), (500, "InternalError")):
        assert kind(boto(code, name)) == "transient"
    with pytest.raises(MemoryError):
        classify_read_error(MemoryError())


# --- local files -----------------------------------------------------------------------


def test_good_file_missing_file_and_escape(audio_root):
    assert isinstance(prepare_track(row("good.mp3"), str(audio_root), TrackConfig(), VOCAB), Sample)
    missing = prepare_track(row("nope.mp3"), str(audio_root), TrackConfig(), VOCAB)
    assert (missing.stage, missing.reason) == ("read", "missing")
    escape = prepare_track(row("../audio/good.mp3"), str(audio_root), TrackConfig(), VOCAB)
    assert isinstance(escape, Reject) and escape.reason == "outside_root"


@pytest.mark.timeout(20)
def test_special_files_are_refused_without_reading(tmp_path):
    fifo = tmp_path / "fifo.mp3"
    os.mkfifo(fifo)  # no writer: a blocking open or read would hang forever
    (tmp_path / "dir.mp3").mkdir()
    for path in ("/dev/zero", str(fifo), str(tmp_path / "dir.mp3")):
        result = prepare_track(row(path), None, TrackConfig(), VOCAB)
        assert isinstance(result, Reject) and result.reason == "not_regular_file", path


def test_size_cap(audio_root):
    result = prepare_track(row("good.mp3"), str(audio_root), TrackConfig(max_file_mb=0.01), VOCAB)
    assert (result.stage, result.reason) == ("read", "too_large")
    assert isinstance(prepare_track(row("good.mp3"), str(audio_root), TrackConfig(), VOCAB), Sample)


def test_file_changed_since_planning_is_rejected(tmp_path):
    path = tmp_path / "a.mp3"
    encode_mp3(tone(440, 3.0, SR), SR, path)
    planned = read_track(row("a.mp3"), str(tmp_path), TrackConfig()).signature
    assert isinstance(
        prepare_track(row("a.mp3"), str(tmp_path), TrackConfig(), VOCAB, planned), Sample
    )
    encode_mp3(tone(660, 3.5, SR), SR, path)  # overwritten while the job runs
    result = prepare_track(row("a.mp3"), str(tmp_path), TrackConfig(), VOCAB, planned)
    assert (result.stage, result.reason) == ("read", "changed")


def test_memory_error_is_never_a_reject(audio_root, monkeypatch):
    import pipelines.beam.track as track

    def boom(*args, **kwargs):
        raise MemoryError()

    monkeypatch.setattr(track, "make_sample", boom)
    with pytest.raises(MemoryError):
        prepare_track(row("good.mp3"), str(audio_root), TrackConfig(), VOCAB)


# --- real HTTP -------------------------------------------------------------------------


@pytest.fixture()
def http_root(audio_root):
    """A real HTTP server on the audio folder; /flaky/* answers 503, and every request is
    counted."""
    seen: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            seen.append(self.path)
            if self.path.startswith("/flaky/"):
                self.send_error(503, "try later")
                return
            super().do_GET()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), lambda *a: Handler(*a, directory=str(audio_root))
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", seen
    server.shutdown()


def test_http_found_missing_and_throttled(http_root, no_backoff):
    base, seen = http_root
    ok = prepare_track(row("good.mp3"), base, TrackConfig(), VOCAB)
    assert isinstance(ok, Sample) and json.loads(ok.members["json"])["source_path"] == "good.mp3"
    missing = prepare_track(row("gone.mp3"), base, TrackConfig(), VOCAB)
    assert (missing.stage, missing.reason) == ("read", "missing")
    seen.clear()
    with pytest.raises(TransientError):
        prepare_track(row("flaky/good.mp3"), base, TrackConfig(), VOCAB)
    assert len(seen) == fetch.RETRY_ATTEMPTS  # retried, then raised: not a reject


def test_unreachable_http_is_one_reject_within_a_bounded_time():
    """A server that does not answer (nothing listens on the port) is tried a few times
    with backoff, then the track is rejected as `unreachable` with one line: not
    `missing`, and never a TransientError that Beam retries and then fails the job with
    a traceback minutes later (issue 29, item 12)."""
    from tests.conftest import free_port

    url = f"http://127.0.0.1:{free_port()}/a.mp3"  # nothing listens there
    started = time.monotonic()
    rejected = prepare_track(row(url), None, TrackConfig(), VOCAB)
    elapsed = time.monotonic() - started
    assert isinstance(rejected, Reject), rejected
    assert (rejected.stage, rejected.reason) == ("read", fetch.UNREACHABLE)
    assert f"after {fetch.RETRY_ATTEMPTS} tries" in rejected.message
    assert "\n" not in rejected.message and "127.0.0.1" in rejected.message
    assert 1.0 < elapsed < fetch.UNREACHABLE_DEADLINE_S  # it did back off, within the bound


@pytest.mark.timeout(180)
def test_a_prepare_with_an_unreachable_http_track_finishes_with_one_reject(tmp_path):
    """The job: two local clips and one track on a closed port. It finishes (exit 0) with
    the two samples and one `unreachable` reject row, in seconds, no traceback."""
    import pyarrow.parquet as pq

    from manifests.schema import write_manifest
    from tests.conftest import free_port, run_cli

    audio = tmp_path / "audio"
    audio.mkdir()
    rows = []
    for i in range(2):
        encode_mp3(tone(300 + 100 * i, 3, SR, seed=i), SR, audio / f"c{i}.mp3", "64k")
        rows.append({**row(f"c{i}.mp3", f"c{i}"), "dataset": "cli"})
    url = f"http://127.0.0.1:{free_port()}/gone.mp3"
    rows.append({**row(url, "far"), "dataset": "cli"})
    write_manifest(rows, tmp_path / "m.parquet", metadata={"audio_root": str(audio)})
    out = tmp_path / "out"
    started = time.monotonic()
    result = run_cli(
        "beam_runner.py", "prepare", "--manifest", str(tmp_path / "m.parquet"), "--out",
        str(out), "--max-reject-fraction", "1", "--direct_running_mode=in_memory",
        "--direct_num_workers=1",
    )  # fmt: skip
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    rejects = pq.read_table(out / "rejects.parquet").to_pylist()
    assert [(r["key"], r["reason"]) for r in rejects] == [("far", fetch.UNREACHABLE)]
    assert json.loads((out / "dataset.json").read_text())["splits"]["train"]["samples"] == 2
    assert elapsed < 120


def test_an_http_server_that_never_answers_is_rejected_by_the_deadline(monkeypatch):
    """The deadline bounds the tries, whatever the backoff: with a 2 s deadline and
    connections that each take 1.5 s to fail, two tries at most."""
    tries = []

    def slow_refusal(url, limit, timeout):
        tries.append(timeout)
        time.sleep(1.5)
        raise fetch._NoAnswer("timed out")

    monkeypatch.setattr(fetch, "UNREACHABLE_DEADLINE_S", 2.0)
    monkeypatch.setattr(fetch, "_read_http_once", slow_refusal)
    started = time.monotonic()
    with pytest.raises(AudioRejected) as caught:
        fetch.read_http("http://127.0.0.1:9/a.mp3", None)
    assert caught.value.reason == fetch.UNREACHABLE
    assert len(tries) <= 2 and time.monotonic() - started < 4.0


# --- real S3 (SeaweedFS) ---------------------------------------------------------------


@pytest.mark.timeout(240)
def test_s3_found_missing_and_server_down(seaweed_s3, audio_root, no_backoff):
    from pipelines.beam import beam_io
    from tests.seaweed import seaweed_env_for_beam

    prefix = seaweed_s3.upload_dir(audio_root, "bucket/audio")
    beam_io.configure(tuple(seaweed_env_for_beam(seaweed_s3)))
    calls = []  # the S3 operations a track costs: one GET, no listing, no HEAD
    events = beam_io.s3_client().meta.events
    events.register("before-call.s3", count := lambda model, **_: calls.append(model.name))
    ok = prepare_track(row("good.mp3"), prefix, TrackConfig(), VOCAB)
    events.unregister("before-call.s3", count)
    assert isinstance(ok, Sample) and calls == ["GetObject"]
    capped = prepare_track(row("good.mp3"), prefix, TrackConfig(max_file_mb=0.01), VOCAB)
    assert isinstance(capped, Reject) and capped.reason == "too_large"
    missing = prepare_track(row("gone.mp3"), prefix, TrackConfig(), VOCAB)
    assert (missing.stage, missing.reason) == ("read", "missing")
    # The server goes away mid-job and comes back: Beam's S3 client and our retries ride it
    # out; the track is neither rejected nor lost.
    seaweed_s3.stop()
    restarter = threading.Timer(3.0, seaweed_s3.start)
    restarter.start()
    started = time.monotonic()
    try:
        result = prepare_track(row("good.mp3"), prefix, TrackConfig(), VOCAB)
    finally:
        restarter.join()
    assert isinstance(result, Sample), result
    assert time.monotonic() - started > 2.0  # it did live through the outage


# --- one job per output, whatever the cache (issue 29, item 11) -------------------------


def test_two_jobs_with_different_cache_dirs_share_the_output_lock(tmp_path, monkeypatch):
    """The lock lives in the output itself: a job started with another TAGKIT_CACHE_DIR
    (or HOME) than the one writing the output is still refused with one line."""
    import subprocess
    import sys

    from pipelines.beam.output_lock import LOCK_NAME, OutputInUse, outputs_held
    from tests.conftest import ROOT

    out = tmp_path / "out"
    code = (
        "import sys, time; from pipelines.beam.output_lock import outputs_held\n"
        "with outputs_held([sys.argv[1]], 'prepare'):\n"
        "    print('held', flush=True); time.sleep(120)"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TAGKIT_CACHE_DIR": str(tmp_path / "a")}
    first = subprocess.Popen(
        [sys.executable, "-c", code, str(out)], cwd=ROOT, stdout=subprocess.PIPE, text=True,
        env=env,
    )  # fmt: skip
    try:
        assert first.stdout.readline().strip() == "held"
        monkeypatch.setenv("TAGKIT_CACHE_DIR", str(tmp_path / "b"))
        with pytest.raises(OutputInUse, match=f"pid {first.pid}, prepare"):
            with outputs_held([str(out)], "prepare"):
                pass
        assert (out / LOCK_NAME).is_file()
    finally:
        first.kill()
        first.wait()
    with outputs_held([str(out)], "prepare"):  # the lock ended with its process
        pass
    assert list(out.iterdir()) == []  # a finished job leaves no lock file in the dataset


# --- paths: kernel files, symlinks out of the audio root (issue 29, item 12) -----------


@pytest.mark.parametrize(
    "path", ["//proc/self/environ", "///dev/zero", "/sys/../proc/self/mem", "//sys/kernel"]
)
def test_kernel_files_are_refused_however_written(path):
    from manifests.schema import check_audio_path

    assert check_audio_path(path) == "is a device or kernel file"
    assert check_audio_path(path, "/", allow_outside_root=True) == "is a device or kernel file"


def test_follow_symlinks_reaches_the_track_config(audio_root, tmp_path):
    """A link inside --audio-root to a file outside it is rejected unless the job is run
    with --follow-symlinks, which the flag passes into the track config."""
    import argparse
    import shutil

    from pipelines.beam import prepare_cli

    outside = tmp_path / "outside.mp3"
    shutil.copy(audio_root / "good.mp3", outside)
    root = tmp_path / "root"
    root.mkdir()
    (root / "link.mp3").symlink_to(outside)

    def config(*flags: str) -> TrackConfig:
        parser = argparse.ArgumentParser()
        prepare_cli.add_parser(parser.add_subparsers())
        args = parser.parse_args(["prepare", "--manifest", "m.parquet", "--out", "o", *flags])
        return prepare_cli.track_config(args)

    default, following = config(), config("--follow-symlinks")
    assert (default.follow_symlinks, following.follow_symlinks) == (False, True)
    rejected = prepare_track(row("link.mp3"), str(root), default, VOCAB)
    assert (rejected.stage, rejected.reason) == ("read", "outside_root")
    assert isinstance(prepare_track(row("link.mp3"), str(root), following, VOCAB), Sample)
    assert "follow_symlinks" in following.to_dict()  # another job's identity
