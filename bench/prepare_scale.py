"""`bench/prepare.py --scale` and `--resume-only`: the job on M and 2M tracks (fixed and
per-track cost), from S3, resumed after losing shards, updated after appending tracks, at
large shards; where a job's start-up goes; and perturb's resume."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from common import ROOT, Timer, best_of
from prepare_chains import bare_chain
from prepare_jobs import (
    appended_manifest,
    fresh,
    lose_records,
    prepare_cmd,
    repeated_manifest,
    s3_run,
    timed,
)

from manifests.schema import read_manifest, write_manifest


def resume_and_update(manifest: Path, corpus: Path, shard_mb: float, tmp: Path) -> dict:
    """Full run vs resume after losing the last 20% of shards vs --update after appending
    2% new tracks; all with the default workers (one per core)."""
    full_out = tmp / "full"
    full = timed(prepare_cmd(manifest, str(corpus), full_out, shard_mb)).wall
    resumed_out = fresh(tmp / "resumed", full_out)
    lost = lose_records(resumed_out, 0.2, "_progress/*.json")
    resume = timed(prepare_cmd(manifest, str(corpus), resumed_out, shard_mb)).wall
    rows, appended = appended_manifest(manifest, tmp / "appended.parquet")
    updated_out = fresh(tmp / "updated", full_out)
    update = timed(
        prepare_cmd(tmp / "appended.parquet", str(corpus), updated_out, shard_mb, "--update")
    ).wall
    return {
        "tracks": len(rows),
        "shards": len(list(full_out.glob("*.tar"))),
        "shards lost": lost,
        "appended": appended,
        "seconds": {"full": full, "resume": resume, "update": update},
        "ratios": {"resume after 80% / full": resume / full, "append 2% / full": update / full},
    }


def startup_costs(manifest: Path, corpus: Path, done: Path, shard_mb: float, updated: bool) -> dict:
    """Where a job's fixed cost goes: a no-op re-run (every shard reused: no pipeline), one
    shard rebuilt (in the driver's process), the driver's imports alone (`--help`), what
    each worker process imports before its first element, torch, and librosa.filters (what
    the numpy mel filters saved every building worker)."""
    py = sys.executable
    worker = "import apache_beam.runners.worker.sdk_worker_main, pipelines.beam.prepare"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    # `done` was updated: re-runs pass --update (they keep its layout); one lost shard is
    # what an interrupted update leaves, with the card of the dataset it updates.
    extra = ("--update",) if updated else ()
    noop = timed(prepare_cmd(manifest, str(corpus), done, shard_mb, *extra))
    lose_records(done, 1 / len(list(done.glob("_progress/*.json"))), "_progress/*.json",
                 cards=not updated)  # fmt: skip
    costs = {
        "no-op re-run (no pipeline)": noop,
        "one shard rebuilt (in the driver's process)": timed(
            prepare_cmd(manifest, str(corpus), done, shard_mb, *extra)
        ),
        "driver start-up (prepare --help)": timed(
            [py, str(ROOT / "beam_runner.py"), "prepare", "--help"]
        ),  # fmt: skip
        "one worker's imports (Beam SDK harness + job modules)": timed([py, "-c", worker], env),
        "import torch (not in the driver, nor in a worker that builds no shard)": timed(
            [py, "-c", "import torch"]
        ),
        "import numpy": timed([py, "-c", "import numpy"]),
        "import numpy, librosa.filters (no longer in a worker)": timed(
            [py, "-c", "import numpy, librosa.filters"]
        ),
    }
    return {k: {"wall": round(t.wall, 2), "cpu": round(t.cpu, 2)} for k, t in costs.items()}


def perturb_resume(corpus: Path, n: int, tmp: Path) -> dict:
    """Perturb's paper set on n test tracks (prepared with pcm): a full run vs a re-run
    after losing the last 20% of the target shards."""
    rows = read_manifest(corpus / "manifest.parquet").slice(0, n).to_pylist()
    write_manifest([{**r, "split": "test"} for r in rows], tmp / "perturb.parquet")
    data = tmp / "perturb-data"
    prepare = prepare_cmd(tmp / "perturb.parquet", str(corpus), data, 4.0, features="mel,pcm")
    subprocess.run(prepare, check=True, capture_output=True)
    cmd = [sys.executable, str(ROOT / "beam_runner.py"), "perturb", "--data", str(data),
           "--split", "test"]  # fmt: skip
    full = timed(cmd)
    shards = len(list((data / "perturbed").glob("*/_progress/*.json")))
    lost = lose_records(data / "perturbed", 0.2, "*/_progress/*.json")
    resumed = timed(cmd)
    noop = timed(cmd)
    return {
        "tracks": n, "target shards": shards, "lost": lost,
        "seconds (wall, cpu)": {k: (round(t.wall, 1), round(t.cpu, 1))
                                for k, t in (("full", full), ("resume", resumed),
                                             ("no-op", noop))},
        "resume / full (wall)": round(resumed.wall / full.wall, 2),
        "resume / full (cpu)": round(resumed.cpu / full.cpu, 2),
    }  # fmt: skip


def scale_jobs(corpus: Path, n: int, copies: int, shard_mb: float, tmp: Path, repeats: int):
    """Each job of the --scale table `repeats` times, interleaved: full M, full 2M, 2M from
    S3, a resume of 2M after losing 20% of the shards, an --update after appending 2%, and
    full 4M and its 2% update at the default 256 MB shards."""
    m1 = repeated_manifest(corpus, n, copies, tmp / "m1.parquet")
    m2 = repeated_manifest(corpus, n, 2 * copies, tmp / "m2.parquet")
    appended, appended4 = tmp / "appended.parquet", tmp / "appended4.parquet"
    rows, extra = appended_manifest(m2, appended)
    m4 = repeated_manifest(corpus, n, 4 * copies, tmp / "m4.parquet")
    appended_manifest(m4, appended4)
    runs: dict[str, list[Timer]] = {}
    os.environ["TAGKIT_CACHE_DIR"] = str(tmp / "cache")  # verified_tars.py: not ~/.cache
    for _ in range(repeats):
        jobs = {
            "full, M": lambda: timed(prepare_cmd(m1, str(corpus), fresh(tmp / "l1"), shard_mb)),
            "full, 2M": lambda: timed(prepare_cmd(m2, str(corpus), fresh(tmp / "l2"), shard_mb)),
            "2M, audio on S3": lambda: s3_run(m2, corpus, fresh(tmp / "s3"), shard_mb,
                                              fresh(tmp / "weed")),
        }  # fmt: skip
        for name, job in jobs.items():
            runs.setdefault(name, []).append(job())
        lost = lose_records(fresh(tmp / "resumed", tmp / "l2"), 0.2, "_progress/*.json")
        runs.setdefault("resume 2M after losing 20%", []).append(
            timed(prepare_cmd(m2, str(corpus), tmp / "resumed", shard_mb))
        )
        # The update runs on the full run's own output, as a user's does (its stat cache
        # of verified tars applies); a copy is kept to count the shards it touched.
        original = fresh(tmp / "before-update", tmp / "l2")
        runs.setdefault("update 2M + 2%", []).append(
            timed(prepare_cmd(appended, str(corpus), tmp / "l2", shard_mb, "--update"))
        )
        # At the default 256 MB shards (~500 tracks each at MSD size) 2% new tracks land
        # in nearly every shard: the update copies the dataset out of its old tars. On 4M
        # tracks (19 shards), so that the copy, not start-up, is what is measured.
        runs.setdefault("full 4M, 256 MB shards", []).append(
            timed(prepare_cmd(m4, str(corpus), fresh(tmp / "big"), 256.0))
        )
        runs.setdefault("update 4M + 2%, 256 MB shards", []).append(
            timed(prepare_cmd(appended4, str(corpus), tmp / "big", 256.0, "--update"))
        )
    touched = sum(1 for p in (tmp / "l2").glob("*.tar")
                  if p.read_bytes() != (original / p.name).read_bytes())  # fmt: skip
    counts = {"M": n * copies, "2M": len(rows), "appended": extra, "lost": lost,
              "shards": len(list((tmp / "l2").glob("*.tar"))),
              "shards the append touched": touched}  # fmt: skip
    return runs, counts


def scale_run(
    corpus: Path, n: int, copies: int, shard_mb: float, tmp: Path, repeats: int = 2
) -> dict:
    """Issue 17's ratios, side by side in one run (see --scale)."""
    paths = [corpus / p for p in read_manifest(corpus / "manifest.parquet")
             .column("audio_path").to_pylist()[:n]]  # fmt: skip
    bare_chain(paths[:2])
    bare = bare_chain(paths)
    runs, counts = scale_jobs(corpus, n, copies, shard_mb, tmp, repeats)
    jobs = {name: best_of(timers) for name, timers in runs.items()}
    # l2 holds the updated dataset now: its manifest is the appended one, its layout the
    # one --update kept.
    startup = startup_costs(tmp / "appended.parquet", corpus, tmp / "l2", shard_mb, True)
    m, two_m = jobs["full, M"], jobs["full, 2M"]
    return {
        "tracks": counts,
        "jobs, best of repeats (wall, cpu)": {
            k: (round(t.wall, 1), round(t.cpu, 1)) for k, t in jobs.items()
        },
        "every run (wall, cpu)": {
            k: [(round(t.wall, 1), round(t.cpu, 1)) for t in v] for k, v in runs.items()
        },
        "bare chain cpu s/track": round(bare.cpu / n, 4),
        "fixed and per-track cost": cost_model(m, two_m, n * copies),
        "ratios": scale_ratios(
            bare.cpu / n,
            m,
            two_m,
            jobs["2M, audio on S3"],
            jobs["resume 2M after losing 20%"],
            jobs["update 2M + 2%"],
            jobs["full 4M, 256 MB shards"],
            jobs["update 4M + 2%, 256 MB shards"],
            n * copies,
        ),  # fmt: skip
        "start-up": startup,
    }


def cost_model(m: Timer, two_m: Timer, tracks: int) -> dict:
    """A job of T tracks costs F + w*T: w = (t(2M) - t(M)) / M, F = 2 t(M) - t(2M)."""
    out = {}
    for kind in ("wall", "cpu"):
        a, b = getattr(m, kind), getattr(two_m, kind)
        w = (b - a) / tracks
        out[kind] = {"fixed F s": round(2 * a - b, 2), "per track w s": round(w, 5),
                     "full 2M run / F": round(b / max(2 * a - b, 1e-9), 1)}  # fmt: skip
    return out


def scale_ratios(bare_per_track, m, two_m, s3, resume, update, big, big_update, tracks) -> dict:
    marginal_cpu = (two_m.cpu - m.cpu) / tracks
    ratios = {
        "S3 / local, throughput (wall)": two_m.wall / s3.wall,
        "S3 / local, per core (cpu)": two_m.cpu / s3.cpu,
        "prepare marginal / bare chain, per core": bare_per_track / marginal_cpu,
        "prepare whole job / bare chain, per core": bare_per_track / (two_m.cpu / (2 * tracks)),
        "resume after 80% / full (wall)": resume.wall / two_m.wall,
        "resume after 80% / full (cpu)": resume.cpu / two_m.cpu,
        "append 2% / full (wall)": update.wall / two_m.wall,
        "append 2% / full (cpu)": update.cpu / two_m.cpu,
        "append 2% / full, 4M tracks, 256 MB shards (wall)": big_update.wall / big.wall,
        "append 2% / full, 4M tracks, 256 MB shards (cpu)": big_update.cpu / big.cpu,
    }
    return {k: round(v, 3) for k, v in ratios.items()}
