"""MagnaTagATune: the top-50-tag split of the tagging papers (`clean`: clips without a
top-50 tag removed, as Won et al. 2020) or the full split musicnn and MAEST use."""

from __future__ import annotations

from manifests.builders.registry import BenchmarkRows, BuildOptions, register_builder, track_row
from manifests.schema import ManifestError
from manifests.tables import LABELLED_SPLITS, read_split_table, read_tag_list, split_tags

MTAT_VARIANTS = {"clean": "mtat", "full": "mtat/full_split"}


@register_builder(
    "mtat",
    help="MagnaTagATune, top-50 tags (--split-variant clean|full)",
    options=("split_variant",),
)
def mtat(options: BuildOptions) -> BenchmarkRows:
    variant = options.split_variant
    if variant not in MTAT_VARIANTS:
        raise ManifestError(f"unknown split variant {variant!r} (clean or full)")
    folder = MTAT_VARIANTS[variant]
    rows = [
        track_row("mtat", "mtat", split, rec["id"], rec["path"], split_tags(rec["tags"]))
        for split in LABELLED_SPLITS
        for rec in read_split_table(f"{folder}/{split}.tsv")
    ]
    notes = []
    if variant == "full":
        untagged = sum(1 for row in rows if not row["tags"])
        notes.append(
            f"the full MTAT split keeps {untagged:,} clips with no top-50 tag (empty tags), "
            "as musicnn and MAEST do"
        )
    vocabulary = read_tag_list("mtat/tags.txt")
    return BenchmarkRows(rows, vocabulary, folder, notes, {"split_variant": variant})
