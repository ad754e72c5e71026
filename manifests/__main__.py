"""python -m manifests {build,folder,vocab,info}: make and inspect manifests.

Flags come from the dataclasses of `manifests/flags.py`. Every user error is one line on
stderr (`error: ...`; a bad flag names the command) and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from dataclasses import fields
from pathlib import Path

import pyarrow as pa

from manifests.audio_check import missing_rows, write_missing_report
from manifests.builders import BUILDERS, BuildOptions, build_benchmark, builder_names
from manifests.flags import BuildFlags, FolderFlags, InfoFlags, VocabFlags
from manifests.folder import (
    FolderOptions,
    build_folder,
    parse_ratios,
    write_skipped_report,
)
from manifests.schema import SPLITS, ManifestError, read_manifest, write_manifest
from manifests.vocabulary import tag_counts, top_tags, vocabulary_of, with_vocabulary
from pipelines.core.errors import OneLineParser, UserError, prog_name, run_cli
from pipelines.core.flags import add_flags


def _parser() -> OneLineParser:
    parser = OneLineParser(
        prog=prog_name("python -m manifests", command="manifest"),
        description=__doc__.split("\n\n")[0],
        allow_abbrev=False,
    )
    commands = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    for name, (help, flags, run) in COMMANDS.items():
        command = commands.add_parser(
            name,
            help=help,
            description=help,
            allow_abbrev=False,
            **(_datasets_epilog() if name == "build" else {}),
        )
        add_flags(command, flags, with_defaults=True)
        command.set_defaults(run=run)
    parser.commands = commands.choices  # name -> its parser, for one-line flag errors
    return parser


def _datasets_epilog() -> dict:
    """`build --help` lists the registered datasets, one a line."""
    width = max(map(len, BUILDERS), default=0)
    lines = [f"  {name:{width}}  {BUILDERS[name].help}" for name in builder_names()]
    return {
        "epilog": "datasets:\n" + "\n".join(lines),
        "formatter_class": argparse.RawDescriptionHelpFormatter,
    }


def _note(message: str) -> None:
    print(f"note: {message}", file=sys.stderr)


def _split_summary(table: pa.Table) -> str:
    counts = Counter(table.column("split").to_pylist())
    return ", ".join(f"{split} {counts[split]:,}" for split in SPLITS if counts[split])


def _report_path(manifest: Path, kind: str) -> Path:
    """`NAME.{kind}.tsv` next to the manifest `NAME.parquet`."""
    return manifest.with_name(f"{manifest.name.removesuffix('.parquet')}.{kind}.tsv")


def _write(table: pa.Table, root: Path, out: Path, report: Path, reported: bool) -> int:
    """Write the manifest with its audio root and say what it holds; a report of an
    earlier run that this one did not write is removed (it would mislead)."""
    if not reported and report.exists():
        report.unlink()
    metadata = dict(table.schema.metadata or {})
    metadata[b"audio_root"] = str(root.resolve()).encode()
    table = write_manifest(table.replace_schema_metadata(metadata), out)
    print(f"wrote {out}: {_split_summary(table)}")
    return 0


def _build(args: argparse.Namespace) -> int:
    if not args.audio_root.is_dir():
        raise ManifestError(f"--audio-root {args.audio_root} is not a directory")
    options = BuildOptions(**{f.name: getattr(args, f.name) for f in fields(BuildOptions)})
    result = build_benchmark(options)
    for message in result.notes:
        _note(message)
    missing = missing_rows(result.table, args.audio_root) + [
        {**row, "reason": "no audio path known"} for row in result.unplaced
    ]
    report = _report_path(args.out, "missing")
    if missing:
        report.parent.mkdir(parents=True, exist_ok=True)
        write_missing_report(report, missing)
        total = result.table.num_rows + len(result.unplaced)
        if not args.allow_missing:
            raise ManifestError(
                f"{len(missing):,} of {total:,} audio files are missing under "
                f"{args.audio_root}; see {report} (or pass --allow-missing)"
            )
        _note(f"{len(missing):,} of {total:,} audio files are missing; listed in {report}")
    return _write(result.table, args.audio_root, args.out, report, bool(missing))


def _folder(args: argparse.Namespace) -> int:
    options = FolderOptions(
        root=args.root,
        tags=args.tags,
        split_by=args.split_by,
        ratios=parse_ratios(args.ratios),
        seed=args.seed,
        dataset=args.dataset,
        durations=not args.no_durations,
    )
    result = build_folder(options)
    for message in result.notes:
        _note(message)
    report = _report_path(args.out, "skipped")
    if result.skipped:
        write_skipped_report(report, result.skipped)
        _note(f"every skipped file and why: {report}")
    return _write(result.table, args.root, args.out, report, bool(result.skipped))


def _vocab(args: argparse.Namespace) -> int:
    if args.top < 1:
        raise ManifestError(f"--top must be at least 1, got {args.top}")
    table = read_manifest(args.manifest)
    ranked = top_tags(table, args.top)
    if not ranked:
        raise ManifestError(f"{args.manifest} has no tagged tracks in its train split")
    for index, (tag, count) in enumerate(ranked):
        print(f"{index}\t{tag}\t{count}")
    if args.write:
        write_manifest(with_vocabulary(table, [tag for tag, _ in ranked]), args.manifest)
        print(f"wrote the {len(ranked)}-tag vocabulary into {args.manifest}", file=sys.stderr)
    return 0


def _info(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    table = read_manifest(args.manifest)
    console = Console(width=max(100, Console().width))
    splits = table.column("split").to_pylist()
    present = [s for s in SPLITS if s in set(splits)]
    metadata = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
    vocabulary = vocabulary_of(table)
    datasets = sorted(set(table.column("dataset").to_pylist()))
    console.print(
        f"[bold]{args.manifest}[/bold]: {table.num_rows:,} tracks, dataset "
        f"{', '.join(datasets)}; builder {metadata.get('builder', '?')}; vocabulary "
        + (f"{len(vocabulary)} tags" if vocabulary is not None else "not set")
    )

    missing_by_split: Counter = Counter()
    if args.audio_root is not None:
        if not args.audio_root.is_dir():
            raise ManifestError(f"--audio-root {args.audio_root} is not a directory")
        missing_by_split.update(row["split"] for row in missing_rows(table, args.audio_root))
    overview = Table(title="tracks per split")
    for column in ("split", "tracks", "with tags", "mean tags", "artists", "hours"):
        overview.add_column(column, justify="left" if column == "split" else "right")
    if args.audio_root is not None:
        overview.add_column("missing audio", justify="right")
    columns = {c: table.column(c).to_pylist() for c in ("tags", "artist_id", "duration")}
    for split in present:
        rows = [i for i, s in enumerate(splits) if s == split]
        tagged = [len(columns["tags"][i]) for i in rows if columns["tags"][i]]
        artists = {columns["artist_id"][i] for i in rows} - {None}
        seconds = [columns["duration"][i] for i in rows if columns["duration"][i] is not None]
        cells = [
            split,
            f"{len(rows):,}",
            f"{len(tagged):,}",
            f"{sum(tagged) / len(tagged):.2f}" if tagged else "-",
            f"{len(artists):,}" if artists else "-",
            f"{sum(seconds) / 3600:,.1f}" if seconds else "-",
        ]
        if args.audio_root is not None:
            cells.append(f"{missing_by_split[split]:,}")
        overview.add_row(*cells)
    console.print(overview)

    counts = {split: tag_counts(table, split) for split in present}
    order = vocabulary or [tag for tag, _ in top_tags(table)]
    seen = set(order)
    extra = sorted({t for c in counts.values() for t in c} - seen)
    order = order + extra
    shown = order if args.top <= 0 else order[: args.top]
    tags = Table(
        title=f"tag frequencies ({'vocabulary' if vocabulary else 'train'} order; "
        f"{len(shown)} of {len(order)} tags)"
    )
    tags.add_column("#", justify="right")
    tags.add_column("tag")
    for split in present:
        tags.add_column(split, justify="right")
    for index, tag in enumerate(shown):
        label = tag if tag in seen else f"{tag} (not in vocabulary)"
        tags.add_row(str(index), label, *(f"{counts[s][tag]:,}" for s in present))
    console.print(tags)
    return 0


COMMANDS = {  # name: (help, flags, what runs it)
    "build": ("a benchmark manifest from the shipped splits", BuildFlags, _build),
    "folder": ("a manifest for a folder of audio files", FolderFlags, _folder),
    "vocab": ("tag vocabulary by train frequency", VocabFlags, _vocab),
    "info": ("counts per split, tag frequencies, missing audio", InfoFlags, _info),
}


def _run(argv: list[str] | None) -> int:
    args = _parser().parse_command_args(argv)
    try:
        return args.run(args)
    except pa.ArrowException as exc:
        raise UserError(f"arrow: {exc}") from None


def main(argv: list[str] | None = None) -> int:
    # No program name before "error:": this command's errors have always read that way
    # (`tagkit: error:` when the console script runs it).
    return run_cli(prog_name(""), lambda: _run(argv))


if __name__ == "__main__":
    sys.exit(main())
