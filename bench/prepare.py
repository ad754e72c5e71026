#!/usr/bin/env python
"""Throughput of the Beam prepare job vs the bare chain vs an essentia-only chain.

Same files, one run, side by side:
  bare       decode (soundfile) + downmix + soxr resample + torch log-mel, plain loop, 1 process
  essentia   essentia MonoLoader (decode + resample) + essentia mel bands, plain loop, 1 process
  beam       `beam_runner.py prepare` (mel only), FnApiRunner multi-processing, 1 and 2 workers

The Beam job has a fixed start-up cost (worker processes, grpc); it is separated from the
per-track cost by running the job on M and on 2M tracks (the n files listed several times):
marginal s/track = (t(2M) - t(M)) / M. Both the marginal and the whole-job rates are reported.

    .venv/bin/python bench/prepare.py [--corpus DIR] [--n 40] [--copies 5]
    .venv/bin/python bench/prepare.py --scale [--n 40 --copies 30 --shard-size-mb 4]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import Timer  # noqa: E402
from prepare_chains import bare_chain, essentia_chain  # noqa: E402
from prepare_jobs import prepare_cmd, repeated_manifest, s3_run, timed  # noqa: E402
from prepare_scale import perturb_resume, resume_and_update, scale_run  # noqa: E402

from manifests.schema import read_manifest  # noqa: E402


def beam_job(manifest: Path, audio_root: Path, workers: int, shard_mb: float) -> Timer:
    out = Path(tempfile.mkdtemp(prefix="bench-prepare-"))
    cmd = prepare_cmd(
        manifest, str(audio_root), out / "data", shard_mb, f"--direct_num_workers={workers}"
    )
    try:
        return timed(cmd)
    finally:
        shutil.rmtree(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=Path, help="a demo corpus dir (rendered if absent)")
    parser.add_argument("--n", type=int, default=40, help="distinct tracks")
    parser.add_argument(
        "--copies", type=int, default=5, help="the job runs n*copies and n*2*copies tracks"
    )
    parser.add_argument(
        "--shard-size-mb",
        type=float,
        default=16.0,
        help="the job's shard size: a shard is one task, so several per worker (16)",
    )
    parser.add_argument(
        "--scale",
        action="store_true",
        help="issue 17's ratios in one run: the job on M and 2M tracks (marginal per-core "
        "cost vs the bare chain), 2M with audio on a local SeaweedFS S3, a resume after "
        "losing 20%% of the shards, an --update after appending 2%%, where the start-up "
        "goes, and perturb's resume (--perturb-n test tracks)",
    )
    parser.add_argument("--perturb-n", type=int, default=12, help="perturb's tracks (--scale)")
    parser.add_argument(
        "--repeats", type=int, default=2, help="runs of each --scale job (best taken)"
    )
    parser.add_argument(
        "--s3-only",
        action="store_true",
        help="only the job on 2M tracks from local disk and from a local SeaweedFS S3",
    )
    parser.add_argument(
        "--resume-only",
        action="store_true",
        help="only time a full run, a resume after losing 20%% of the shards, and an "
        "--update after appending 2%% new tracks",
    )
    args = parser.parse_args()
    corpus = args.corpus or Path(tempfile.gettempdir()) / "bench-demo-corpus"
    if (
        not (corpus / "manifest.parquet").exists()
        or len(read_manifest(corpus / "manifest.parquet")) < 2 * args.n
    ):
        from manifests.demo import render_corpus

        render_corpus(corpus, n=max(2 * args.n, 96), seed=0)
    table = read_manifest(corpus / "manifest.parquet")
    paths = [corpus / p for p in table.column("audio_path").to_pylist()[: args.n]]
    tmp = Path(tempfile.mkdtemp(prefix="bench-manifests-"))
    m1 = repeated_manifest(corpus, args.n, args.copies, tmp / "n.parquet")
    m2 = repeated_manifest(corpus, args.n, 2 * args.copies, tmp / "2n.parquet")
    n_job = args.n * args.copies
    if args.s3_only:
        m2 = repeated_manifest(corpus, args.n, 2 * args.copies, tmp / "s3.parquet")
        local = timed(prepare_cmd(m2, str(corpus), tmp / "local", args.shard_size_mb))
        s3 = s3_run(m2, corpus, tmp / "s3", args.shard_size_mb, tmp / "weed")
        print(json.dumps({
            "tracks": 2 * args.n * args.copies,
            "local (wall, cpu)": (round(local.wall, 1), round(local.cpu, 1)),
            "S3 (wall, cpu)": (round(s3.wall, 1), round(s3.cpu, 1)),
            "S3 / local, throughput (wall)": round(local.wall / s3.wall, 2),
            "S3 / local, per core (cpu)": round(local.cpu / s3.cpu, 2),
            "cores, load average": (os.cpu_count(), os.getloadavg()[0]),
        }, indent=2))  # fmt: skip
        shutil.rmtree(tmp)
        return
    if args.scale:
        load = os.getloadavg()[0]
        result = scale_run(corpus, args.n, args.copies, args.shard_size_mb, tmp, args.repeats)
        result["perturb"] = perturb_resume(corpus, args.perturb_n, tmp)
        result["cores, load average before/after"] = (os.cpu_count(), load, os.getloadavg()[0])
        print(json.dumps(result, indent=2))
        shutil.rmtree(tmp)
        return
    if args.resume_only:
        result = resume_and_update(m1, corpus, args.shard_size_mb, tmp)
        print(f"{os.cpu_count()} cores (shared machine: other jobs ran alongside)")
        print(json.dumps(result, indent=2))
        shutil.rmtree(tmp)
        return

    bare_chain(paths[:2])  # warm caches and imports
    bare, ess = bare_chain(paths), essentia_chain(paths)
    rows = {
        "bare chain, 1 process": (args.n / bare.wall, args.n / bare.cpu),
        "essentia-only chain, 1 process": (args.n / ess.wall, args.n / ess.cpu),
    }

    def best_of_two(manifest: Path, workers: int) -> Timer:
        # The box is shared, and noise only ever adds time.
        runs = [beam_job(manifest, corpus, workers, args.shard_size_mb) for _ in range(2)]
        return min(runs, key=lambda t: t.cpu)

    for workers in (1, 2):
        small, large = best_of_two(m1, workers), best_of_two(m2, workers)
        rows[f"beam job, {workers} worker(s), whole job"] = (
            2 * n_job / large.wall,
            2 * n_job / large.cpu,
        )
        rows[f"beam job, {workers} worker(s), marginal"] = (
            n_job / max(large.wall - small.wall, 1e-9),
            n_job / max(large.cpu - small.cpu, 1e-9),
        )
    shutil.rmtree(tmp)

    print(
        f"{args.n} demo tracks (30 s MP3s, half MTAT-like, half MSD-like); the Beam job runs"
        f" {n_job} and {2 * n_job} (copies); {os.cpu_count()} cores"
    )
    print(f"{'chain':44s} {'tracks/s (wall)':>16s} {'tracks per CPU-s':>17s}")
    for name, (wall, cpu) in rows.items():
        print(f"{name:44s} {wall:16.2f} {cpu:17.2f}")
    per_core = {k: v[1] for k, v in rows.items()}
    ratios = {
        "beam 1w marginal / bare (per core)": per_core["beam job, 1 worker(s), marginal"]
        / per_core["bare chain, 1 process"],
        "beam 2w marginal / bare (per core)": per_core["beam job, 2 worker(s), marginal"]
        / per_core["bare chain, 1 process"],
        "beam 1w marginal / essentia (per core)": per_core["beam job, 1 worker(s), marginal"]
        / per_core["essentia-only chain, 1 process"],
        "beam 2 workers / 1 worker (wall, whole job)": rows["beam job, 2 worker(s), whole job"][0]
        / rows["beam job, 1 worker(s), whole job"][0],
    }
    for name, ratio in ratios.items():
        print(f"{name:44s} {ratio:8.2f}x")
    print(json.dumps({"rates_wall_cpu": rows, "ratios": ratios}))


if __name__ == "__main__":
    main()
