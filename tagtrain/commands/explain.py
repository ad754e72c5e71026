"""`python -m tagtrain explain --run R FILE --tag T [--tag T2 ...] [--out heat.png]`: which
moments of a track drive a tag's prediction, for the attention models (CNNSA, the Music
Tagging Transformers, Won et al. 2019's models).

The options are `ExplainOptions`; the attention and contribution curves, over the windows
`tag` uses, are computed by tagtrain.inference.contributions (see its docs).
"""

from __future__ import annotations

import argparse

from pipelines.core.flags import add_flags, from_args
from tagtrain.inference.contributions import ExplainOptions, explain

COMMAND = "explain"
HELP = "attention heat map: which moments of a track drive each tag (attention models)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_flags(parser, ExplainOptions, with_defaults=True)


def run(args: argparse.Namespace) -> int:
    return explain(from_args(args, ExplainOptions))
