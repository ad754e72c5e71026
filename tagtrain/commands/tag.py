"""`python -m tagtrain tag FILE_OR_DIR... --run RUN` (or `--pretrained NAME`): tag audio
files (at least one model window long) with a trained run or a published model.

The options are `tagtrain.pretrained.cli.TagFlags` (`--run`'s from
tagtrain.inference.tagging, `--pretrained`'s from tagtrain.pretrained.cli); the work is
`tagtrain.pretrained.cli.tag`: windows of each decoded file through the one predictor
(tagtrain.inference.predict.WindowPredictor), their probabilities averaged, and one output
for both models (tagtrain.inference.tagging.write_tagged).
"""

from __future__ import annotations

import argparse

from pipelines.core.flags import add_flags, from_args
from tagtrain.pretrained.cli import TagFlags, tag

COMMAND = "tag"
HELP = "tag audio files with a trained run or a published model (--pretrained)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_flags(parser, TagFlags, with_defaults=True)


def run(args: argparse.Namespace) -> int:
    return tag(from_args(args, TagFlags))
