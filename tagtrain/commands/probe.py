"""`python -m tagtrain probe --embeddings EMB.parquet --data OUT`: train MAEST's MLP probe
on embeddings and report every registered metric on the test split
(tagtrain.inference.probe). Every flag comes from `ProbeOptions`'s fields (`--help` shows
the defaults)."""

from __future__ import annotations

import argparse

from pipelines.core.flags import add_flags, from_args
from tagtrain.inference.probe import ProbeOptions, run_probe

COMMAND = "probe"
HELP = "train an MLP probe on embeddings (embed's Parquet) and report test macro ROC/PR-AUC"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_flags(parser, ProbeOptions, with_defaults=True)


def run(args: argparse.Namespace) -> int:
    run_probe(from_args(args, ProbeOptions))
    return 0
