"""`python -m tagtrain COMMAND ...`.

Each command lives in its own module, which defines `COMMAND` (its name), `HELP`,
`add_arguments(parser)` and `run(args) -> int` (the exit status). Adding a command is
adding its module to `COMMAND_MODULES`.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMAND_MODULES = (
    "tagtrain.train",
    "tagtrain.evaluate",
    "tagtrain.robustness",
    "tagtrain.tag",
    "tagtrain.student",
    "tagtrain.embed",
    "tagtrain.patchout_training",
    "tagtrain.probe",
    "tagtrain.report",
    "tagtrain.recipes",
    "tagtrain.explain",
    "tagtrain.export",
    "tagtrain.__main__",
)

COMMAND = "models"
HELP = "list the registered models, their inputs and sizes"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--n-classes", type=int, default=50, help="tags for the size column")


def run(args: argparse.Namespace) -> int:
    from tagtrain.models import models_table

    if args.n_classes < 1:
        print("error: --n-classes must be at least 1", file=sys.stderr)
        return 2
    print(models_table(args.n_classes))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tagtrain", description="Music auto-tagging: train and use taggers."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        module = (
            sys.modules[__name__] if name == "tagtrain.__main__" else importlib.import_module(name)
        )
        sub = commands.add_parser(module.COMMAND, help=module.HELP, description=module.HELP)
        module.add_arguments(sub)
        sub.set_defaults(handler=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
