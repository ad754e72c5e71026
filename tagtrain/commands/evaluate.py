"""`python -m tagtrain evaluate`: the registered metrics (macro ROC-AUC and PR-AUC) with
bootstrap 95% intervals, and a per-tag table, for a run (`--run`) or a published model on a
prepared dataset (`--pretrained NAME --data D`).

The options are `tagtrain.pretrained.cli.EvaluateFlags`; the work is
tagtrain.inference.evaluation (see its docs: chunk-averaged predictions, the metrics, the
files written in the run directory). The names `robustness` uses from here stay
importable.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass

from pipelines.core.flags import add_flags, from_args, given, setting
from tagtrain.inference.evaluation import (  # noqa: F401  (used by robustness and tests)
    Bootstrap,
    evaluate_set,
    fmt,
    warn_if_changed_since_training,
    write_predictions,
)
from tagtrain.pretrained.cli import EvaluateFlags, add_pretrained_arguments, evaluate  # noqa: F401

COMMAND = "evaluate"
HELP = "macro ROC-AUC / PR-AUC and per-tag scores of a trained run on a split"


def add_bootstrap_argument(parser: argparse.ArgumentParser) -> None:
    add_flags(parser, Bootstrap, with_defaults=True)


@dataclass
class EvaluateCommandFlags(EvaluateFlags):
    recipe: str = setting(
        "", "a paper recipe (a name or a YAML path): its evaluate section sets the flags not given"
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_flags(parser, EvaluateCommandFlags)


def run(args: argparse.Namespace) -> int:
    flags = from_args(args, EvaluateCommandFlags)
    if flags.recipe:
        from tagtrain.recipes import load_recipe

        chosen = given(args, EvaluateCommandFlags)
        section = load_recipe(flags.recipe).evaluate
        flags = dataclasses.replace(flags, **{k: v for k, v in section.items() if k not in chosen})
    return evaluate(flags)
