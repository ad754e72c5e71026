"""MTG-Jamendo: the four tag subsets (split 0 of the official splits), with artist,
album and duration per track."""

from __future__ import annotations

from manifests.builders.registry import BenchmarkRows, BuildOptions, register_builder, track_row
from manifests.tables import LABELLED_SPLITS, read_split_table, read_tag_list, split_tags

JAMENDO_SUBSETS = {
    "jamendo-top50": "top50tags",
    "jamendo-genre": "genre",
    "jamendo-instrument": "instrument",
    "jamendo-moodtheme": "moodtheme",
}


def jamendo(options: BuildOptions) -> BenchmarkRows:
    name = options.dataset
    folder = f"mtg-jamendo/{JAMENDO_SUBSETS[name]}"
    rows = [
        track_row(
            "jamendo",
            name,
            split,
            rec["id"],
            rec["path"],
            split_tags(rec["tags"]),
            artist_id=rec["artist_id"] or None,
            album_id=rec["album_id"] or None,
            duration=float(rec["duration"]) if rec["duration"] else None,
        )
        for split in LABELLED_SPLITS
        for rec in read_split_table(f"{folder}/{split}.tsv")
    ]
    return BenchmarkRows(rows, read_tag_list(f"{folder}/tags.txt"), folder)


for _name, _subset in JAMENDO_SUBSETS.items():
    register_builder(_name, help=f"MTG-Jamendo, the {_subset} subset")(jamendo)
