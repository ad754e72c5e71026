"""`python -m tagtrain embed`: per-track embeddings of a dataset for downstream use
(`--run`: tagtrain.inference.embeddings, the penultimate representation, a named layer or a
block, averaged over evenly spaced chunks), or with `--pretrained NAME` a published model's
named layer per audio file (tagtrain.pretrained.cli). Writes Parquet.
"""

from __future__ import annotations

import argparse

from pipelines.core.flags import add_flags, from_args
from tagtrain.pretrained.cli import EmbedFlags, embed

COMMAND = "embed"
HELP = "per-track embeddings (penultimate layer, a named layer or a block) to Parquet"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_flags(parser, EmbedFlags, with_defaults=True)


def run(args: argparse.Namespace) -> int:
    return embed(from_args(args, EmbedFlags))
