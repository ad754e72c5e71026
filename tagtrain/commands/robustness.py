"""`python -m tagtrain robustness`: runs (and published models) evaluated on the clean test
split and on every deformed copy of it (tagtrain.inference.robustness: the tables, the
figure, per-tag drops). Every flag comes from `RobustnessFlags`'s fields (`--help` shows
the defaults); `--run` and `--pretrained` may be given more than once."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from pipelines.core.flags import add_flags, from_args, setting
from tagtrain.inference.robustness import RobustnessOptions, robustness
from tagtrain.pretrained.cli import ON_SHARDS

COMMAND = "robustness"
HELP = "evaluate runs on the clean test split and every perturbed copy of it"


@dataclass
class RobustnessFlags(RobustnessOptions):
    pretrained: list[str] = setting([], f"{ON_SHARDS}; repeatable", metavar="NAME", repeat=True)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_flags(parser, RobustnessFlags, with_defaults=True)


def run(args: argparse.Namespace) -> int:
    from tagtrain.pretrained.on_shards import pretrained_run

    return robustness(from_args(args, RobustnessFlags), published=pretrained_run)
