"""`beam_runner.py prepare`: arguments, output checks, running, and the summary."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time

from manifests.schema import SPLITS, validate_table
from pipelines.beam import beam_io
from pipelines.beam.output_lock import outputs_held
from pipelines.beam.plan import (
    manifest_sha256,
    manifest_vocabulary,
    plan_shards,
    read_manifest_table,
)
from pipelines.beam.prepare import Prepare, PrepareConfig, job_versions
from pipelines.beam.prepare_finish import built_records, finish, remember_verified
from pipelines.beam.prepare_flags import PrepareFlags, feature_config
from pipelines.beam.prepare_plan import ShardWork, plan_work
from pipelines.beam.prepare_report import announce, announce_work, job_counts, print_summary
from pipelines.beam.progress import PROGRESS_DIR, SUMS_SUFFIX
from pipelines.beam.runner_options import (
    ProgressBar,
    is_local,
    local_worker_args,
    pipeline_options,
)
from pipelines.beam.track import TrackConfig
from pipelines.core import storage
from pipelines.core.card import (
    CARD_NAME,
    FEATURES,
    MAX_CARD_BYTES,
    REJECTS_NAME,
    manifest_split_variant,
)
from pipelines.core.errors import UserError
from pipelines.core.flags import add_flags, from_args, settings_line


class OutputExists(UserError):
    """The output holds a dataset of another config or input."""


class TooManyRejects(UserError):
    """More inputs were rejected than --max-reject-fraction allows."""


def add_parser(sub) -> None:
    p = sub.add_parser(
        "prepare",
        help="audio -> log-mel / harmonic / PCM features -> WebDataset shards",
        description="Decode, validate and featurise every manifest row into deterministic "
        "WebDataset shards. Beam's own options (--runner, --direct_num_workers, ...) pass "
        "through; any other flag is an error.",
        allow_abbrev=False,
    )
    add_flags(p, PrepareFlags, with_defaults=True)
    p.set_defaults(run=run)


def track_config(args) -> TrackConfig:
    stored = tuple(f.strip() for f in args.features.split(",") if f.strip())
    unknown = [f for f in stored if f not in FEATURES]
    if unknown or not stored:
        raise UserError(f"--features: unknown {unknown or '(empty)'}; choose from {FEATURES}")
    features = feature_config(args)
    if args.min_seconds < 0 or (args.max_seconds is not None and args.max_seconds <= 0):
        raise UserError("--min-seconds must be >= 0 and --max-seconds > 0")
    return TrackConfig(
        features, stored, args.decoder, args.min_seconds, args.max_seconds, args.max_file_mb,
        follow_symlinks=getattr(args, "follow_symlinks", False),
    )  # fmt: skip


def check_existing_output(cfg: PrepareConfig, force: bool, update: bool) -> None:
    old = read_card(cfg.output)
    if old is not None and not force and manifest_changed_only(old, cfg):
        if update:
            return
        raise OutputExists(
            f"the manifest changed since {cfg.output} was prepared: --update rebuilds only "
            "the shards whose tracks changed, --force replaces the dataset"
        )
    if old is not None and not force and not update and label_order_kept(old, cfg):
        raise OutputExists(
            f"{cfg.output} was last written by --update, which kept its label order: re-run "
            "with --update, or --force to replace the dataset"
        )
    check_existing(cfg.output, cfg.identity(), force)


def label_order_kept(card: dict, cfg: PrepareConfig) -> bool:
    """The card matches this job but for the vocabulary's order (what --update keeps)."""
    old, new = dict(card.get("identity") or {}), cfg.identity()
    differ = old.pop("vocabulary", None) != new.pop("vocabulary", None)
    return differ and old == new and sorted(card.get("vocabulary") or []) == sorted(cfg.vocabulary)


def read_card(output: str) -> dict | None:
    data = beam_io.read_bytes(beam_io.join(output, CARD_NAME), limit=MAX_CARD_BYTES)
    return None if data is None else json.loads(data)


def manifest_changed_only(card: dict, cfg: PrepareConfig) -> bool:
    """Same features, code and libraries; another manifest (whose tag ranks, and so the
    derived vocabulary, may differ: --update keeps the dataset's)."""
    old = dict(card.get("identity") or {})
    new = cfg.shard_identity()
    old.pop("vocabulary", None), new.pop("vocabulary", None)
    return old.pop("manifest_sha256", None) != cfg.manifest_sha256 and old == new


def updated_vocabulary(card: dict | None, vocabulary: list[str]) -> list[str]:
    """--update keeps the dataset's label order (a tag's frequency rank may shift when
    tracks are added, which would relabel every track); tags new to it come last."""
    old = list((card or {}).get("vocabulary") or [])
    if not old:
        return vocabulary
    return old + sorted(set(vocabulary) - set(old))


def updated_layout(card: dict | None, planned: dict[str, int]) -> dict[str, int]:
    """--update keeps each split's shard count, so that a track stays in its shard and
    only shards with added, removed or edited tracks are rebuilt; a split that has more
    than doubled is planned afresh (all its shards are rebuilt)."""
    old = (card or {}).get("job", {}).get("planned_shards", {})
    return {
        split: old[split] if split in old and n <= 2 * old[split] else n
        for split, n in planned.items()
    }


def check_existing(output: str, identity: dict, force: bool) -> None:
    """Same inputs and config (`identity`): re-running rewrites identical files. Another
    config is refused unless --force, which first removes the old shards."""
    card_path = beam_io.join(output, CARD_NAME)
    data = beam_io.read_bytes(card_path, limit=MAX_CARD_BYTES)
    if data is None:
        return
    old = json.loads(data)
    if old.get("identity") == identity:
        return
    if not force:
        raise OutputExists(
            f"{output} holds a dataset made with another config or input; "
            "use --force to replace it or choose another --out"
        )
    stale = [
        beam_io.join(output, s["name"])
        for split in old.get("splits", {}).values()
        for s in split.get("shards", [])
    ]
    records = [beam_io.join(output, PROGRESS_DIR, n) for n in _names(output, PROGRESS_DIR)]
    beam_io.delete(stale + records + [card_path])


def _names(output: str, sub: str = "", pattern: str = "*") -> list[str]:
    try:
        return beam_io.list_names(beam_io.join(output, sub) if sub else output, pattern)
    except Exception:  # nothing there yet (object stores may raise on an empty prefix)
        return []


def remove_orphans(output: str) -> None:
    """Temporary files of writers killed in an earlier attempt (local runs only leave
    them: object stores are written under final names)."""
    for directory in (output, beam_io.join(output, PROGRESS_DIR)):
        try:
            beam_io.remove_orphans(directory)
        except Exception:  # the directory does not exist yet
            pass


def remove_stale(cfg: PrepareConfig) -> None:
    """After a successful job: shards and completion records of an earlier layout that
    this one no longer has (another shard count, or a shard now without samples)."""
    card = json.loads(beam_io.read_bytes(beam_io.join(cfg.output, CARD_NAME)))
    planned = dict(cfg.num_shards)
    keep = {s["name"] for split in card["splits"].values() for s in split["shards"]}
    stale = []
    for split in SPLITS:
        for name in _names(cfg.output, pattern=f"{split}-*.tar"):
            if name not in keep:
                stale.append(beam_io.join(cfg.output, name))
        # A completion record and its mel-sums sidecar (`progress.write_sums`).
        for suffix in (".json", SUMS_SUFFIX):
            for name in _names(cfg.output, PROGRESS_DIR, f"{split}-*{suffix}"):
                if int(name[len(split) + 1 : -len(suffix)]) >= planned.get(split, 0):
                    stale.append(beam_io.join(cfg.output, PROGRESS_DIR, name))
    beam_io.delete(stale)


def audio_root_for(args, table) -> str | None:
    """--audio-root, else the root the manifest recorded when it was built; a local root
    must be a directory, and relative audio paths need a root."""
    from manifests.schema import manifest_metadata

    root = args.audio_root or manifest_metadata(table).get("audio_root")
    if root and not storage.is_remote(root) and not os.path.isdir(root):
        source = "--audio-root" if args.audio_root else "the manifest's audio_root"
        raise UserError(f"{source} {root} is not a directory (pass --audio-root)")
    if not root:
        relative = [p for p in table.column("audio_path").to_pylist() if not storage.is_absolute(p)]
        if relative:
            raise UserError(
                f"the manifest has relative audio paths (e.g. {relative[0]}) and records no "
                "audio_root: pass --audio-root"
            )
    return root


def build_config(args, beam_args: list[str], table) -> PrepareConfig:
    track = track_config(args)
    layout = plan_shards(table, track, args.shard_size_mb)
    vocabulary = manifest_vocabulary(table)
    if args.update:
        old = read_card(args.out.rstrip("/"))
        layout = updated_layout(old, layout)
        vocabulary = updated_vocabulary(old, vocabulary)
    return PrepareConfig(
        manifest=args.manifest,
        output=args.out.rstrip("/"),
        audio_root=audio_root_for(args, table),
        track=track,
        shard_size_mb=args.shard_size_mb,
        vocabulary=tuple(vocabulary),
        manifest_sha256=manifest_sha256(args.manifest),
        split_variant=manifest_split_variant(table.schema.metadata or {}) or "",
        num_inputs=table.num_rows,
        num_shards=tuple(sorted(layout.items())),
        filesystem_args=tuple(beam_args),
        versions=job_versions(),
    )


@contextlib.contextmanager
def progress_file(runner: str, prefix: str):
    """A temporary tick file for the progress bar of a local run (None elsewhere); its
    directory is removed however the job ends."""
    if not is_local(runner):
        yield None
        return
    directory = tempfile.mkdtemp(prefix=prefix)
    try:
        yield os.path.join(directory, "ticks")
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def run(args, beam_args: list[str]) -> int:
    if not args.out:
        raise UserError("--out is required (the output directory or bucket prefix)")
    track_config(args)  # flag errors before anything is read
    _, runner = pipeline_options(beam_args)
    beam_io.configure(tuple(beam_args))
    table = read_manifest_table(args.manifest)
    if table.num_rows == 0:
        raise UserError(f"{args.manifest} has no rows: nothing to prepare")
    cfg = build_config(args, beam_args, table)
    # Relative paths must stay inside the audio root; absolute ones are explicit.
    validate_table(table, audio_root=cfg.audio_root, allow_outside_root=True)
    with outputs_held([cfg.output], "prepare"):
        return prepare(args, beam_args, runner, cfg, table)


def prepare(args, beam_args: list[str], runner: str, cfg: PrepareConfig, table) -> int:
    """The job, on an output no other local job writes (`output_lock`)."""
    check_existing_output(cfg, args.force, args.update)
    if not storage.is_remote(cfg.output):
        os.makedirs(cfg.output, exist_ok=True)
    remove_orphans(cfg.output)
    announce(cfg, runner)
    print(f"settings (vs defaults): {settings_line(from_args(args, PrepareFlags))}")
    start = time.time()
    work = plan_work(cfg, table.to_pylist())
    options, runner = pipeline_options(
        local_worker_args(beam_args, len(work.build), work.to_decode)
    )
    announce_work(work, options, runner, os.cpu_count() or 1)
    quiet = getattr(args, "quiet", None)
    result = run_pipeline(cfg, work, options, runner, quiet) if work.build else None
    records = {**work.reused, **built_records(cfg, work)}
    finish(cfg, records)
    remember_verified(work, records)
    remove_stale(cfg)
    summary = quiet.summary() if quiet else ""
    print_summary(cfg.output, time.time() - start, job_counts(result, work), summary)
    check_rejects(cfg.output, args.max_reject_fraction)
    return 0


def run_pipeline(cfg: PrepareConfig, work: ShardWork, options, runner: str, quiet):
    """The Beam pipeline over the shards the plan must build; its result (counters)."""
    import apache_beam as beam

    with progress_file(runner, "prepare-progress-") as progress:
        cfg = PrepareConfig(**{**cfg.__dict__, "progress_path": progress})
        total = sum(work.rows[key] for key in work.build)
        bar = ProgressBar(progress, total, "prepare", getattr(quiet, "stream", None))
        with bar if progress else contextlib.nullcontext():
            with beam.Pipeline(options=options) as pipeline:
                _ = pipeline | "Prepare" >> Prepare(cfg, frozenset(work.build))
    return pipeline.result


def check_rejects(output: str, max_fraction: float) -> None:
    """All inputs rejected, or more than `max_fraction` of them: one line, and the card
    (the dataset's commit mark) is withdrawn; shards, index and rejects stay for a look
    and for a cheap re-run."""
    card_path = beam_io.join(output, CARD_NAME)
    counts = json.loads(beam_io.read_bytes(card_path))["counts"]
    inputs, rejects = counts["inputs"], counts["rejects"]
    if rejects == 0 or (rejects < inputs and rejects <= max_fraction * inputs):
        return
    beam_io.delete([card_path])
    top = ", ".join(f"{k} {v}" for k, v in sorted(
        counts["rejects_by_reason"].items(), key=lambda kv: -kv[1])[:3])  # fmt: skip
    where = beam_io.join(output, REJECTS_NAME)
    if rejects == inputs:
        raise TooManyRejects(f"every input was rejected ({top}); see {where}")
    raise TooManyRejects(
        f"{rejects} of {inputs} inputs rejected ({100 * rejects / inputs:.1f}% > "
        f"--max-reject-fraction {max_fraction:g}; {top}); see {where}, or raise the limit"
    )
