"""Beam options for our jobs: standard Beam flags pass through untouched, with local
defaults that work offline.

Default runner: FnApiRunner in multi-processing mode, one worker per core. Beam's plain
DirectRunner first tries the Prism runner, which downloads a binary; asking for
DirectRunner therefore gets the FnApiRunner too.
"""

from __future__ import annotations

import os
import sys
import threading
import time

from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

DASK_RUNNER = "apache_beam.runners.dask.dask_runner.DaskRunner"
LOCAL_RUNNERS = ("FnApiRunner", "DirectRunner", "SwitchingDirectRunner", "BundleBasedDirectRunner")


def _flag_value(args: list[str], name: str) -> str | None:
    for i, arg in enumerate(args):
        if arg == f"--{name}" and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(f"--{name}="):
            return arg.split("=", 1)[1]
    return None


def _without_flag(args: list[str], name: str) -> list[str]:
    out, skip = [], False
    for i, arg in enumerate(args):
        if skip:
            skip = False
            continue
        if arg == f"--{name}" and i + 1 < len(args):
            skip = True
            continue
        if arg.startswith(f"--{name}="):
            continue
        out.append(arg)
    return out


def pipeline_options(beam_args: list[str]) -> tuple[PipelineOptions, str]:
    """PipelineOptions from the pass-through flags, with our local defaults; returns the
    options and the runner's short name."""
    args = list(beam_args)
    runner = _flag_value(args, "runner") or "FnApiRunner"
    short = runner.rsplit(".", 1)[-1]
    if short in LOCAL_RUNNERS:
        args = _without_flag(args, "runner") + ["--runner=FnApiRunner"]
        short = "FnApiRunner"
        if _flag_value(args, "direct_running_mode") is None:
            args.append("--direct_running_mode=multi_processing")
        if _flag_value(args, "direct_num_workers") is None:
            args.append(f"--direct_num_workers={os.cpu_count() or 1}")
    elif short == "DaskRunner":
        # Not in Beam's list of short names; importing it also registers its options.
        import apache_beam.runners.dask.dask_runner  # noqa: F401

        args = _without_flag(args, "runner") + [f"--runner={DASK_RUNNER}"]
    elif short == "PortableRunner" and _flag_value(args, "job_endpoint") == "embed":
        if _flag_value(args, "environment_type") is None:
            args.append("--environment_type=LOOPBACK")
    if _flag_value(args, "default_sdk_harness_log_level") is None:
        args.append("--default_sdk_harness_log_level=WARNING")
    options = PipelineOptions(args)
    options.view_as(StandardOptions)  # validates --runner early
    return options, short


def is_local(runner: str) -> bool:
    return runner in ("FnApiRunner", "PortableRunner", "DaskRunner")


class ProgressBar:
    """Local runs only: workers append one byte per finished track to a file; a thread
    here turns its size into a tqdm bar (works across worker processes)."""

    def __init__(self, path: str, total: int, desc: str):
        self.path, self.total, self.desc = path, total, desc
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        open(self.path, "wb").close()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        try:
            os.unlink(self.path)
        except OSError:
            pass

    def _run(self):
        from tqdm import tqdm

        with tqdm(total=self.total, desc=self.desc, unit="track", file=sys.stderr) as bar:
            while True:
                stopping = self._stop.is_set()
                try:
                    done = os.path.getsize(self.path)
                except OSError:
                    done = bar.n
                bar.update(max(0, done - bar.n))
                if stopping:
                    break
                time.sleep(0.5)


def print_counters(console, result) -> None:
    """The job's Beam counters, one line (nothing for runners that report none)."""
    if result is None:
        return
    try:
        counters = {c.key.metric.name: c.committed for c in result.metrics().query()["counters"]}
    except Exception:  # some runners do not report metrics
        return
    if counters:
        console.print("counters: " + ", ".join(f"{k}={v}" for k, v in sorted(counters.items())))
