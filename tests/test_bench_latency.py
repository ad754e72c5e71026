"""bench/loader_latency.py: the table of S3 epochs behind added round trips beside local
disk, its summary lines, and one-line refusals of bad flags."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = str(ROOT / "bench" / "loader_latency.py")


def _run(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, SCRIPT, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT
    )


@pytest.mark.slow
def test_a_small_run_prints_every_row_and_the_ratio_at_the_round_trip_last():
    cpus = sorted(os.sched_getaffinity(0))
    done = _run(
        "--tracks", "64", "--seconds", "3", "--rtts", "20", "--workers", "1",
        "--sources", "s3,s3-cache", "--batch-size", "8",
        "--server-cpus", str(cpus[-1]), "--loader-cpus", str(cpus[0]),
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()
    rows = [line.split() for line in lines if re.match(r"^\s+(s3|s3-cache)\s+\d+\s+1\s", line)]
    # each S3 source at no added round trip (the reference) and at 20 ms
    assert [(r[0], r[1]) for r in rows] == [
        ("s3", "0"), ("s3", "20"), ("s3-cache", "0"), ("s3-cache", "20"),
    ]  # fmt: skip
    for _, rtt, _, local, epoch1, vs_local, vs_zero, *_ in rows:
        assert float(local) > 0 and float(epoch1) > 0
        assert float(vs_local) == pytest.approx(float(epoch1) / float(local), abs=0.01)
        assert rtt != "0" or vs_zero == "1.00"
    cached = re.fullmatch(r"cached epoch / local at 20 ms RTT, 1 workers: (\d+\.\d\d)", lines[-2])
    first = re.fullmatch(r"first S3 epoch / local at 20 ms RTT, 1 workers: (\d+\.\d\d)", lines[-1])
    assert cached and first, lines[-3:]
    assert first.group(1) == rows[1][5]  # the s3 row at 20 ms: epoch 1 vs local
    assert cached.group(1) == rows[3][9]  # the s3-cache row at 20 ms: epoch 2 vs local


@pytest.mark.parametrize("flags", [["--rtts", "-5"], ["--workers", "two"], ["--sources", "s3,gcs"]])
def test_bad_flags_are_one_line_and_exit_2(flags):
    done = _run(*flags, timeout=120)
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1
    assert done.stderr.startswith("bench/loader_latency.py: error: argument " + flags[0])
