"""`beam_runner.py prepare`: arguments, output checks, running, and the summary."""

from __future__ import annotations

import json
import os
import tempfile
import time

from pipelines.beam import beam_io
from pipelines.beam.prepare import (
    Prepare,
    PrepareConfig,
    file_sha256,
    manifest_vocabulary,
    plan_shards,
    read_manifest_table,
)
from pipelines.beam.runner_options import ProgressBar, is_local, pipeline_options, print_counters
from pipelines.beam.track import TrackConfig
from pipelines.core.audio import DECODERS
from pipelines.core.card import CARD_NAME, FEATURES, INDEX_NAME, REJECTS_NAME
from pipelines.core.features import FeatureConfig


def add_parser(sub) -> None:
    p = sub.add_parser(
        "prepare",
        help="audio -> log-mel / harmonic / PCM features -> WebDataset shards",
        description="Decode, validate and featurise every manifest row into deterministic "
        "WebDataset shards. Unknown flags pass through to Beam.",
    )
    p.add_argument("--manifest", required=True, help="manifest Parquet (local, gs://, s3://)")
    p.add_argument("--audio-root", default=None, help="root that relative audio paths are under")
    p.add_argument("--output", required=True, help="output directory or bucket prefix")
    p.add_argument("--features", default="mel,pcm", help="comma list of mel,harm,pcm")
    d = FeatureConfig()
    p.add_argument("--sample-rate", type=int, default=d.sample_rate)
    p.add_argument("--n-fft", type=int, default=d.n_fft)
    p.add_argument("--hop", type=int, default=d.hop)
    p.add_argument("--n-mels", type=int, default=d.n_mels)
    p.add_argument("--f-min", type=float, default=d.f_min)
    p.add_argument("--f-max", type=float, default=None, help="default: min(8000, sr/2)")
    p.add_argument("--log-scale", choices=("db", "log10_1p"), default="db")
    p.add_argument("--min-seconds", type=float, default=1.0, help="shorter tracks are rejected")
    p.add_argument(
        "--max-seconds",
        type=float,
        default=None,
        help="longer tracks are cropped to their first MAX seconds (recorded as cropped)",
    )
    p.add_argument("--shard-size-mb", type=float, default=256.0)
    p.add_argument("--decoder", choices=DECODERS, default="auto")
    p.add_argument("--force", action="store_true", help="overwrite an output of another config")
    p.set_defaults(run=run)


def track_config(args) -> TrackConfig:
    stored = tuple(f.strip() for f in args.features.split(",") if f.strip())
    unknown = [f for f in stored if f not in FEATURES]
    if unknown or not stored:
        raise ValueError(f"--features: unknown {unknown or '(empty)'}; choose from {FEATURES}")
    f_max = args.f_max if args.f_max is not None else min(8000.0, args.sample_rate / 2)
    features = FeatureConfig(
        sample_rate=args.sample_rate,
        n_fft=args.n_fft,
        hop=args.hop,
        n_mels=args.n_mels,
        f_min=args.f_min,
        f_max=f_max,
        log_scale=args.log_scale,
    )
    if args.min_seconds < 0 or (args.max_seconds is not None and args.max_seconds <= 0):
        raise ValueError("--min-seconds must be >= 0 and --max-seconds > 0")
    return TrackConfig(features, stored, args.decoder, args.min_seconds, args.max_seconds)


def check_existing_output(cfg: PrepareConfig, force: bool) -> None:
    check_existing(cfg.output, cfg.identity(), force)


def check_existing(output: str, identity: dict, force: bool) -> None:
    """Same inputs and config (`identity`): re-running rewrites identical files. Another
    config is refused unless --force, which first removes the old shards."""
    card_path = beam_io.join(output, CARD_NAME)
    data = beam_io.read_bytes(card_path)
    if data is None:
        return
    old = json.loads(data)
    if old.get("identity") == identity:
        return
    if not force:
        raise FileExistsError(
            f"{output} holds a dataset made with another config or input; "
            "use --force to replace it or choose another --output"
        )
    stale = [
        beam_io.join(output, s["name"])
        for split in old.get("splits", {}).values()
        for s in split.get("shards", [])
    ]
    beam_io.delete(stale + [card_path])


def run(args, beam_args: list[str]) -> int:
    import apache_beam as beam

    track = track_config(args)
    options, runner = pipeline_options(beam_args)
    beam_io.configure(tuple(beam_args))
    table = read_manifest_table(args.manifest)
    cfg = PrepareConfig(
        manifest=args.manifest,
        output=args.output.rstrip("/"),
        audio_root=args.audio_root,
        track=track,
        shard_size_mb=args.shard_size_mb,
        vocabulary=tuple(manifest_vocabulary(table)),
        manifest_sha256=file_sha256(args.manifest),
        num_inputs=table.num_rows,
        num_shards=tuple(sorted(plan_shards(table, track, args.shard_size_mb).items())),
        filesystem_args=tuple(beam_args),
    )
    check_existing_output(cfg, args.force)
    if not beam_io.is_url(cfg.output):
        os.makedirs(cfg.output, exist_ok=True)
    shards = dict(cfg.num_shards)
    plan = ", ".join(f"{split} {n}" for split, n in shards.items())
    print(f"prepare: {table.num_rows} tracks into at most {plan} shards, runner {runner}")
    workers = options.get_all_options().get("direct_num_workers") or 0
    if runner == "FnApiRunner" and sum(shards.values()) < workers:
        # A shard is one task (its rows are grouped before decoding): fewer shards than
        # workers leaves workers idle.
        print(
            f"note: {sum(shards.values())} shards for {workers} workers; a smaller "
            "--shard-size-mb gives more shards and more parallelism"
        )
    print("config:")
    print(json.dumps(cfg.identity()["track"], indent=2))
    start = time.time()
    progress = None
    if is_local(runner):
        progress = os.path.join(tempfile.mkdtemp(prefix="prepare-progress-"), "ticks")
        cfg = PrepareConfig(**{**cfg.__dict__, "progress_path": progress})
    with ProgressBar(progress, table.num_rows, "prepare") if progress else _nothing():
        with beam.Pipeline(options=options) as pipeline:
            _ = pipeline | "Prepare" >> Prepare(cfg)
        result = pipeline.result
    print_summary(cfg.output, time.time() - start, result)
    return 0


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def print_summary(output: str, seconds: float, result=None) -> None:
    """End-of-job table from the written card, rejects and Beam counters."""
    from rich.console import Console
    from rich.table import Table

    card = json.loads(beam_io.read_bytes(beam_io.join(output, CARD_NAME)))
    counts = card["counts"]
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
    balanced = counts["inputs"] == counts["samples"] + counts["rejects"]
    console.print(
        f"inputs {counts['inputs']} = samples {counts['samples']} + rejects {counts['rejects']}"
        f" ({'ok' if balanced else 'MISMATCH'})"
    )
    if counts["rejects_by_reason"]:
        reasons = ", ".join(f"{k}: {v}" for k, v in counts["rejects_by_reason"].items())
        console.print(f"rejects by reason: {reasons}  (see {beam_io.join(output, REJECTS_NAME)})")
    print_counters(console, result)
    console.print(
        f"wrote {beam_io.join(output, INDEX_NAME)}, {CARD_NAME}; {seconds:.1f} s "
        f"({counts['inputs'] / max(seconds, 1e-9):.2f} tracks/s)"
    )
    if not balanced:
        raise RuntimeError("inputs != samples + rejects: a track was lost")
