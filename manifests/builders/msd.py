"""The Million Song Dataset: the conventional split of the tagging papers (Choi's 50
Last.fm tags; the train list shipped is the 201,683-id approximation) and the CALS split
(Won et al.; its tags and train ids are not shipped: `--train-labels`, `--train-ids`).
Audio is found by 7digital preview-clip id or by the MSD's own track-id layout."""

from __future__ import annotations

from collections.abc import Mapping

from manifests.builders.registry import BenchmarkRows, BuildOptions, register_builder, track_row
from manifests.labels import Labels, load_id_list, load_labels
from manifests.schema import ManifestError
from manifests.tables import read_split_table, read_tag_list, split_tags

MSD_LAYOUTS = ("7digital", "trackid")
MSD_TRAIN_APPROX_NOTE = (
    "the conventional MSD train list shipped here has 201,683 ids, 3 more than the published "
    "201,680 (the exact list is not public; see manifests/README.md)"
)
_OPTIONS = ("train_labels", "min_tag_value", "unlabeled_train", "msd_layout")


@register_builder(
    "msd", help="Million Song Dataset, conventional split, Choi's 50 tags", options=_OPTIONS
)
def msd(options: BuildOptions) -> BenchmarkRows:
    return _msd(options, cals=False)


@register_builder(
    "msd-cals",
    help="Million Song Dataset, the CALS split (tags and train ids not shipped)",
    options=(*_OPTIONS, "train_ids"),
)
def msd_cals(options: BuildOptions) -> BenchmarkRows:
    return _msd(options, cals=True)


def _unplaced(options: BuildOptions) -> str:
    return (
        f"{{count:,}} tracks have no known audio path under --msd-layout {options.msd_layout} "
        "(no 7digital id is public for them); they are left out and listed in the "
        "missing-audio report. Use --msd-layout trackid or --path-map."
    )


def msd_audio_path(track_id: str, seven_digital_id: str, layout: str) -> str:
    """Where an MSD track's audio lives under the root; '' when unknown.

    7digital: the preview-clip layout `d/d/ddddddd.clip.mp3` of the tagging papers.
    trackid: the MSD's own layout, `A/B/C/TRABC....mp3` (3rd-5th letters of the id).
    """
    if layout == "trackid":
        return f"{track_id[2]}/{track_id[3]}/{track_id[4]}/{track_id}.mp3"
    if not seven_digital_id:
        return ""
    return f"{seven_digital_id[0]}/{seven_digital_id[1]}/{seven_digital_id}.clip.mp3"


def _msd(options: BuildOptions, cals: bool) -> BenchmarkRows:
    if options.msd_layout not in MSD_LAYOUTS:
        raise ManifestError(f"unknown MSD layout {options.msd_layout!r} (7digital or trackid)")
    folder = "msd/cals" if cals else "msd/conventional"
    vocabulary = read_tag_list(f"{folder}/tags.txt" if cals else "msd/tags.txt")
    labels = None
    if options.train_labels is not None:
        labels = load_labels(options.train_labels, vocabulary, cals, options.min_tag_value)
    notes: list[str] = []

    def row(split: str, rec: Mapping[str, str], tags: list[str]) -> dict:
        seven = rec.get("seven_digital_id", "")
        return track_row(
            "msd",
            options.dataset,
            split,
            rec["id"],
            msd_audio_path(rec["id"], seven, options.msd_layout),
            tags,
            # the JSON that rows_to_table would write, without a json.dumps per row
            extra=f'{{"seven_digital_id": "{seven}"}}' if seven.isdigit() else None,
        )

    rows = []
    for split in ("valid", "test"):
        for rec in read_split_table(f"{folder}/{split}.tsv"):
            if cals:
                tags = labels.by_id.get(rec["id"], []) if labels else []
            else:
                tags = split_tags(rec["tags"])
            rows.append(row(split, rec, tags))
    if cals:
        if labels is None:
            notes.append(
                "CALS tags are not shipped (the CALS label matrices are not public here): "
                "valid/test rows have empty tags; supply them with --train-labels/--labels "
                "(TSV id<TAB>tags, or lastfm_tags.db)"
            )
        else:
            untagged = sum(1 for r in rows if not r["tags"])
            if untagged:
                notes.append(f"{untagged:,} CALS valid/test tracks got no tag from {labels.source}")
        if options.train_ids is None:
            notes.append(
                "CALS train ids (163,504) are not shipped; pass --train-ids FILE "
                "(one id per line, or CALS train_ids.npy) to include them"
            )
            train_records = []
        else:
            train_records = [{"id": i} for i in load_id_list(options.train_ids)]
    else:
        train_records = read_split_table(f"{folder}/train_ids_approx.tsv")
    train_rows = _msd_train_rows(train_records, labels, options, row, notes)
    if train_rows and not cals:
        notes.append(MSD_TRAIN_APPROX_NOTE)
    rows.extend(train_rows)
    if labels is not None and labels.outside_vocabulary:
        notes.append(
            f"{labels.outside_vocabulary:,} tag mentions in {labels.source} are not in the "
            f"{len(vocabulary)}-tag vocabulary and were ignored"
        )
    return BenchmarkRows(rows, vocabulary, folder, notes, unplaced_note=_unplaced(options))


def _msd_train_rows(records, labels: Labels | None, options: BuildOptions, row, notes) -> list:
    if not records:
        return []
    if labels is None and not options.unlabeled_train:
        notes.append(
            f"MSD train labels are not shipped: the {len(records):,} train tracks were left "
            "out. Supply --train-labels (TSV id<TAB>tag|tag, or the Last.fm lastfm_tags.db), "
            "or --unlabeled-train to put them in the unlabeled split"
        )
        return []
    out, untagged = [], 0
    for rec in records:
        tags = labels.by_id.get(rec["id"], []) if labels else []
        if tags:
            out.append(row("train", rec, tags))
        elif options.unlabeled_train:
            out.append(row("unlabeled", rec, []))
        else:
            untagged += 1
    if labels is None:
        notes.append(f"{len(out):,} MSD train tracks were put in the unlabeled split")
    elif untagged:
        notes.append(
            f"{untagged:,} train tracks got no vocabulary tag from {labels.source} and were "
            "left out (--unlabeled-train keeps them as unlabeled)"
        )
    return out
