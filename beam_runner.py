#!/usr/bin/env python
"""The one command-line entry to every Beam job.

    python beam_runner.py prepare --manifest M.parquet --out OUT [--audio-root ROOT] [...]
    python beam_runner.py perturb --data OUT --split test [...]

Our flags are parsed here; Beam's own registered options (--runner, --direct_num_workers,
--dask_client_address, --s3_endpoint_url, --project, --region, --flink_master, ...) pass
to Beam unchanged. Any other flag is a one-line error (Beam itself would only warn and run
with defaults).
"""

from __future__ import annotations

import logging
import os
import sys

PROJECT_ROOT = os.path.dirname(os.path.abspath(__file__))


def _export_project_path() -> None:
    # Local runners start worker processes that must import our packages from any cwd.
    paths = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    if PROJECT_ROOT not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([PROJECT_ROOT, *filter(None, paths)])
    if PROJECT_ROOT not in sys.path:
        sys.path.insert(0, PROJECT_ROOT)


def with_recipe_flags(argv: list[str]) -> list[str]:
    """`prepare --recipe NAME`: the recipe's prepare flags (the features its model eats,
    tagtrain/recipes/) placed before the user's, so a flag given on the line wins."""
    if len(argv) < 1 or argv[0] != "prepare":
        return argv
    rest, recipe = list(argv[1:]), None
    for i, arg in enumerate(rest):
        if arg == "--recipe" and i + 1 < len(rest):
            recipe = rest[i + 1]
            del rest[i : i + 2]
            break
        if arg.startswith("--recipe="):
            recipe = arg.split("=", 1)[1]
            del rest[i]
            break
    if recipe is None:
        return argv
    # This module is the one entry above both layers: it may read the trainer's recipes.
    from tagtrain.recipes import load_recipe

    flags = []
    for name, value in load_recipe(recipe)["prepare"].items():
        flags += [f"--{name.replace('_', '-')}", str(value)]
    print(f"recipe {recipe}: prepare {' '.join(flags)}")
    return ["prepare", *flags, *rest]


JOBS = {"prepare": "pipelines.beam.prepare_cli", "perturb": "pipelines.beam.perturb_cli"}


def job_modules(argv: list[str]) -> list:
    """The CLI modules to load: only the named job's (perturb's imports MUDA, JAMS and
    librosa, about 1 CPU-s that every prepare paid at start-up), all for help or a typo."""
    import importlib

    names = [argv[0]] if argv and argv[0] in JOBS else list(JOBS)
    return [importlib.import_module(JOBS[name]) for name in names]


def _run(argv: list[str] | None) -> int:
    # Before Beam is imported: it warns at import that the optional GCP client is absent.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger().addFilter(lambda r: "apitools not found" not in r.getMessage())
    from pipelines.beam.runner_options import QuietOutput, checked_beam_args
    from pipelines.core.errors import OneLineParser, UserError, first_line

    argv = with_recipe_flags(list(sys.argv[1:] if argv is None else argv))
    parser = OneLineParser(prog="beam_runner.py", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="job", required=True, parser_class=OneLineParser)
    for module in job_modules(argv):
        module.add_parser(sub)
    args, rest = parser.parse_known_args(argv)
    beam_args = checked_beam_args(rest, sub.choices[args.job])
    if args.verbose:
        logging.getLogger().setLevel(logging.INFO)
    else:
        logging.getLogger("apache_beam").setLevel(logging.ERROR)
    try:
        with QuietOutput(enabled=not args.verbose) as quiet:
            args.quiet = quiet
            return args.run(args, beam_args)
    except ValueError as exc:
        # The manifest, deformation and card checks raise ValueError subclasses with
        # one-line messages: they are user errors.
        raise UserError(first_line(exc)) from None


def main(argv: list[str] | None = None) -> int:
    from pipelines.core.errors import run_cli

    _export_project_path()
    return run_cli("beam_runner.py", lambda: _run(argv))


if __name__ == "__main__":
    code = main()
    # Leave without running library destructors: arrow's and grpc's thread pools can race
    # at interpreter exit and abort a process that has already finished its work.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
