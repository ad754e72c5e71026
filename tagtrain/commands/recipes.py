"""`python -m tagtrain recipes`: the paper recipes (tagtrain.recipes)."""

from __future__ import annotations

import argparse

from tagtrain.recipes import load_recipe, recipes_table

COMMAND = "recipes"
HELP = "list the paper recipes (or print one with --show NAME)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--show", metavar="NAME", help="print one recipe, resolved, as YAML")


def run(args: argparse.Namespace) -> int:
    import yaml

    if args.show:
        print(yaml.safe_dump(load_recipe(args.show), sort_keys=False, allow_unicode=True))
    else:
        print(recipes_table())
    return 0
