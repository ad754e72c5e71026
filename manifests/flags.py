"""`python -m manifests`'s flags: one typed dataclass per command, turned into flags by
`pipelines.core.flags` (defaults and help from the fields, shown by --help)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from manifests.builders import DATASET_NAMES, BuildOptions
from manifests.builders.msd import MSD_LAYOUTS
from manifests.builders.mtat import MTAT_VARIANTS
from manifests.folder import FolderOptions
from pipelines.core.flags import setting


def _switch(help: str):
    return setting(False, help, negatable=False)


@dataclass
class BuildFlags:
    dataset: str = setting("", "the benchmark", choices=DATASET_NAMES, positional=True)
    audio_root: Path | None = setting(None, "folder holding the audio", required=True)
    out: Path | None = setting(None, "manifest to write (.parquet)", required=True)
    split_variant: str = setting(BuildOptions.split_variant, "mtat", choices=tuple(MTAT_VARIANTS))
    allow_missing: bool = _switch(
        "write the manifest even when audio files are missing (they stay in it)"
    )
    train_labels: Path | None = setting(
        None,
        "msd/msd-cals labels: TSV (id<TAB>tag|tag) or the Last.fm lastfm_tags.db",
        aliases=("--labels",),
    )
    min_tag_value: float = setting(
        BuildOptions.min_tag_value, "lastfm_tags.db: keep a tag when its value is above this"
    )
    unlabeled_train: bool = _switch(
        "msd/msd-cals: train tracks without labels go to the unlabeled split"
    )
    train_ids: Path | None = setting(None, "msd-cals: train ids (.txt or .npy)")
    msd_layout: str = setting(
        BuildOptions.msd_layout, "msd: the audio files' layout", choices=MSD_LAYOUTS
    )
    path_map: Path | None = setting(None, "TSV id<TAB>audio path overriding paths")


@dataclass
class FolderFlags:
    root: Path | None = setting(None, "the folder of audio files", required=True)
    out: Path | None = setting(None, "manifest to write (.parquet)", required=True)
    tags: Path | None = setting(None, "TSV path<TAB>tag|tag[<TAB>artist]")
    split_by: str = setting(
        FolderOptions.split_by,
        "auto: artist when the tags file names artists, else track",
        choices=("artist", "track"),
    )
    ratios: str = setting(
        ",".join(f"{r:g}" for r in FolderOptions.ratios), "train,valid,test fractions"
    )
    seed: int = setting(FolderOptions.seed, "seed of the split")
    dataset: str | None = setting(None, "dataset name (default: the root folder's name)")
    no_durations: bool = _switch("do not read durations from file headers")


@dataclass
class VocabFlags:
    manifest: Path | None = setting(None, "the manifest (.parquet)", positional=True)
    top: int = setting(50, "tags in the vocabulary")
    write: bool = _switch("store it in the manifest metadata")


@dataclass
class InfoFlags:
    manifest: Path | None = setting(None, "the manifest (.parquet)", positional=True)
    audio_root: Path | None = setting(None, "count missing audio files under this folder")
    top: int = setting(50, "tags to list (0: all)")
