#!/usr/bin/env python
"""The one command-line entry to every Beam job.

    python beam_runner.py prepare --manifest M.parquet --audio-root ROOT --output OUT [...]
    python beam_runner.py perturb --dataset OUT --split test [...]

Our flags are parsed here; every other flag (--runner, --direct_num_workers,
--dask_client_address, --s3_endpoint_url, --project, --region, --flink_master, ...)
passes to Beam unchanged.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

PROJECT_ROOT = os.path.dirname(os.path.abspath(__file__))


class OneLineParser(argparse.ArgumentParser):
    """Bad arguments get one line on stderr and exit 2, not a usage dump."""

    def error(self, message):
        sys.exit(f"{self.prog}: error: {message}")


def _export_project_path() -> None:
    # Local runners start worker processes that must import our packages from any cwd.
    paths = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    if PROJECT_ROOT not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([PROJECT_ROOT, *filter(None, paths)])
    if PROJECT_ROOT not in sys.path:
        sys.path.insert(0, PROJECT_ROOT)


def main(argv: list[str] | None = None) -> int:
    _export_project_path()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        # Beam warns at import that the optional GCP client is absent; it is not needed.
        handler.addFilter(lambda record: "apitools not found" not in record.getMessage())
    parser = OneLineParser(prog="beam_runner.py", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="job", required=True, parser_class=OneLineParser)
    from pipelines.beam import prepare_cli

    prepare_cli.add_parser(sub)
    try:
        from pipelines.beam import perturb_cli
    except ImportError:
        perturb_cli = None
    if perturb_cli is not None:
        perturb_cli.add_parser(sub)
    args, beam_args = parser.parse_known_args(argv)
    try:
        return args.run(args, beam_args)
    except (ValueError, FileNotFoundError, FileExistsError) as exc:
        print(f"beam_runner.py {args.job}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    try:
        code = main()
    except SystemExit as exc:  # argparse errors and --help
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
        code = exc.code if isinstance(exc.code, int) else 2
    # Leave without running library destructors: arrow's and grpc's thread pools can race
    # at interpreter exit and abort a process that has already finished its work.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
