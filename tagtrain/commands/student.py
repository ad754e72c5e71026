"""`python -m tagtrain student`: noisy-student training (tagtrain.training.student)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from pipelines.core.flags import add_flags, from_args, setting
from tagtrain.commands.train import TrainFlags, add_training_flags, run_settings, weights_init
from tagtrain.training.student import StudentConfig, train_students

COMMAND = "student"
HELP = "noisy-student training: a teacher run labels the unlabelled split for a student"


@dataclass(frozen=True)
class StudentFlags(TrainFlags):
    resume: bool = setting(
        False, "continue the run in --out (the same command again)", negatable=False
    )
    student_model: str = setting(
        "",
        "registered model of the student (as large as the teacher: knowledge expansion; "
        "smaller, e.g. music_tagging_transformer_small: distillation; unset: the recipe's)",
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_flags(parser, StudentConfig, title="noisy student")
    add_training_flags(parser, StudentFlags, exclude=("model",))


def run(args: argparse.Namespace) -> int:
    flags = from_args(args, StudentFlags)
    cfg, student = run_settings(COMMAND, args, flags, StudentConfig, flags.student_model)
    train_students(cfg, student.validate(), resume=flags.resume, init_weights=weights_init(cfg))
    return 0
