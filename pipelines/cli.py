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
`python -m manifests`) keep working unchanged.
"""

from __future__ import annotations

import importlib
import os
import sys

from pipelines.core.errors import USAGE_ERROR, run_cli, suggest

PROG = "tagkit"
BEAM_JOBS = {
    "prepare": "decode, validate and featurise a manifest's audio into WebDataset shards",
    "perturb": "MUDA-deform a prepared split (pitch, stretch, DRC, noise)",
}
MANIFEST_COMMANDS = ("manifest", "manifests")
MANIFEST_HELP = "make and inspect manifests (build, folder, vocab, info)"


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
    rows.extend(tagtrain_commands().items())
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
        return run_cli(f"{PROG} {command}", lambda: _entry("beam_runner")(argv))
    if command in MANIFEST_COMMANDS:
        return run_cli(f"{PROG} manifest", lambda: _entry("manifests.__main__")(rest))
    known = tagtrain_commands()
    if command not in known:
        names = [*BEAM_JOBS, "manifest", *known]
        print(
            f"{PROG}: error: unknown command {command!r}{suggest(command, names)} "
            f"(commands: {', '.join(names)})",
            file=sys.stderr,
        )
        return USAGE_ERROR
    return run_cli(f"{PROG} {command}", lambda: _entry("tagtrain.__main__")(argv))


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
