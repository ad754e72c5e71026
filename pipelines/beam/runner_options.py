"""Beam options for our jobs: standard Beam flags pass through untouched, with local
defaults that work offline.

Default runner: FnApiRunner in multi-processing mode, one worker per core. Beam's plain
DirectRunner first tries the Prism runner, which downloads a binary; asking for
DirectRunner therefore gets the FnApiRunner too.
"""

from __future__ import annotations

import os
import re
import sys
import threading
import time

from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from pipelines.core.errors import UserError, suggest

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


# What one worker process's start-up costs (Beam's SDK harness, grpc, torch: ~2.5 s) in
# 30-s tracks decoded and featurised (~0.022 CPU-s each): ~120. k worker processes beat
# threads of this process when the work they share saves more than that: from
# ~120 * k / (k - 1) tracks (240 for two). Below, the job runs on k threads of this
# process (Beam's multi_threading mode): decoding, resampling, the STFT, sha256 and file
# writes release the GIL, and nothing is started. Measured on 2 cores, an update that
# rebuilt 88 shards (96 tracks to decode) took 5.2 s on two threads against 6.8-7.2 s on
# one, the same bytes (bench/RESULTS.md, "Issue 17 in one run"). Worker processes stay the
# choice for large jobs: the GIL would serialise their Python share on many cores.
STARTUP_TRACKS = 120


def local_worker_args(beam_args: list[str], shards: int, tracks: int) -> list[str]:
    """The local runner's flags for a job of `shards` shards to build (`tracks` tracks to
    decode): no more workers than shards and, unless --direct_running_mode is given, a job
    too small to repay worker processes' start-up runs in this process: one shard as is
    (in_memory), more on one thread per worker (multi_threading). Other runners get the
    flags unchanged: they size their workers themselves."""
    runner = (_flag_value(beam_args, "runner") or "FnApiRunner").rsplit(".", 1)[-1]
    if runner not in LOCAL_RUNNERS:
        return list(beam_args)
    mode = _flag_value(beam_args, "direct_running_mode")
    requested = _flag_value(beam_args, "direct_num_workers") or "0"
    if not requested.isdigit():
        return list(beam_args)  # Beam reports its own flag's error
    # 0 is Beam's "one per core", our default too.
    workers = min(int(requested) or os.cpu_count() or 1, max(1, shards))
    args = _without_flag(beam_args, "direct_num_workers")
    if mode is None and workers == 1:
        return [*args, "--direct_running_mode=in_memory", "--direct_num_workers=1"]
    if mode is None and tracks < STARTUP_TRACKS * workers / (workers - 1):
        return [*args, "--direct_running_mode=multi_threading", f"--direct_num_workers={workers}"]
    return [*args, f"--direct_num_workers={workers}"]


def is_local(runner: str) -> bool:
    return runner in ("FnApiRunner", "PortableRunner", "DaskRunner")


class ProgressBar:
    """Local runs only: workers append one byte per finished track to a file; a thread
    here turns its size into a tqdm bar (works across worker processes)."""

    def __init__(self, path: str, total: int, desc: str, stream=None):
        self.path, self.total, self.desc = path, total, desc
        self.stream = stream or sys.stderr
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

        # disable=None: no bar when stderr is not a terminal (logs, CI, a test).
        bar = tqdm(total=self.total, desc=self.desc, unit="track", file=self.stream, disable=None)
        with bar:
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


def job_counters(result) -> dict[str, int]:
    """The job's Beam counters by name (empty for runners that report none)."""
    if result is None:
        return {}
    try:
        return {c.key.metric.name: c.committed for c in result.metrics().query()["counters"]}
    except Exception:  # some runners do not report metrics
        return {}


def print_counters(console, result, counters: dict[str, int] | None = None) -> None:
    """The job's counters, one line: Beam's, or `counters` when given (nothing if
    empty)."""
    if counters is None:
        counters = job_counters(result)
    if counters:
        text = "counters: " + ", ".join(f"{k}={v}" for k, v in sorted(counters.items()))
        console.print(text, soft_wrap=True)  # one line, however narrow the terminal


def _beam_parser():
    """An argparse parser of every registered Beam option, as Beam builds it itself."""
    from apache_beam.options.pipeline_options import _BeamArgumentParser

    parser = _BeamArgumentParser(allow_abbrev=False)
    for cls in {str(c): c for c in PipelineOptions.__subclasses__()}.values():
        cls._add_argparse_args(parser)
    return parser


def _beam_spelling(arg: str, beam_flags: set[str]) -> str:
    """`--s3-endpoint-url=X` -> `--s3_endpoint_url=X` when that is a Beam option: the
    project's flags use hyphens, Beam's underscores; both spellings are accepted."""
    flag, sep, value = arg.partition("=")
    if flag.startswith("--") and "-" in flag[2:]:
        underscored = "--" + flag[2:].replace("-", "_")
        if underscored in beam_flags:
            return underscored + sep + value
    return arg


def checked_beam_args(rest: list[str], our_parser) -> list[str]:
    """The flags left after our parser, if every one is a registered Beam option; else a
    one-line UserError naming the first unknown flag, with a suggestion."""
    if any(a.startswith("--dask") for a in rest) or "DaskRunner" in " ".join(rest):
        import apache_beam.runners.dask.dask_runner  # noqa: F401  (registers DaskOptions)
    parser = _beam_parser()
    beam_flags = {s for a in parser._actions for s in a.option_strings}
    args = [_beam_spelling(a, beam_flags) for a in rest]
    _, unknown = parser.parse_known_args(args)
    if unknown:
        word = unknown[0]
        if not word.startswith("-"):
            raise UserError(f"unexpected argument {word!r} (see --help)")
        flag = word.split("=", 1)[0]
        ours = [s for a in our_parser._actions for s in a.option_strings if s.startswith("--")]
        hint = suggest(flag, ours) or suggest(flag, sorted(beam_flags))
        raise UserError(f"unknown flag {flag}{hint} (see --help; Beam's own options pass through)")
    return args


# Library log lines that are noise to a user: Beam's Python logging (driver and SDK
# harness, "INFO:__main__:..." or "WARNING apache_beam...: ..."), absl/grpc lines
# ("I0000 00:00:..."). Lines of our own loggers (pipelines, tagtrain, manifests) and every
# ERROR line pass.
_LIBRARY_LOG = re.compile(
    rb"^(?:(?:DEBUG|INFO|WARNING|WARN)[: ](?!(?:pipelines|tagtrain|manifests)\b)"
    rb"|[IWD]\d{4} \d\d:\d\d:\d\d|WARNING: All log messages before absl)"
)
# Per-file decoder chatter (mpg123 via libsndfile, ffmpeg's "[mp3 @ 0x...]"): counted.
_DECODER_NOTE = re.compile(rb"^(?:\[(?:src/libmpg123|[\w.]+ @ 0x)|\[mpg123|Note: |Warning: )")


class QuietOutput:
    """Unless --verbose: everything written to file descriptor 2 (by this process and by
    the local runners' worker processes, which inherit it) passes a filter that drops
    library log lines and counts decoder warnings. `stream` is the real stderr, for the
    progress bar."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.hidden = 0
        self.decoder_warnings = 0
        self.stream = sys.stderr

    def __enter__(self):
        if not self.enabled:
            return self
        sys.stderr.flush()
        self._saved = os.dup(2)
        read_end, write_end = os.pipe()
        os.dup2(write_end, 2)
        os.close(write_end)
        self.stream = os.fdopen(os.dup(self._saved), "w", buffering=1)
        self._thread = threading.Thread(target=self._pump, args=(read_end,), daemon=True)
        self._thread.start()
        return self

    def _pump(self, read_end: int) -> None:
        with os.fdopen(read_end, "rb") as pipe:
            for line in pipe:
                if _DECODER_NOTE.match(line):
                    self.decoder_warnings += 1
                elif _LIBRARY_LOG.match(line):
                    self.hidden += 1
                else:
                    os.write(self._saved, line)

    def __exit__(self, *exc):
        if not self.enabled:
            return False
        sys.stderr.flush()
        os.dup2(self._saved, 2)  # closes our write end of the pipe
        # Worker processes may still hold the pipe briefly; never wait on them for long.
        self._thread.join(timeout=5)
        self.stream.close()
        os.close(self._saved)
        self.stream = sys.stderr
        return False

    def summary(self) -> str:
        """One line for the end-of-job summary (empty when nothing was filtered)."""
        parts = []
        if self.decoder_warnings:
            parts.append(f"decoder warnings: {self.decoder_warnings}")
        if self.hidden:
            parts.append(f"{self.hidden} library log lines hidden")
        return f"{'; '.join(parts)} (--verbose shows them)" if parts else ""
