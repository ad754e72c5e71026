"""One-line errors for every command line: the `UserError` base, the argparse parser that
reports a bad flag in one line, and the one wrapper that turns errors into exit codes.

All three CLIs (`beam_runner.py`, `python -m tagtrain`, `python -m manifests`) end in
`run_cli`, so a user error is always one line on stderr and exit status 2. Their usage
lines and errors name the program the user typed: their own name, or `tagkit` when the
console script runs them (`invoked_as`, `prog_name`).
"""

from __future__ import annotations

import argparse
import difflib
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

USAGE_ERROR = 2


class UserError(Exception):
    """A problem the user can fix (bad flag, missing file, unusable dataset): one line,
    exit 2. Every project error that a command reports derives from it."""


def first_line(exc: BaseException, limit: int | None = None) -> str:
    """The first line of an exception's message (its type's name when it has none),
    cut to `limit` characters when given."""
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    return line[:limit] if limit else line


def suggest(word: str, choices) -> str:
    """' (did you mean --x?)' when `word` is close to one of `choices`, else ''."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


class OneLineParser(argparse.ArgumentParser):
    """A bad flag is one line on stderr and exit 2, not a usage dump; an unknown flag
    gets a suggestion when one of the parser's flags is close, a value that is not one
    of an argument's choices when one of them is."""

    def _check_value(self, action, value):
        try:
            super()._check_value(action, value)
        except argparse.ArgumentError as exc:
            hint = suggest(str(value), [str(c) for c in action.choices or ()])
            if not hint:
                raise
            raise argparse.ArgumentError(action, exc.message + hint) from None

    def parse_command_args(self, argv: list[str] | None) -> argparse.Namespace:
        """The arguments of a parser of commands (subparsers with `dest="command"`, their
        parsers in `self.commands`): a flag the command does not take is reported by the
        command's own parser, which knows the flags to suggest."""
        args, unknown = self.parse_known_args(argv)
        if unknown:
            self.commands[args.command].error(f"unrecognized arguments: {' '.join(unknown)}")
        return args

    def error(self, message: str):
        if message.startswith("unrecognized arguments:"):
            flags = [s for a in self._actions for s in a.option_strings]
            unknown = message.split(":", 1)[1].split()
            if unknown:
                message += suggest(unknown[0].split("=")[0], flags)
        raise SystemExit(f"{self.prog}: error: {message} (see --help)")


def run_cli(prog: str, main: Callable[[], int]) -> int:
    """Run a command's `main`, mapping errors to one line and an exit status:
    UserError and OS errors 2, Ctrl-C 130, anything else 1 with its type named
    (TAGKIT_DEBUG=1 re-raises to show the traceback). An empty `prog` prints the
    message without a program name ("error: ...")."""
    try:
        return main()
    except SystemExit as exc:  # argparse errors and --help
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
            return USAGE_ERROR
        return exc.code or 0
    except KeyboardInterrupt:
        print(f"{_prefix(prog)}interrupted", file=sys.stderr)
        return 130
    except (UserError, OSError) as exc:
        if os.environ.get("TAGKIT_DEBUG"):
            raise
        print(f"{_prefix(prog)}error: {_one_line(exc)}", file=sys.stderr)
        return USAGE_ERROR
    except Exception as exc:
        if os.environ.get("TAGKIT_DEBUG"):
            raise
        print(
            f"{_prefix(prog)}error: unexpected {type(exc).__name__}: {_one_line(exc)} "
            "(TAGKIT_DEBUG=1 shows a traceback)",
            file=sys.stderr,
        )
        return 1


def _prefix(prog: str) -> str:
    return f"{prog}: " if prog else ""


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        where = f": {exc.filename}" if exc.filename else ""
        return f"{exc.strerror}{where}"
    return " ".join(str(exc).split()) or type(exc).__name__


# The program the user typed, when it is not the entry's own name: `tagkit` (pipelines/cli.py)
# runs the entries of `python -m tagtrain`, `python -m manifests` and `beam_runner.py`.
_INVOKED_AS: ContextVar[str | None] = ContextVar("invoked_as", default=None)


@contextmanager
def invoked_as(prog: str) -> Iterator[None]:
    """Within the block, entries name `prog` (e.g. "tagkit") in usage lines and errors."""
    token = _INVOKED_AS.set(prog)
    try:
        yield
    finally:
        _INVOKED_AS.reset(token)


def prog_name(own: str, command: str = "") -> str:
    """An entry's program name: `own` ("python -m tagtrain", "beam_runner.py") when it runs
    by itself, the wrapper's name (`invoked_as`) followed by `command` (the wrapper's
    name of this entry, e.g. "manifest") when the wrapper runs it."""
    wrapper = _INVOKED_AS.get()
    if wrapper is None:
        return own
    return f"{wrapper} {command}" if command else wrapper
