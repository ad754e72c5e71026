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


def recipe_defaults(args, sub) -> bool:
    """`prepare --recipe NAME`: the recipe's features (what its model eats: the stored
    members and FeatureConfig fields, checked by tagtrain/recipes/) become the defaults of
    prepare's flags, so a flag given on the line wins. True when the arguments must be
    parsed again."""
    if args.job != "prepare" or getattr(args, "recipe", None) is None:
        return False
    # This module is the one entry above both layers: it may read the trainer's recipes.
    from tagtrain.recipes import load_recipe

    settings = load_recipe(args.recipe)["prepare"]
    print(f"recipe {args.recipe}: " + " ".join(f"{k}={v}" for k, v in settings.items()))
    sub.choices["prepare"].set_defaults(**settings)
    return True


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
    from pipelines.core.errors import OneLineParser, UserError, first_line, prog_name

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = OneLineParser(prog=prog_name("beam_runner.py"), description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="job", required=True, parser_class=OneLineParser)
    for module in job_modules(argv):
        module.add_parser(sub)
    args, rest = parser.parse_known_args(argv)
    if recipe_defaults(args, sub):
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
    from pipelines.core.errors import prog_name, run_cli

    _export_project_path()
    return run_cli(prog_name("beam_runner.py"), lambda: _run(argv))


if __name__ == "__main__":
    code = main()
    # Leave without running library destructors: arrow's and grpc's thread pools can race
    # at interpreter exit and abort a process that has already finished its work.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
