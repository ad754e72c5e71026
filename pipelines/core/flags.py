"""Command-line flags generated from typed dataclasses, for every command line
(`beam_runner.py`, `python -m tagtrain`, `python -m manifests`).

A field declared with `setting(default, "help")` becomes `--field-name`; its type comes from
the annotation (or `type=`, an argparse converter that checks the value), its help text from
the metadata and its default from the field itself, so `--help` prints every default and no
default is typed twice. By default flags default to None, so the values a user gave are
exactly the non-None ones (`given`), which then override a config file or a saved run in
the dataclass's own `apply`; `with_defaults=True` gives the fields' defaults instead (for
commands without a config file).

The parser is the caller's: with `pipelines.core.errors.OneLineParser` a bad flag is one
line with a suggestion, exit 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from dataclasses import MISSING, field

_NO_FLAG = "no_flag"


def setting(
    default,
    help: str,
    *,
    choices=None,
    flag: bool = True,
    metavar=None,
    type=None,
    aliases: tuple[str, ...] = (),
    hidden_aliases: tuple[str, ...] = (),
    positional: bool = False,
    required: bool = False,
    negatable: bool = True,
    nargs=None,
    repeat: bool = False,
    option: str | None = None,
):
    """A dataclass field with its command-line flag.

    `flag=False`: config file only. `type`: the converter argparse applies (default: the
    annotation). `aliases`: more spellings shown in --help; `hidden_aliases`: spellings of
    earlier releases still accepted but not shown. `positional`: an argument, not a flag.
    `negatable=False`: a boolean is a plain switch (`--force`), not `--x/--no-x`.
    `nargs`: argparse's ("+", "*", "?"; a `list[T]` field takes "+" values of type T unless
    told). `repeat`: the flag may be given again, each value appended (`--tag a --tag b`;
    a `list[T]` field). `option`: the flag's spelling when it is not `--field-name` (a
    field cannot be named `from`)."""
    metadata = {
        "help": help,
        "choices": choices,
        _NO_FLAG: not flag,
        "metavar": metavar,
        "type": type,
        "aliases": tuple(aliases),
        "hidden_aliases": tuple(hidden_aliases),
        "positional": positional,
        "required": required,
        "negatable": negatable,
        "nargs": nargs,
        "repeat": repeat,
        "option": option,
    }
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: default.copy(), metadata=metadata)
    return field(default=default, metadata=metadata)


def _default(f: dataclasses.Field):
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return None


def _scalar_type(hint):
    """The type argparse converts a flag with (the first of a union; a bare list or dict
    stays itself, a `list[T]` is a `_ListOf` T)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return _scalar_type(next(a for a in typing.get_args(hint) if a is not type(None)))
    if origin is list:
        return _ListOf(typing.get_args(hint)[0])
    return hint


@dataclasses.dataclass(frozen=True)
class _ListOf:
    item: type


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def _help(meta, default, kind) -> str:
    quiet = default in ("", None, []) or (kind is bool and not meta.get("negatable", True))
    return meta["help"] + ("" if quiet else f" (default: {_show(default)})")


def _argument_kwargs(meta, default, kind, with_defaults: bool) -> dict:
    kwargs = {"default": default if with_defaults else None, "help": _help(meta, default, kind)}
    if kind is bool and meta.get("negatable", True):
        # Its default is set after it is made (see add_flags): given one, argparse's
        # BooleanOptionalAction would print it a second time.
        kwargs.update(action=argparse.BooleanOptionalAction, default=None)
    elif kind is bool:
        kwargs["action"] = "store_true"
        kwargs["default"] = bool(default) if with_defaults else None
    elif kind in (list, dict):
        kwargs.update(nargs="+", type=int, metavar="N")
    elif isinstance(kind, _ListOf):
        kwargs.update(type=meta.get("type") or kind.item, choices=meta.get("choices"))
        kwargs.update(metavar=meta.get("metavar"))
        if meta.get("repeat"):
            kwargs["action"] = "append"  # onto a copy of the default (add_flags sets it)
            kwargs["default"] = None
        else:
            kwargs["nargs"] = meta.get("nargs") or "+"
    else:
        kwargs.update(
            type=meta.get("type") or kind, choices=meta.get("choices"), metavar=meta.get("metavar")
        )
    if meta.get("nargs") and "action" not in kwargs:
        kwargs["nargs"] = meta["nargs"]
    if meta.get("required"):
        kwargs["required"] = True
    return kwargs


def add_flags(
    parser, cls, exclude=(), title: str | None = None, with_defaults: bool = False
) -> list[str]:
    """One flag per documented field of dataclass `cls`; the field names added. Flags
    default to None (see `given`), or with `with_defaults` to the fields' defaults."""
    target = parser.add_argument_group(title) if title else parser
    hints = typing.get_type_hints(cls)
    added = []
    for f in dataclasses.fields(cls):
        meta = f.metadata
        if "help" not in meta or meta.get(_NO_FLAG) or f.name in exclude:
            continue
        kwargs = _argument_kwargs(meta, _default(f), _scalar_type(hints[f.name]), with_defaults)
        if meta.get("positional"):
            kwargs.pop("required", None)
            target.add_argument(f.name, **kwargs)
        else:
            spelling = meta.get("option") or flag_name(f.name)
            target.add_argument(spelling, *meta.get("aliases", ()), dest=f.name, **kwargs)
            for alias in meta.get("hidden_aliases", ()):
                hidden = {**kwargs, "help": argparse.SUPPRESS, "required": False}
                target.add_argument(alias, dest=f.name, **hidden)
        if with_defaults and kwargs.get("action") in (argparse.BooleanOptionalAction, "append"):
            target.set_defaults(**{f.name: _default(f)})
        added.append(f.name)
    return added


def _show(value) -> str:
    if isinstance(value, list):
        return " ".join(map(str, value)) or "none"
    return f"{value:g}" if isinstance(value, float) else str(value)


def given(args: argparse.Namespace, cls) -> dict:
    """The fields of `cls` set on the command line (flags left at None are not)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in vars(args).items() if k in names and v is not None}


def from_args(args: argparse.Namespace, cls):
    """An instance of dataclass `cls` from the flags `add_flags` made for it."""
    return cls(**given(args, cls))


def diff_from_defaults(instance, skip=()) -> list[str]:
    """'name=value' for each field of a dataclass instance that differs from its default."""
    lines = []
    for f in dataclasses.fields(instance):
        value = getattr(instance, f.name)
        if f.name not in skip and value != _default(f):
            lines.append(f"{f.name}={_show(value) if not isinstance(value, str) else value}")
    return lines


def settings_line(instance, skip=()) -> str:
    """The one line a command prints at its start: its settings as a diff from the
    defaults ('defaults' when none differs)."""
    changed = diff_from_defaults(instance, skip)
    return " ".join(changed) if changed else "defaults"
