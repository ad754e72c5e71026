"""`python -m tagtrain reproduce PAPER --data D --out DIR`: run one paper's recipes in
sequence (each a normal, resumable run of train, student or train-patchout), evaluate each
on the test split with its recipe's protocol, and write DIR/ledger.csv, ledger.md and
ledger.html: the paper's figures beside ours (tagtrain.recipes.reproduce)."""

from __future__ import annotations

import argparse
import importlib
from dataclasses import dataclass

from pipelines.core.errors import OneLineParser, UserError
from pipelines.core.flags import add_flags, from_args, setting

COMMAND = "reproduce"
HELP = "run a paper's recipes, evaluate each on the test split, and write the ledger"
# The commands a recipe's step runs, by their name: the very functions the user would call.
_STEP_COMMANDS = {
    "train": "tagtrain.commands.train",
    "student": "tagtrain.commands.student",
    "train-patchout": "tagtrain.commands.train_patchout",
}


@dataclass(frozen=True)
class ReproduceFlags:
    paper: str = setting(
        "", "the paper: won2020, won2019, pons2018, won2021 or maest", positional=True
    )
    data: str = setting("", "prepared dataset the recipes train and test on", required=True)
    out: str = setting("", "folder of the runs (one per recipe) and the ledger", required=True)
    only: list[str] = setting(
        [], "run only these recipes of the paper (repeat the flag)", repeat=True
    )
    max_minutes: float = setting(0.0, "time budget of each recipe's run (0: none)")
    config: str = setting("", "YAML/JSON settings applied to every run (flags of train)")
    init: str = setting("", "weights file for recipes that require one (MAEST: PaSST layout)")
    device: str = setting("", "device of the runs and the evaluations (empty: auto)")
    bootstrap: int = setting(1000, "resamples of the test tracks for the 95%% intervals")
    eval_workers: int = setting(2, "loader processes of the evaluations (0 = main process)")
    print_commands: bool = setting(
        False, "print the training commands (for a cluster scheduler) instead of running them",
        negatable=False,
    )  # fmt: skip


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_flags(parser, ReproduceFlags, with_defaults=True)


def run_step(argv: list[str]) -> None:
    """Run one training command as `python -m tagtrain ARGV` would (its own parser and
    run function); a failure is the user's one line."""
    module = importlib.import_module(_STEP_COMMANDS[argv[0]])
    parser = OneLineParser(prog=f"tagtrain {argv[0]}")
    module.add_arguments(parser)
    status = module.run(parser.parse_args(argv[1:]))
    if status:
        raise UserError(f"{' '.join(argv[:3])} exited with status {status}")


def run(args: argparse.Namespace) -> int:
    from tagtrain.recipes.reproduce import evaluate_step, ledger_rows, plan, write_ledger

    flags = from_args(args, ReproduceFlags)
    steps = plan(
        flags.paper, flags.data, flags.out, only=flags.only, max_minutes=flags.max_minutes,
        config=flags.config, init=flags.init, device=flags.device,
    )  # fmt: skip
    if flags.print_commands:
        for step in steps:
            print(step.command_line())
        return 0
    rows, paths = [], []
    for step in steps:
        print(f"reproduce {flags.paper}: {step.command_line()}", flush=True)
        run_step(step.argv)
        summary = evaluate_step(
            step, bootstrap=flags.bootstrap, device=flags.device or "auto",
            workers=flags.eval_workers,
        )  # fmt: skip
        rows += ledger_rows(step.recipe, summary)
        paths = write_ledger(rows, flags.out)  # after each recipe: a later failure keeps it
    for path in paths:
        print(f"wrote {path}")
    return 0
