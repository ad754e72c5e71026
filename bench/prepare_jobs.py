"""Running prepare jobs for the benchmarks: the command line, a timed run, what a killed
job leaves, manifests of repeated or appended tracks, and a job reading its audio from a
local SeaweedFS S3 server."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from common import ROOT, Timer

from manifests.schema import read_manifest, write_manifest


def prepare_cmd(
    manifest: Path, audio_root: str, out: Path, shard_mb: float, *extra, features: str = "mel"
) -> list:
    return [
        sys.executable, str(ROOT / "beam_runner.py"), "prepare", "--manifest", str(manifest),
        "--audio-root", audio_root, "--out", str(out), "--features", features,
        "--decoder", "soundfile", "--shard-size-mb", str(shard_mb), *extra,
    ]  # fmt: skip


def timed(cmd: list[str], env: dict | None = None) -> Timer:
    with Timer() as t:
        subprocess.run(cmd, check=True, capture_output=True, env=env)
    return t


def fresh(path: Path, source: Path | None = None) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    if source is not None:
        shutil.copytree(source, path)
    return path


def lose_records(out: Path, fraction: float, pattern: str, cards: bool = True) -> int:
    """The last `fraction` of the completion records matching `pattern` (sorted), their
    tars and (`cards`) every card under `out` deleted: what a job killed at 1 - fraction
    leaves. An interrupted --update leaves the card of the dataset it updates: cards=False."""
    records = sorted(out.glob(pattern))
    lost = records[len(records) - int(round(fraction * len(records))) :]
    for record in lost:
        record.unlink()
        (record.parent.parent / record.name.replace(".json", ".tar")).unlink(missing_ok=True)
    for card in out.rglob("dataset.json") if cards else ():
        card.unlink()
    return len(lost)


def repeated_manifest(corpus: Path, n: int, copies: int, dest: Path) -> Path:
    """The first n tracks, each listed `copies` times under distinct keys: long enough
    jobs that start-up is a small share, on files small enough to stay in the page cache."""
    rows = read_manifest(corpus / "manifest.parquet").slice(0, n).to_pylist()
    write_manifest([{**r, "key": f"{r['key']}-{c}"} for c in range(copies) for r in rows], dest)
    return dest


def appended_manifest(manifest: Path, dest: Path) -> tuple[list[dict], int]:
    """`manifest` plus 2% new tracks (copies of its first rows under new keys) at `dest`;
    returns the original rows and how many were appended."""
    rows = read_manifest(manifest).to_pylist()
    extra = [{**r, "key": f"{r['key']}-new"} for r in rows[: max(1, len(rows) // 50)]]
    write_manifest(rows + extra, dest)
    return rows, len(extra)


def s3_run(manifest: Path, corpus: Path, out: Path, shard_mb: float, work: Path) -> Timer:
    """The same job with its audio read from a local SeaweedFS S3 server (manifest and
    output local, so only the audio reads differ)."""
    from tests.seaweed import SeaweedS3, seaweed_env_for_beam

    with SeaweedS3(work) as server:
        server.upload_dir(corpus / "audio", "bench/audio")
        flags = seaweed_env_for_beam(server)
        return timed(prepare_cmd(manifest, "s3://bench", out, shard_mb, *flags))
