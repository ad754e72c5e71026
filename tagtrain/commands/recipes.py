"""`python -m tagtrain recipes`: the paper recipes (tagtrain.recipes) with the figures each
paper reports; `--show NAME` prints one resolved, `--fidelity` regenerates docs/FIDELITY.md's
per-recipe tables from them."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from pipelines.core.flags import add_flags, from_args, setting

COMMAND = "recipes"
HELP = "list the paper recipes and their papers' figures (or print one with --show NAME)"


@dataclass(frozen=True)
class RecipesFlags:
    show: str = setting(
        "", "print one recipe (a name or a YAML path), resolved, as YAML", metavar="NAME"
    )
    fidelity: str = setting(
        "", "rewrite the generated recipe tables of this FIDELITY.md (docs/FIDELITY.md)",
        metavar="FILE",
    )  # fmt: skip


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_flags(parser, RecipesFlags, with_defaults=True)


def run(args: argparse.Namespace) -> int:
    import dataclasses

    import yaml

    from tagtrain.recipes import load_recipe, recipes_table

    flags = from_args(args, RecipesFlags)
    if flags.fidelity:
        from tagtrain.recipes.fidelity import write_fidelity

        changed = write_fidelity(flags.fidelity)
        print(f"{flags.fidelity}: {'rewritten' if changed else 'already up to date'}")
    elif flags.show:
        recipe = dataclasses.asdict(load_recipe(flags.show))
        recipe["differs"] = list(recipe["differs"])
        print(yaml.safe_dump(recipe, sort_keys=False, allow_unicode=True, width=100))
    else:
        print(recipes_table())
    return 0
