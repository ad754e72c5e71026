#!/usr/bin/env python
"""How each bookkeeping cost grows with the corpus: 10k, 100k and 1M tracks (issue 31).

    .venv/bin/python bench/scale.py [--sizes 10000,100000,1000000] [--root DIR] [--rows TEXT]
        [--repeats 5]

For each size a synthetic corpus (`scale_corpus.py`: manifest, audio listing, split
tables, a prepared dataset with tiny members) is built once under `--root` and reused.
Each row (`scale_prepare.ROWS`, and `scale_loader.ROWS` when that module is there) runs
in a fresh spawned process per size: the table shows its wall seconds (or the figure the
row measured itself), its peak RSS (the child's ru_maxrss), the RSS it added over what it
had after its imports, and any extra figures it returned.

The growth exponent between the two largest sizes n1 < n2 is log(v2/v1) / log(n2/n1),
for the time (`t`), the CPU time of the row's process and of the processes it waited for
(`cpu`), for the added memory and for extra figures of memory or bytes (`bytes`,
`*_mb`). Small figures are noise, so each is floored before the ratio: time at 50 ms,
memory at 20 MB, bytes at 4 KiB (a row below the floor at both sizes grows with exponent
0); a row is run again in its process, up to 5 times (`--repeats`), while its runs have
taken under 1 s in all, and the least time is kept (noise, and a first run's lazy
imports, only ever add time). The last line is `max growth exponent E (row name)` over
every exponent shown but wall time's where the row has a CPU time: on a shared machine
wall time carries the others' load (the goals, about wall time, use it). The goals of
issue 31 that apply at a size given are checked and failures printed; rows are matched
by name: a row named "loader: first batch..." within 5 s and 1 GB (its peak RSS, or `worker_rss_mb` if
larger), "loader state..." at most 5 MB (`bytes`), "...--update..." within 60 s.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import math
import multiprocessing
import os
import resource
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import cpu_seconds  # noqa: E402
from scale_corpus import Corpus, build_corpus  # noqa: E402

from pipelines.core.argtypes import positive_int  # noqa: E402
from pipelines.core.errors import OneLineParser, UserError, run_cli  # noqa: E402

ROW_MODULES = ("scale_prepare", "scale_loader")
FLOORS = {"seconds": 0.05, "mb": 20.0, "bytes": 4096.0}
REPEATS, REPEAT_WITHIN_S = 5, 1.0
GOAL_SIZE = 1_000_000


@dataclass
class Result:
    """One row at one size: seconds, peak and added RSS (MB), extra figures; or an error."""

    seconds: float = math.nan
    peak_mb: float = math.nan
    added_mb: float = math.nan
    extra: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    cpu: float = math.nan  # CPU seconds of the run kept: the row's process and its children


def growth_exponent(n1: float, v1: float, n2: float, v2: float, floor: float = 0.0) -> float:
    """log(v2/v1) / log(n2/n1), each figure raised to `floor` first (noise below it)."""
    v1, v2 = max(v1, floor), max(v2, floor)
    if n2 <= n1 or v1 <= 0 or v2 <= 0:
        return math.nan
    return math.log(v2 / v1) / math.log(n2 / n1)


def figure_kind(name: str) -> str | None:
    """Which floor an extra figure takes ("mb", "bytes"), or None: no exponent."""
    if name.endswith("_mb"):
        return "mb"
    if name == "bytes" or name.endswith("_bytes"):
        return "bytes"
    return None


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _child(module: str, name: str, corpus: Corpus, repeats: int, conn) -> None:
    """In the spawned process: import the row, note the RSS, run it (repeated when
    short), send back the figures."""
    try:
        os.environ["TAGKIT_CACHE_DIR"] = str(corpus.cache_dir)
        row = next(r for r in importlib.import_module(module).ROWS if r.name == name)
        for extra in row.imports:
            importlib.import_module(extra)
        base = _rss_mb()
        runs: list[tuple[float, float, dict]] = []
        began = time.perf_counter()
        while len(runs) < repeats and time.perf_counter() - began < REPEAT_WITHIN_S:
            start, cpu = time.perf_counter(), cpu_seconds()
            with contextlib.redirect_stdout(io.StringIO()):  # the commands' "wrote ..."
                figures = dict(row.fn(corpus) or {})
            wall, cpu = time.perf_counter() - start, cpu_seconds() - cpu
            runs.append((float(figures.pop("seconds", wall)), cpu, figures))
        seconds, cpu, figures = min(runs, key=lambda r: r[0])
        peak = _rss_mb()
        extra = {k: float(v) for k, v in figures.items() if isinstance(v, int | float)}
        conn.send(Result(seconds, peak, peak - base, extra, cpu=cpu))
    except BaseException as exc:  # reported in the table, not a traceback in the child
        conn.send(Result(error=f"{type(exc).__name__}: {' '.join(str(exc).split())[:120]}"))
    finally:
        conn.close()


def _spawned(target, *args):
    """Run target(*args, conn) in a fresh spawned process; what it sent."""
    ctx = multiprocessing.get_context("spawn")
    receive, send = ctx.Pipe(duplex=False)
    process = ctx.Process(target=target, args=(*args, send))
    process.start()
    send.close()
    try:
        result = receive.recv()
    except EOFError:
        result = Result(error=f"the row's process died (exit {process.join() or process.exitcode})")
    process.join()
    return result


def _corpus_child(root: Path, size: int, conn) -> None:
    """Built in its own process: its memory (1M tracks: GBs) is not the harness's."""
    try:
        conn.send(build_corpus(root, size))
    except BaseException as exc:
        conn.send(Result(error=f"{type(exc).__name__}: {exc}"))
    finally:
        conn.close()


def collect_rows(text: str | None) -> list[tuple[str, object]]:
    """(module, Row) of every row module present, filtered by name substrings."""
    rows = []
    for module in ROW_MODULES:
        try:
            loaded = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
            continue
        rows += [(module, row) for row in loaded.ROWS]
    if text:
        wanted = [w.strip() for w in text.split(",") if w.strip()]
        rows = [(m, r) for m, r in rows if any(w in r.name for w in wanted)]
        if not rows:
            raise UserError(f"--rows {text!r} matches no row")
    return rows


def exponents(sizes: list[int], results: dict[int, Result]) -> dict[str, float]:
    """{figure: exponent between the two largest sizes} of one row."""
    if len(sizes) < 2:
        return {}
    n1, n2 = sizes[-2], sizes[-1]
    a, b = results[n1], results[n2]
    if a.error or b.error:
        return {}
    out = {
        "t": growth_exponent(n1, a.seconds, n2, b.seconds, FLOORS["seconds"]),
        "cpu": growth_exponent(n1, a.cpu, n2, b.cpu, FLOORS["seconds"]),
        "mem": growth_exponent(n1, a.added_mb, n2, b.added_mb, FLOORS["mb"]),
    }
    for name, value in b.extra.items():
        kind = figure_kind(name)
        if kind and name in a.extra:
            out[name] = growth_exponent(n1, a.extra[name], n2, value, FLOORS[kind])
    return out


def growth_of(exps: dict[str, float]) -> list[float]:
    """The exponents the last line's maximum takes: CPU time's in place of wall time's
    where a row has it (wall time carries a shared machine's load, which grew 2x between
    two runs of this table), memory's and bytes'."""
    steady = not math.isnan(exps.get("cpu", math.nan))
    return [v for k, v in exps.items() if not math.isnan(v) and not (k == "t" and steady)]


def _cell(result: Result) -> str:
    if result.error:
        return f"error: {result.error}"
    extra = " ".join(f"{k}={v:.4g}" for k, v in result.extra.items())
    return (f"{result.seconds:8.3f}s cpu {result.cpu:.3f}s {result.peak_mb:6.0f}MB "
            f"+{result.added_mb:<5.0f} {extra}")  # fmt: skip


def goal_failures(name: str, size: int, result: Result) -> list[str]:
    """The goals of issue 31 this row misses at this size (they apply at 1M tracks)."""
    if size < GOAL_SIZE or result.error:
        return []
    failed = []
    memory = max(result.peak_mb, result.extra.get("worker_rss_mb", 0.0))
    if name.startswith("loader: first batch") and (result.seconds > 5.0 or memory > 1024):
        failed.append(f"{name} at {size}: {result.seconds:.2f} s, {memory:.0f} MB "
                      "(goal: <= 5 s and <= 1 GB)")  # fmt: skip
    if name.startswith("loader state") and result.extra.get("bytes", 0) > 5e6:
        failed.append(f"{name} at {size}: {result.extra['bytes']:.0f} bytes (goal: <= 5 MB)")
    if "--update" in name and result.seconds > 60.0:
        failed.append(f"{name} at {size}: {result.seconds:.1f} s (goal: <= 60 s)")
    return failed


def table(rows, sizes: list[int], results: dict[str, dict[int, Result]]) -> list[str]:
    width = max(len(row.name) for _, row in rows)
    lines = [f"{'row':{width}} | " + " | ".join(f"{n:>10,}" for n in sizes) + " | exponent"]
    worst = (-math.inf, "")
    for _, row in rows:
        cells = [_cell(results[row.name][n]) for n in sizes]
        exps = exponents(sizes, results[row.name])
        shown = " ".join(f"{k} {v:.2f}" for k, v in exps.items()) or "-"
        lines.append(f"{row.name:{width}} | " + " | ".join(cells) + f" | {shown}")
        for value in growth_of(exps):
            if value > worst[0]:
                worst = (value, row.name)
    failed = [f for _, row in rows for n in sizes
              for f in goal_failures(row.name, n, results[row.name][n])]  # fmt: skip
    checked = [n for n in sizes if n >= GOAL_SIZE]
    if not checked:
        lines.append(f"goals: not checked (they apply at {GOAL_SIZE:,} tracks)")
    lines += [f"goal failed: {f}" for f in failed] or (["goals: all met"] if checked else [])
    errors = [row.name for _, row in rows if any(r.error for r in results[row.name].values())]
    lines += [f"row failed: {name}" for name in errors]
    if worst[1]:
        lines.append(f"max growth exponent {worst[0]:.2f} ({worst[1]})")
    else:
        lines.append("max growth exponent nan (no row has two sizes)")
    return lines


def parse_sizes(text: str) -> list[int]:
    try:
        sizes = sorted({int(s) for s in text.split(",") if s.strip()})
    except ValueError:
        raise UserError(f"--sizes {text!r}: expected comma-separated track counts") from None
    if not sizes or sizes[0] < 1:
        raise UserError(f"--sizes {text!r}: expected positive track counts")
    return sizes


def main() -> int:
    parser = OneLineParser(prog="bench/scale.py", description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="10000,100000,1000000", help="track counts")
    parser.add_argument("--root", type=Path, help="corpus cache (default: under the temp dir)",
                        default=Path(tempfile.gettempdir()) / "tagkit-scale")  # fmt: skip
    parser.add_argument("--rows", help="only rows whose name contains one of these (commas)")
    parser.add_argument("--repeats", type=positive_int, default=REPEATS,
                        help="runs of a short row in its process (the least time is kept)")  # fmt: skip
    args = parser.parse_args()
    sizes = parse_sizes(args.sizes)
    rows = collect_rows(args.rows)
    results: dict[str, dict[int, Result]] = {row.name: {} for _, row in rows}
    for size in sizes:
        start = time.perf_counter()
        corpus = _spawned(_corpus_child, args.root, size)
        if isinstance(corpus, Result):
            raise RuntimeError(f"building the corpus of {size} tracks: {corpus.error}")
        print(f"corpus of {size:,} tracks: {time.perf_counter() - start:.1f} s", flush=True)
        for module, row in rows:
            results[row.name][size] = _spawned(_child, module, row.name, corpus, args.repeats)
            print(f"  {row.name}: {_cell(results[row.name][size])}", flush=True)
    lines = table(rows, sizes, results)
    print("\n".join(lines))
    return 1 if any(line.startswith("row failed") for line in lines) else 0


if __name__ == "__main__":
    sys.exit(run_cli("bench/scale.py", main))
