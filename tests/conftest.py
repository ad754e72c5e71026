"""Shared test fixtures: project paths and small real-audio factories."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
# The seed of the tests that assert what a model learnt (marker `isa`): 0, as committed,
# unless TAGKIT_TEST_SEED says otherwise (to check that they hold under other seeds too).
TEST_SEED = int(os.environ.get("TAGKIT_TEST_SEED", "0"))

torch.set_num_threads(1)


@pytest.fixture(scope="session", autouse=True)
def private_cache_dir(tmp_path_factory):
    """prepare's stat cache of verified tars (pipelines/beam/verified_tars.py) goes to this
    run's temporary folder, not the user's ~/.cache; jobs started as subprocesses inherit
    the variable."""
    old = os.environ.get("TAGKIT_CACHE_DIR")
    os.environ["TAGKIT_CACHE_DIR"] = str(tmp_path_factory.mktemp("tagkit-cache"))
    yield Path(os.environ["TAGKIT_CACHE_DIR"])
    if old is None:
        os.environ.pop("TAGKIT_CACHE_DIR", None)
    else:
        os.environ["TAGKIT_CACHE_DIR"] = old


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: int = 600):
    """Run a project command line (e.g. "beam_runner.py", "prepare", ...) in a subprocess."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    if args[0].endswith(".py"):
        cmd = [PYTHON, str(ROOT / args[0]), *args[1:]]
    else:
        cmd = [PYTHON, "-m", *args]
    return subprocess.run(
        cmd, cwd=cwd or ROOT, env=full_env, capture_output=True, text=True, timeout=timeout
    )


def tone(freq: float, seconds: float, sr: int, amplitude: float = 0.3, noise: float = 0.01, seed=0):
    """A sine with a little noise (so it is never digitally silent or trivially compressible)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    return (amplitude * np.sin(2 * np.pi * freq * t) + noise * rng.standard_normal(t.size)).astype(
        np.float32
    )


def encode_mp3(wav: np.ndarray, sr: int, path: Path, bitrate: str = "128k") -> Path:
    """Write float audio ([samples] or [samples, channels]) to MP3 with ffmpeg/libmp3lame."""
    tmp = path.with_suffix(".tmp.wav")
    sf.write(tmp, wav, sr, subtype="PCM_16")
    subprocess.run(
        ["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", str(tmp), "-b:a", bitrate, str(path)],
        check=True,
    )
    tmp.unlink()
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_two_ranks(args: list[str], env: dict) -> None:
    """`python -m tagtrain ARGS` as ranks 0 and 1 of one DDP group on localhost, as
    torchrun starts them; both must exit 0."""
    port = str(free_port())
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "tagtrain", *args],
            cwd=ROOT,
            env={
                **os.environ,
                **env,
                "RANK": str(rank),
                "LOCAL_RANK": str(rank),
                "WORLD_SIZE": "2",
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": port,
            },
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in (0, 1)
    ]
    results = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results[0][1][-2000:] + results[1][1][-2000:]


@pytest.fixture(scope="session")
def project_root() -> Path:
    return ROOT


# The demo corpus, rendered and prepared once per test session: the real data every
# trainer/evaluation test uses. 70 clips = 10 per style; small shards so that every split
# has several (loader workers and ranks each need their own).
DEMO_TEST_N = 70


def built_once_per_run(tmp_path_factory, name: str, build) -> Path:
    """A session artefact's folder, `build(folder)` run once per test run. Under
    pytest-xdist each worker is its own session and would build it again (minutes for
    the demo corpus and dataset); there the first worker builds it in the run's shared
    temporary folder under a file lock and the others wait for it and reuse it. Tests
    only read these artefacts (as they already must, sharing them within a session)."""
    if "PYTEST_XDIST_WORKER" not in os.environ:
        out = tmp_path_factory.mktemp(name)
        build(out)
        return out
    from filelock import FileLock

    out = tmp_path_factory.getbasetemp().parent / name  # shared by the run's workers
    built = out.with_name(f"{name}.built")  # beside it: tests may list the folder
    with FileLock(f"{out}.lock"):
        if not built.exists():
            shutil.rmtree(out, ignore_errors=True)  # a worker that failed half-way
            out.mkdir()
            build(out)
            built.touch()
    return out


@pytest.fixture(scope="session")
def demo_corpus(tmp_path_factory) -> Path:
    """Rendered demo corpus directory: audio/, midi/, manifest.parquet."""
    from manifests.demo import render_corpus

    def build(out: Path) -> None:
        render_corpus(out, n=DEMO_TEST_N, seed=0, workers=2)

    return built_once_per_run(tmp_path_factory, "demo_corpus", build)


@pytest.fixture(scope="session")
def demo_dataset(demo_corpus, tmp_path_factory) -> Path:
    """The demo corpus prepared by the Beam job (mel + pcm, 16 kHz, 128 mel)."""

    def build(folder: Path) -> None:
        result = run_cli(
            "beam_runner.py", "prepare", "--manifest", str(demo_corpus / "manifest.parquet"),
            "--audio-root", str(demo_corpus), "--output", str(folder / "data"),
            "--features", "mel,pcm", "--shard-size-mb", "8", "--direct_num_workers=2",
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]

    return built_once_per_run(tmp_path_factory, "demo_dataset", build) / "data"


@pytest.fixture
def seaweed_s3(tmp_path):
    """A real S3 server (SeaweedFS) on localhost for one test, stopped afterwards."""
    from tests.seaweed import SeaweedS3

    with SeaweedS3(tmp_path / "seaweed") as server:
        yield server
