"""`python -m tagtrain COMMAND ...`.

Each command lives in its own module, which defines `COMMAND` (its name), `HELP`,
`add_arguments(parser)` and `run(args) -> int` (the exit status). Adding a command is
adding its module to `COMMAND_MODULES`. Every command ends in `pipelines.core.errors.
run_cli`: a user error (a bad flag included, with a suggestion) is one line, exit 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from pipelines.core.card import CardError
from pipelines.core.errors import OneLineParser, UserError, first_line, prog_name, run_cli

PROG = "python -m tagtrain"  # `tagkit` when the console script runs this (prog_name)
COMMAND_MODULES = (
    "tagtrain.commands.train",
    "tagtrain.commands.evaluate",
    "tagtrain.commands.robustness",
    "tagtrain.commands.tag",
    "tagtrain.commands.student",
    "tagtrain.commands.embed",
    "tagtrain.commands.train_patchout",
    "tagtrain.commands.probe",
    "tagtrain.commands.report",
    "tagtrain.commands.recipes",
    "tagtrain.commands.reproduce",
    "tagtrain.commands.explain",
    "tagtrain.commands.export",
    "tagtrain.commands.import_weights",
    "tagtrain.commands.models",
)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog=prog_name(PROG), description="Music auto-tagging: train and use taggers."
    )
    commands = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=OneLineParser
    )
    for name in COMMAND_MODULES:
        module = importlib.import_module(name)
        sub = commands.add_parser(module.COMMAND, help=module.HELP, description=module.HELP)
        module.add_arguments(sub)
        sub.set_defaults(handler=module.run)
    parser.commands = commands.choices  # name -> its parser, for one-line flag errors
    return parser


def _foreign_errors() -> tuple[type[BaseException], ...]:
    """Errors of modules this package does not own that are the user's to fix."""
    from tagtrain.loader import LoaderError
    from tagtrain.loader.openers import OpenerError

    return (CardError, LoaderError, OpenerError)


def _dispatch(argv: list[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_command_args(argv)
    try:
        return args.handler(args)
    except _foreign_errors() as exc:
        if isinstance(exc, UserError):
            raise
        raise UserError(first_line(exc)) from None


def main(argv: list[str] | None = None) -> int:
    return run_cli(prog_name(PROG), lambda: _dispatch(argv))


def exit_now(code: int) -> None:
    """Leave without library destructors: arrow's thread pools (index and card reads) can
    race at interpreter exit and abort ("terminate called ...") a command that has
    finished, turning its exit status into a signal. Every file is closed by then."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    exit_now(main())
