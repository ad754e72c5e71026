"""The dataset-builder registry (as timm's model registry): a builder is a function
registered by name with `@register_builder`, and `build_benchmark` dispatches to it.

A builder takes the `BuildOptions` (`options.dataset` is the name it was called by) and
returns `BenchmarkRows`: manifest rows (`track_row`), the vocabulary, where its split
tables come from, and notes for the user. The options it reads beyond the common ones
(`path_map`) are named in `options=`; any other option that differs from its default is
refused with one line naming the builders that take it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path

import pyarrow as pa

from manifests.labels import DEFAULT_MIN_TAG_VALUE
from manifests.schema import ManifestError, rows_to_table, safe_key
from manifests.tables import load_path_map
from manifests.vocabulary import VOCABULARY_KEY
from pipelines.core.errors import suggest
from pipelines.core.flags import flag_name


@dataclass
class BuildOptions:
    dataset: str
    split_variant: str = "clean"  # mtat
    train_labels: Path | None = None  # msd / msd-cals
    min_tag_value: float = DEFAULT_MIN_TAG_VALUE  # msd / msd-cals, lastfm_tags.db
    unlabeled_train: bool = False  # msd / msd-cals
    train_ids: Path | None = None  # msd-cals
    msd_layout: str = "7digital"  # msd / msd-cals
    path_map: Path | None = None  # every builder


COMMON_OPTIONS = ("dataset", "path_map")


@dataclass
class BenchmarkRows:
    """What a builder returns. `source`: its folder under `manifests/splits/` (None when
    it reads none); `metadata`: more manifest metadata (strings). Rows whose
    `audio_path` is "" (unknown, and not in `--path-map`) are left out of the manifest
    and listed in the missing-audio report, with `unplaced_note`."""

    rows: list[dict]
    vocabulary: list[str]
    source: str | None
    notes: list[str] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)
    # The note when rows have no audio path (`audio_path` ""), with {count}.
    unplaced_note: str = (
        "{count:,} tracks have no known audio path; they are left out and listed in the "
        "missing-audio report (--path-map gives them one)"
    )


@dataclass
class Build:
    """A benchmark manifest before writing. `unplaced` rows have no known audio path and
    are left out of `table`; they belong in the missing-audio report."""

    table: pa.Table
    unplaced: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Builder:
    name: str
    build: Callable[[BuildOptions], BenchmarkRows]
    help: str
    options: tuple[str, ...]


BUILDERS: dict[str, Builder] = {}  # name -> builder; `python -m manifests build` lists them


def register_builder(name: str, help: str = "", options: tuple[str, ...] = ()):
    """Function decorator: `build(options: BuildOptions) -> BenchmarkRows` becomes the
    dataset `name`; `options`: the `BuildOptions` fields it reads beyond the common ones."""
    known = {f.name for f in fields(BuildOptions)}
    unknown = [o for o in options if o not in known]
    if unknown:
        raise ValueError(f"builder {name!r}: no such BuildOptions field: {', '.join(unknown)}")

    def wrap(build):
        if name in BUILDERS:
            raise ValueError(f"dataset builder {name!r} registered twice")
        BUILDERS[name] = Builder(name, build, help, tuple(options))
        return build

    return wrap


def builder_names() -> list[str]:
    return sorted(BUILDERS)


class _Names:
    """The registered names, sorted, as a live container: argparse `choices` made before
    a builder registers still accept it."""

    def __contains__(self, name) -> bool:
        return name in BUILDERS

    def __iter__(self):
        return iter(builder_names())

    def __len__(self) -> int:
        return len(BUILDERS)


DATASET_NAMES = _Names()


def get_builder(name: str) -> Builder:
    if name not in BUILDERS:
        raise ManifestError(
            f"unknown dataset {name!r}{suggest(name, BUILDERS)}; expected one of "
            f"{', '.join(builder_names())}"
        )
    return BUILDERS[name]


def track_row(prefix: str, dataset: str, split: str, track_id: str, path: str, tags, **more):
    """A manifest row; its key is `{prefix}_{track_id}` made safe."""
    return {
        "key": safe_key(f"{prefix}_{track_id}"),
        "track_id": track_id,
        "dataset": dataset,
        "split": split,
        "audio_path": path,
        "tags": tags,
        **more,
    }


def check_options(options: BuildOptions) -> Builder:
    """The dataset's builder; ManifestError when an option that only other builders take
    differs from its default."""
    builder = get_builder(options.dataset)
    defaults = BuildOptions(options.dataset)
    refused: dict[tuple[str, ...], list[str]] = {}  # the builders taking them -> flags
    for f in fields(BuildOptions):
        name = f.name
        if name in COMMON_OPTIONS or name in builder.options:
            continue
        takers = tuple(n for n in builder_names() if name in BUILDERS[n].options)
        if takers and getattr(options, name) != getattr(defaults, name):
            refused.setdefault(takers, []).append(flag_name(name))
    for takers, flags in refused.items():
        names = takers[0] if len(takers) == 1 else f"{', '.join(takers[:-1])} and {takers[-1]}"
        raise ManifestError(f"{', '.join(flags)} applies only to {names}")
    return builder


def build_benchmark(options: BuildOptions) -> Build:
    """The manifest of dataset `options.dataset`, by its registered builder."""
    builder = check_options(options)
    built = builder.build(options)
    rows, notes = built.rows, list(built.notes)
    if options.path_map is not None:
        mapping = load_path_map(options.path_map)
        for row in rows:
            row["audio_path"] = mapping.get(row["track_id"], row["audio_path"])
    placed = [row for row in rows if row["audio_path"]]
    unplaced = [row for row in rows if not row["audio_path"]]
    if unplaced:
        notes.append(built.unplaced_note.format(count=len(unplaced)))
    metadata = {VOCABULARY_KEY: json.dumps(built.vocabulary), "builder": options.dataset}
    if built.source is not None:
        metadata["split_source"] = f"manifests/splits/{built.source}"
    metadata.update(built.metadata)
    return Build(rows_to_table(placed, metadata), unplaced, notes)
