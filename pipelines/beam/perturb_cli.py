"""`beam_runner.py perturb`: arguments, source and output checks, running, and the summary."""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass

from pipelines.beam import beam_io
from pipelines.beam.output_lock import outputs_held
from pipelines.beam.perturb import (
    AUGMENTED_DIR,
    PERTURBED_DIR,
    Perturb,
    PerturbConfig,
    PerturbError,
    check_source,
    make_targets,
)
from pipelines.beam.prepare_cli import (
    check_existing,
    progress_file,
    remove_orphans,
)
from pipelines.beam.prepare_flags import force_setting, out_setting, verbose_setting
from pipelines.beam.runner_options import ProgressBar, pipeline_options, print_counters
from pipelines.core import storage
from pipelines.core.card import CARD_NAME, MAX_CARD_BYTES, REJECTS_NAME, parse_card
from pipelines.core.deformations import load_deformations
from pipelines.core.errors import UserError
from pipelines.core.flags import add_flags, from_args, setting, settings_line

MAX_AUGMENT = 100


@dataclass
class PerturbFlags:
    data: str | None = setting(
        None, "prepared dataset directory or bucket prefix", hidden_aliases=("--dataset",)
    )
    split: str | None = setting(None, "default: test, or train with --augment")
    deformations: str | None = setting(
        None, "'paper' (the 8 of the robustness protocol, default) or a YAML/JSON file"
    )
    seed: int = setting(0, "seeds the noise of every deformation")
    augment: int = setting(
        0,
        "write K randomly deformed copies per track instead (offline augmentation)",
        metavar="K",
    )
    out: str | None = out_setting(
        f"default: DATA/{PERTURBED_DIR} (one dataset per deformation under it), "
        f"or DATA/{AUGMENTED_DIR} with --augment"
    )
    verbose: bool = verbose_setting()
    force: bool = force_setting()


def add_parser(sub) -> None:
    p = sub.add_parser(
        "perturb",
        help="deformed copies of a prepared split (MUDA robustness sets, offline augmentation)",
        description="Deform every track of one split of a prepared dataset (from the PCM in "
        "its shards) and write one dataset per deformation, or K random copies per track "
        "with --augment. Beam's own options (--runner, --direct_num_workers, ...) pass "
        "through; any other flag is an error.",
        allow_abbrev=False,
    )
    add_flags(p, PerturbFlags, with_defaults=True)
    p.set_defaults(run=run)


def read_source_card(dataset: str) -> dict:
    path = beam_io.join(dataset, CARD_NAME)
    data = beam_io.read_bytes(path, limit=MAX_CARD_BYTES)
    if data is None:
        raise UserError(f"no dataset card at {path}: run beam_runner.py prepare first")
    return parse_card(data, path)


def check_args(args) -> None:
    if not args.data:
        raise UserError("--data is required (the prepared dataset directory or bucket prefix)")
    if args.seed < 0:
        raise UserError("--seed must be >= 0")
    if not 0 <= args.augment <= MAX_AUGMENT:
        raise UserError(f"--augment must be within 0..{MAX_AUGMENT}")
    if args.augment and args.deformations is not None:
        raise UserError("--augment draws random deformations; leave out --deformations")


def build_config(args, beam_args: list[str]) -> PerturbConfig:
    check_args(args)
    dataset = args.data.rstrip("/")
    split = args.split or ("train" if args.augment else "test")
    deformations = [] if args.augment else load_deformations(args.deformations or "paper")
    card = read_source_card(dataset)
    check_source(card, split, dataset)
    root = args.out or beam_io.join(dataset, AUGMENTED_DIR if args.augment else PERTURBED_DIR)
    cfg = PerturbConfig(
        dataset=dataset,
        split=split,
        source_card=card,
        targets=make_targets(card, split, root.rstrip("/"), deformations, args.augment),
        seed=args.seed,
        output_root=root.rstrip("/"),
        filesystem_args=tuple(beam_args),
    )
    missing = [n for n in cfg.shards if not beam_io.exists(beam_io.join(dataset, n))]
    if missing:
        raise PerturbError(f"{dataset}: {len(missing)} shard(s) of the card are missing, e.g. "
                           f"{missing[0]}")  # fmt: skip
    return cfg


def run(args, beam_args: list[str]) -> int:
    options, runner = pipeline_options(beam_args)
    beam_io.configure(tuple(beam_args))
    cfg = build_config(args, beam_args)
    with outputs_held([target.output for target in cfg.targets], "perturb"):
        return perturb(args, options, runner, cfg)


def perturb(args, options, runner: str, cfg: PerturbConfig) -> int:
    """The job, on outputs no other local job writes (`output_lock`)."""
    import apache_beam as beam

    for target in cfg.targets:
        check_existing(target.output, cfg.identity(target), args.force)
    if not storage.is_remote(cfg.targets[0].output):
        for target in cfg.targets:
            os.makedirs(target.output, exist_ok=True)
    for target in cfg.targets:
        remove_orphans(target.output)
    items = cfg.num_tracks * sum(t.copies for t in cfg.targets)
    what = (
        f"{cfg.targets[0].copies} augmented copies per track"
        if args.augment
        else f"{len(cfg.targets)} deformations ({', '.join(t.name for t in cfg.targets)})"
    )
    print(f"perturb: {cfg.num_tracks} {cfg.split} tracks x {what}, seed {cfg.seed}, "
          f"runner {runner}")  # fmt: skip
    print(f"settings (vs defaults): {settings_line(from_args(args, PerturbFlags))}")
    start = time.time()
    quiet = getattr(args, "quiet", None)
    with progress_file(runner, "perturb-progress-") as progress:
        cfg = PerturbConfig(**{**cfg.__dict__, "progress_path": progress})
        bar = ProgressBar(progress, items, "perturb", getattr(quiet, "stream", None))
        with bar if progress else contextlib.nullcontext():
            with beam.Pipeline(options=options) as pipeline:
                _ = pipeline | "Perturb" >> Perturb(cfg)
            result = pipeline.result
    print_summary(cfg, time.time() - start, result, quiet.summary() if quiet else "")
    return 0


def print_summary(cfg: PerturbConfig, seconds: float, result=None, quiet_line: str = "") -> None:
    """End-of-job table, one row per written dataset, from the cards and Beam counters."""
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"perturb: {cfg.dataset} [{cfg.split}]")
    for col in ("deformation", "samples", "rejects", "shards", "hours", "GB", "inputs"):
        t.add_column(col, justify="left" if col == "deformation" else "right")
    unbalanced, reasons, items = [], {}, 0
    for target in cfg.targets:
        card = json.loads(beam_io.read_bytes(beam_io.join(target.output, CARD_NAME)))
        counts = card["counts"]
        split = card["splits"].get(cfg.split, {"seconds": 0.0, "shards": []})
        balanced = counts["inputs"] == counts["samples"] + counts["rejects"]
        if not balanced:
            unbalanced.append(target.name)
        for reason, n in counts["rejects_by_reason"].items():
            reasons[reason] = reasons.get(reason, 0) + n
        items += counts["inputs"]
        t.add_row(
            target.name,
            str(counts["samples"]),
            str(counts["rejects"]),
            str(len(split["shards"])),
            f"{split['seconds'] / 3600:.2f}",
            f"{sum(s['bytes'] for s in split['shards']) / 1e9:.3f}",
            f"{counts['inputs']} {'ok' if balanced else 'MISMATCH'}",
        )
    console = Console()
    console.print(t)
    if reasons:
        listed = ", ".join(f"{k}: {v}" for k, v in sorted(reasons.items()))
        console.print(f"rejects by reason: {listed}  (see each dataset's {REJECTS_NAME})")
    print_counters(console, result)
    if quiet_line:
        console.print(quiet_line)
    console.print(
        f"wrote {len(cfg.targets)} dataset(s) under {cfg.output_root}; "
        f"{seconds:.1f} s ({items / max(seconds, 1e-9):.2f} deformed tracks/s)"
    )
    if unbalanced:
        raise RuntimeError(f"inputs != samples + rejects in {', '.join(unbalanced)}")
