"""`python -m tagtrain student`: noisy-student training (tagtrain.training.student)."""

from __future__ import annotations

import argparse
import dataclasses

from pipelines.core.flags import add_flags, given
from tagtrain.commands.train import (
    add_config_flags,
    checked_model,
    config_overrides,
    weights_init,
    with_recipe,
)
from tagtrain.run.config import ConfigError, RunConfig, build_config
from tagtrain.training.student import StudentConfig, train_students

COMMAND = "student"
HELP = "noisy-student training: a teacher run labels the unlabelled split for a student"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--student-model",
        default=None,
        help="registered model of the student (as large as the teacher: knowledge expansion; "
        "smaller, e.g. music_tagging_transformer_small: distillation)",
    )
    add_flags(parser, StudentConfig, title="noisy student")
    add_config_flags(parser, exclude=("model",))
    parser.add_argument(
        "--resume", action="store_true", help="continue the run in --out (the same command again)"
    )


def configs_from_args(args: argparse.Namespace) -> tuple[RunConfig, StudentConfig]:
    overrides = config_overrides(args)
    recipe, student_options = with_recipe(overrides, COMMAND)
    overrides["model"] = args.student_model or recipe.get("model", "")
    if not overrides["model"]:
        raise ConfigError("give --student-model NAME (or a student --recipe)")
    # Noise is what makes the student noisy: the recipe unless the config or a flag says.
    cfg = build_config(args.config, overrides, base={"augment": "default", **recipe})
    if not cfg.out:
        cfg = dataclasses.replace(cfg, out=f"runs/{cfg.model}-student")
    return checked_model(cfg), StudentConfig(
        **{**student_options, **given(args, StudentConfig)}
    ).validate()


def run(args: argparse.Namespace) -> int:
    cfg, student = configs_from_args(args)
    train_students(cfg, student, resume=args.resume, init_weights=weights_init(cfg))
    return 0
