"""`python -m tagtrain report`: report.html for a run (tagtrain.reporting.page).

Every flag comes from `ReportOptions`'s fields (`--help` shows the defaults); `--compare`
may be given more than once.
"""

from __future__ import annotations

import argparse

from pipelines.core.flags import add_flags, from_args
from tagtrain.reporting.page import ReportOptions, write_report

COMMAND = "report"
HELP = "write report.html for a run: dataset, training curves, evaluation, robustness"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_flags(parser, ReportOptions, with_defaults=True)


def run(args: argparse.Namespace) -> int:
    out = write_report(from_args(args, ReportOptions))
    print(f"report: {out.resolve()}")
    return 0
