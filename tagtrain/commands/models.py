"""`python -m tagtrain models`: the registered models, their inputs and sizes."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from pipelines.core.errors import UserError
from pipelines.core.flags import add_flags, from_args, setting
from tagtrain.models.registry import count_parameters, create_model, list_models

COMMAND = "models"
HELP = "list the registered models, their inputs and sizes"


@dataclass(frozen=True)
class ModelsFlags:
    n_classes: int = setting(50, "tags for the size column")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_flags(parser, ModelsFlags)


def run(args: argparse.Namespace) -> int:
    flags = from_args(args, ModelsFlags)
    if flags.n_classes < 1:
        raise UserError("--n-classes must be at least 1")
    print(models_table(flags.n_classes))
    return 0


_TABLE_COLUMNS = (
    "name",
    "input",
    "seconds",
    "sr",
    "mels",
    "level",
    "params",
    "reference",
    "description",
)


def models_table(n_classes: int = 50) -> str:
    """A plain-text table of every registered model: its input, and its size at width 1.0
    for `n_classes` tags next to the paper's (reference sizes are for 50 tags)."""
    rows = []
    for entry in list_models():
        spec = entry.input_spec
        params = count_parameters(create_model(entry.name, n_classes, seed=None))
        rows.append(
            (
                entry.name,
                spec.kind,
                f"{spec.samples / spec.sample_rate:.2f}",
                str(spec.sample_rate),
                str(spec.n_mels) if spec.kind == "mel" else "-",
                "chunk" if spec.chunk_level else "song",
                f"{params:,}",
                f"{entry.reference_params:,}" if entry.reference_params else "-",
                entry.description,
            )
        )
    widths = [max(len(r[i]) for r in [_TABLE_COLUMNS, *rows]) for i in range(len(_TABLE_COLUMNS))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip()
        for row in [_TABLE_COLUMNS, *rows]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
