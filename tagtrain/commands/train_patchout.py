"""`python -m tagtrain train-patchout`: the PaSST/MAEST objective (tagtrain.training.patchout).
Its fixed run settings (schedule, patience, epochs to the end of the ramp-down) are
`PatchoutOptions.fixed_settings`; everything else is built as for `train`."""

from __future__ import annotations

import argparse

from pipelines.core.flags import add_flags, from_args
from tagtrain.commands.train import TrainFlags, add_training_flags, run_settings, weights_init
from tagtrain.training.patchout import PatchoutOptions, PatchoutTrainer

COMMAND = "train-patchout"
HELP = (
    "train a patchout transformer with the PaSST/MAEST objective (patchout, AdamW, warm-up "
    "and ramp-down, SWA, mixup, masking, tag balancing)"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_training_flags(parser)
    add_flags(parser, PatchoutOptions, title="patchout objective")


def run(args: argparse.Namespace) -> int:
    flags = from_args(args, TrainFlags)
    cfg, options = run_settings(COMMAND, args, flags, PatchoutOptions)
    PatchoutTrainer(cfg, options, resume=flags.resume, init_weights=weights_init(cfg)).fit()
    return 0
