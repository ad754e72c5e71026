"""`tagkit COMMAND ...`: the one console script of the installed package.

It only dispatches, and lazily: each command imports the entry it names and nothing else,
so `tagkit tag` (a `tagtrain` command) never imports Beam or Dask, and `tagkit prepare`
never imports torch.

    tagkit prepare|perturb ...      -> beam_runner.py (the Beam jobs)
    tagkit manifest build|folder|vocab|info ...   -> python -m manifests
    tagkit train|evaluate|robustness|tag|embed|report|export|models|... -> python -m tagtrain

Why here: the import-linter layers put `pipelines.beam` and `tagtrain` side by side, so
neither may import the other. This module sits in the `pipelines` package root, outside
both layers (and outside `pipelines.core`), and names its targets as strings, resolved
only when a command runs. The existing entries (`beam_runner.py`, `python -m tagtrain`,
`python -m manifests`) keep working unchanged; run from here, their usage lines and errors
name `tagkit` (`pipelines.core.errors.invoked_as`), the program the user typed.

A command whose extra is not installed (the Beam jobs without `[beam]`, the trainer's
commands without `[train]`) is one line naming the `pip install` that brings it.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys

from pipelines.core.errors import USAGE_ERROR, invoked_as, run_cli, suggest

PROG = "tagkit"
BEAM_JOBS = {
    "prepare": "decode, validate and featurise a manifest's audio into WebDataset shards",
    "perturb": "MUDA-deform a prepared split (pitch, stretch, DRC, noise)",
}
MANIFEST_COMMANDS = ("manifest", "manifests")
MANIFEST_HELP = "make and inspect manifests (build, folder, vocab, info)"
# What the Beam jobs import first: absent, `[beam]` is not installed.
BEAM_MODULE = "apache_beam"


def missing_extra(extra: str, what: str) -> str:
    return f'{what} needs the [{extra}] extra: pip install "music-tagkit[{extra}]"'


def tagtrain_commands() -> dict[str, str]:
    """Name -> help of every `python -m tagtrain` command (imports the trainer, not Beam)."""
    entry = importlib.import_module("tagtrain.__main__")
    commands = {}
    for name in entry.COMMAND_MODULES:
        module = entry if name == "tagtrain.__main__" else importlib.import_module(name)
        commands[module.COMMAND] = module.HELP
    return commands


def usage() -> str:
    rows = [(name, text) for name, text in BEAM_JOBS.items()]
    rows.append(("manifest", MANIFEST_HELP))
    try:
        rows.extend(tagtrain_commands().items())
    except ModuleNotFoundError:
        rows.append(("train ...", missing_extra("train", "training, evaluation and tagging")))
    width = max(len(name) for name, _ in rows)
    lines = [f"  {name:<{width}}  {text}" for name, text in rows]
    return "\n".join(
        [
            f"usage: {PROG} COMMAND [options]   ({PROG} COMMAND --help for a command's options)",
            "",
            "Music auto-tagging: prepare datasets with Beam, train, evaluate and use taggers.",
            "",
            "commands:",
            *lines,
        ]
    )


def _entry(module_name: str):
    return importlib.import_module(module_name).main


def dispatch(argv: list[str]) -> int:
    """Run one command in this process and return its exit status."""
    if not argv or argv[0] in ("-h", "--help"):
        print(usage(), file=sys.stdout if argv else sys.stderr)
        return 0 if argv else USAGE_ERROR
    command, rest = argv[0], argv[1:]
    if command in BEAM_JOBS:
        if importlib.util.find_spec(BEAM_MODULE) is None:
            return _error(missing_extra("beam", command))
        return _run_entry("beam_runner", argv)
    if command in MANIFEST_COMMANDS:
        return _run_entry("manifests.__main__", rest)
    try:
        known = tagtrain_commands()
    except ModuleNotFoundError as exc:
        return _error(f"{missing_extra('train', command)} ({exc.name} is missing)")
    if command not in known:
        names = [*BEAM_JOBS, "manifest", *known]
        return _error(
            f"unknown command {command!r}{suggest(command, names)} (commands: {', '.join(names)})"
        )
    return _run_entry("tagtrain.__main__", argv)


def _run_entry(module_name: str, argv: list[str]) -> int:
    """An entry's `main(argv)`, naming `tagkit` in its usage lines and errors."""
    with invoked_as(PROG):
        return run_cli(PROG, lambda: _entry(module_name)(argv))


def _error(message: str) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return USAGE_ERROR


def main() -> None:
    """The console script."""
    argv = sys.argv[1:]
    code = dispatch(argv)
    sys.stdout.flush()
    sys.stderr.flush()
    # As beam_runner.py and python -m tagtrain do: leave without library destructors, whose
    # thread pools (arrow, grpc) can race at exit and abort a command that has finished.
    os._exit(code)


if __name__ == "__main__":
    main()
