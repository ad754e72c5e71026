"""`beam_runner.py prepare`'s flags: one typed dataclass, turned into flags by
`pipelines.core.flags` (defaults and help from the fields, shown by --help).

The feature flags (--sample-rate, --n-mels, --mel-scale, ...) are not declared here: they
are FeatureConfig's fields (pipelines/core/features.py), default and help included, added
to the job's own flags, so a feature setting is declared once."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass

from pipelines.core.audio import DECODERS
from pipelines.core.features import FeatureConfig
from pipelines.core.flags import setting
from pipelines.core.source import DEFAULT_MAX_FILE_MB

# Public benchmarks lose far fewer tracks than this (MagnaTagATune: 3 unreadable files of
# 25,863; MTG-Jamendo and the MSD previews of a complete download: none), while a wrong
# --audio-root, an incomplete download or a broken decoder loses far more: 5% tells the
# two apart. A user who knowingly prepares a partial corpus raises it.
MAX_REJECT_FRACTION = 0.05


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text} must be a positive number")
    return value


def fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{text} must be within 0..1")
    return value


def out_setting(what: str):
    """--out, with --output kept as a hidden alias of earlier releases."""
    return setting(None, what, hidden_aliases=("--output",))


def verbose_setting():
    return setting(False, "show Beam's and the decoders' log lines", negatable=False)


def force_setting():
    return setting(False, "overwrite an output of another config", negatable=False)


@dataclass
class PrepareJobFlags:
    """The job's own flags; `PrepareFlags` adds the feature flags."""

    manifest: str = setting("", "manifest Parquet (local, gs://, s3://)", required=True)
    audio_root: str | None = setting(
        None, "root that relative audio paths are under (default: the manifest's audio_root)"
    )
    out: str | None = out_setting("output directory or bucket prefix (required)")
    verbose: bool = verbose_setting()
    features: str = setting("mel,pcm", "comma list of mel,harm,pcm")
    min_seconds: float = setting(1.0, "shorter tracks are rejected")
    max_seconds: float | None = setting(
        None, "longer tracks are cropped to their first MAX seconds (recorded as cropped)"
    )
    shard_size_mb: float = setting(256.0, "target shard size, MB", type=positive_float)
    decoder: str = setting("auto", "audio decoder", choices=DECODERS)
    max_reject_fraction: float = setting(
        MAX_REJECT_FRACTION,
        "fail the job (one line, exit 2, no dataset.json) when a larger fraction of "
        "the inputs is rejected; a job whose every input is rejected always fails",
        type=fraction,
    )
    update: bool = setting(
        False,
        "the manifest changed (tracks added, removed or edited): keep the dataset's "
        "shard layout and rebuild only the shards whose tracks changed, reusing every "
        "unchanged track's features",
        negatable=False,
    )
    max_file_mb: float = setting(
        DEFAULT_MAX_FILE_MB, "larger audio files are rejected as too_large", type=positive_float
    )
    follow_symlinks: bool = setting(
        False,
        "read symlinks inside --audio-root that lead out of it (default: such a track is "
        "rejected as outside_root)",
        negatable=False,
    )
    recipe: str | None = setting(
        None,
        "the features of a paper recipe (python -m tagtrain recipes); flags override",
        metavar="NAME",
    )
    force: bool = force_setting()


def _feature_fields() -> list[tuple[str, str, dataclasses.Field]]:
    """FeatureConfig's fields as new fields of the same name, type, default and help."""
    return [
        (f.name, f.type, dataclasses.field(default=f.default, metadata=f.metadata))
        for f in dataclasses.fields(FeatureConfig)
    ]


PrepareFlags = dataclasses.make_dataclass(
    "PrepareFlags",
    _feature_fields(),
    bases=(PrepareJobFlags,),
    namespace={
        "__module__": __name__,
        "__doc__": "Every flag of `beam_runner.py prepare`: the job's, then FeatureConfig's.",
    },
)


def feature_config(args: argparse.Namespace) -> FeatureConfig:
    """The features prepare's flags ask for (FeatureConfig checks them: ValueError)."""
    given = {name: getattr(args, name, None) for name in FeatureConfig.field_names()}
    return FeatureConfig(**{k: v for k, v in given.items() if v is not None})
