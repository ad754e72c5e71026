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

from pipelines.core.flags import add_flags, from_args
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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_flags(parser, EvaluateFlags, with_defaults=True)


def run(args: argparse.Namespace) -> int:
    return evaluate(from_args(args, EvaluateFlags))
