"""What a prepare job tells its user: the plan before it runs (what is reused, what is
built, in how many processes) and the summary after it (the card's table, counters, what
was reused and rebuilt)."""

from __future__ import annotations

import json

from pipelines.beam import beam_io
from pipelines.beam.prepare_plan import ShardWork
from pipelines.beam.runner_options import job_counters, print_counters
from pipelines.core.card import CARD_NAME, INDEX_NAME, REJECTS_NAME


def announce(cfg, runner: str) -> None:
    plan = ", ".join(f"{split} {n}" for split, n in dict(cfg.num_shards).items())
    print(f"prepare: {cfg.num_inputs} tracks into at most {plan} shards, runner {runner}")


def announce_work(work: ShardWork, options, runner: str, cores: int) -> None:
    """One line on what the plan reuses and builds, and where."""
    built = len(work.build)
    if not work.reused:
        if runner == "FnApiRunner" and 0 < built < cores:
            # A shard is one task (its rows are grouped before decoding): fewer shards
            # than cores leaves cores idle.
            print(f"note: {built} shards for {cores} cores; a smaller --shard-size-mb gives "
                  "more shards and more parallelism")  # fmt: skip
        return
    line = f"resume: {len(work.reused)} finished shards reused ({work.tracks_reused} tracks); "
    if not built:
        print(line + "nothing to build, the card is rewritten from their records")
        return
    where = f"runner {runner}"
    if runner == "FnApiRunner":
        opts = options.get_all_options()
        workers, mode = opts.get("direct_num_workers") or 1, opts.get("direct_running_mode")
        where = {
            "in_memory": "in this process",
            "multi_threading": f"on {plural(workers, 'thread')} of this process",
        }.get(mode, f"in {plural(workers, 'worker process')}")
    shards = plural(built, "shard")
    print(line + f"building {shards} ({work.to_decode} tracks to decode) {where}")


def plural(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}{'es' if noun.endswith('s') else 's'}"


def job_counts(result, work: ShardWork) -> dict[str, int]:
    """Beam's counters of the pipeline (none without one) plus the shards and tracks
    the driver's plan reused without giving them to the pipeline."""
    counts = dict(job_counters(result))
    if work.reused:
        counts["shards_reused"] = counts.get("shards_reused", 0) + len(work.reused)
        counts["tracks_reused"] = counts.get("tracks_reused", 0) + work.tracks_reused
    return counts


def reuse_line(counts: dict[str, int]) -> str:
    """What a resumed or updated job kept and what it rebuilt, from its counters."""
    reused, tracks = counts.get("shards_reused", 0), counts.get("tracks_reused", 0)
    if not (reused or tracks):
        return ""
    built = counts.get("shards_written", 0)
    decoded = counts.get("decoded", 0) + counts.get("rejected", 0)
    return (f"reused {reused} finished shards and {tracks} tracks in all; rebuilt {built} "
            f"shards, decoding {decoded} tracks")  # fmt: skip


def print_summary(
    output: str, seconds: float, counts: dict[str, int], quiet_line: str = ""
) -> None:
    """End-of-job table from the written card and rejects; the job's counters (Beam's
    and the driver's plan: `job_counts`)."""
    from rich.console import Console
    from rich.table import Table

    card = json.loads(beam_io.read_bytes(beam_io.join(output, CARD_NAME)))
    totals = card["counts"]
    t = Table(title=f"prepare: {output}")
    for col in ("split", "samples", "shards", "hours", "GB"):
        t.add_column(col, justify="right" if col != "split" else "left")
    for name, split in card["splits"].items():
        t.add_row(
            name,
            str(split["samples"]),
            str(len(split["shards"])),
            f"{split['seconds'] / 3600:.2f}",
            f"{sum(s['bytes'] for s in split['shards']) / 1e9:.3f}",
        )
    console = Console()
    console.print(t)
    balanced = totals["inputs"] == totals["samples"] + totals["rejects"]
    console.print(
        f"inputs {totals['inputs']} = samples {totals['samples']} + rejects {totals['rejects']}"
        f" ({'ok' if balanced else 'MISMATCH'})"
    )
    if totals["rejects_by_reason"]:
        reasons = ", ".join(f"{k}: {v}" for k, v in totals["rejects_by_reason"].items())
        console.print(f"rejects by reason: {reasons}  (see {beam_io.join(output, REJECTS_NAME)})")
    print_counters(console, None, counts)
    reuse = reuse_line(counts)
    if reuse:
        console.print(reuse)
    if quiet_line:
        console.print(quiet_line)
    console.print(
        f"wrote {beam_io.join(output, INDEX_NAME)}, {CARD_NAME}; {seconds:.1f} s "
        f"({totals['inputs'] / max(seconds, 1e-9):.2f} tracks/s)"
    )
    if not balanced:
        raise RuntimeError("inputs != samples + rejects: a track was lost")
