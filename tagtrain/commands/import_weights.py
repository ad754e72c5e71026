"""`python -m tagtrain import-weights --from SOURCE PATH --model NAME --vocabulary V --out RUN`:
turn a published checkpoint the user brings into a run directory of ours
(tagtrain.pretrained.imported_run: the loading, the source's importer, the run directory).
"""

from __future__ import annotations

import argparse

from pipelines.core.flags import add_flags, from_args
from tagtrain.pretrained.imported_run import ImportOptions, import_weights

COMMAND = "import-weights"
HELP = "turn a published checkpoint (sota, ssmtt, maest, passt) into a run directory"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_flags(parser, ImportOptions, with_defaults=True)


def run(args: argparse.Namespace) -> int:
    return import_weights(from_args(args, ImportOptions))
