"""`python -m tagtrain export --run RUN --out OUT.onnx`: a run as one ONNX graph for serving
(waveform windows in, tag probabilities out: tagtrain.inference.onnx_export), or with
`--pretrained NAME` a published model's network (log-mel windows in:
tagtrain.pretrained.cli).
"""

from __future__ import annotations

import argparse

from pipelines.core.flags import add_flags, from_args
from tagtrain.pretrained.cli import ExportFlags, export

COMMAND = "export"
HELP = "export a run to ONNX: waveform windows in, tag probabilities out"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_flags(parser, ExportFlags, with_defaults=True)


def run(args: argparse.Namespace) -> int:
    return export(from_args(args, ExportFlags))
