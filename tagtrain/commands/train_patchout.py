"""`python -m tagtrain train-patchout`: the PaSST/MAEST recipe (tagtrain.training.patchout)."""

from __future__ import annotations

import argparse
import json
import math

from pipelines.core.flags import add_flags, given
from tagtrain.commands.train import add_arguments as add_train_arguments
from tagtrain.commands.train import checked_model, config_overrides, weights_init, with_recipe
from tagtrain.commands.train import config_from_args as train_config_from_args
from tagtrain.run.config import RunConfig, apply
from tagtrain.run.directory import RunDir
from tagtrain.training.patchout import PatchoutOptions, PatchoutTrainer

COMMAND = "train-patchout"
HELP = (
    "train a patchout transformer with the PaSST/MAEST recipe (patchout, AdamW, warm-up "
    "and ramp-down, SWA, mixup, masking, tag balancing)"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_train_arguments(parser)
    add_flags(parser, PatchoutOptions, title="patchout recipe")


def config_from_args(args: argparse.Namespace) -> tuple[RunConfig, PatchoutOptions]:
    cfg = train_config_from_args(args, command=COMMAND)
    saved = with_recipe(config_overrides(args), COMMAND)[1]
    if args.resume:
        run_dir = RunDir(cfg.run_dir(), cfg.effective_storage_options())
        if run_dir.exists(RunDir.PATCHOUT):
            saved = {**saved, **json.loads(run_dir.read_text(RunDir.PATCHOUT))}
    options = PatchoutOptions.from_dict(
        {**saved, **given(args, PatchoutOptions)}, "patchout options"
    )
    if not args.resume:
        # Model selection by validation loss, never an early stop; the rate is the ramp's.
        fixed = {"schedule": "early_stop", "patience": 0}
        if not cfg.epochs:
            fixed["epochs"] = max(1, math.ceil(options.rampdown_start + options.rampdown_epochs))
        cfg = apply(cfg, fixed, COMMAND).validate()
    return checked_model(cfg), options.validate(cfg.model)


def run(args: argparse.Namespace) -> int:
    cfg, options = config_from_args(args)
    PatchoutTrainer(cfg, options, resume=args.resume, init_weights=weights_init(cfg)).fit()
    return 0
