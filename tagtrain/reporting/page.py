"""`python -m tagtrain report`: one self-contained HTML page about a run.

Dataset summary (tracks, seconds, rejects by reason), training (curves, learning rate, the
per-epoch table), evaluation (per-tag table ranked by the primary metric, scores against
positives, PR curves of the best and worst tags, a 2-D map of the test tracks' embeddings
coloured by tag), robustness (table, figure, a per-tag x deformation heat map per run),
and the exact commands. Every registered metric (tagtrain.inference.metrics) has its
columns. Epochs are counted from 1 everywhere. Runs given with `--compare` (e.g. a
pretrained model evaluated on the same data) appear beside the run. Images are embedded
(base64), so the page can be moved or mailed as one file; the layout wraps long cells and
commands so nothing runs off the page.

Optional inputs, used when present: `predictions.parquet` next to evaluate's outputs
(key, tags, probabilities: PR curves) and, in the robustness directory,
`predictions-{run}-{set}.parquet` per test set, as robustness writes them (`clean` and
each deformation: the heat maps), and `RUN/embeddings-test.parquet` (`embed --split
test`: the embedding map, PCA in numpy).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipelines.core.errors import UserError
from pipelines.core.flags import setting
from tagtrain.loader import load_card
from tagtrain.reporting.evaluation_section import (
    EMBEDDINGS,
    embedding_figure,
    evaluation_section,
)
from tagtrain.reporting.html import CSS, esc
from tagtrain.reporting.ledger_section import ledger_section_for_run
from tagtrain.reporting.robustness_section import robustness_section
from tagtrain.reporting.run_sections import dataset_section, training_section


@dataclass
class ReportOptions:
    run: Path = setting(None, "run directory", type=Path, required=True)
    data: Path = setting(None, "prepared dataset directory", type=Path, required=True)
    robustness: Path | None = setting(None, "robustness output (default RUN/robustness)")
    commands: Path | None = setting(None, "file of the commands that made it")
    compare: list[Path] = setting(
        [], "another evaluated run (e.g. a pretrained model) shown beside this one; repeatable",
        type=Path, repeat=True,
    )  # fmt: skip
    embeddings: Path | None = setting(
        None, "per-track embeddings of the test split, as `embed --split test` writes them "
        f"(default RUN/{EMBEDDINGS})",
    )  # fmt: skip
    out: Path | None = setting(None, "default RUN/report.html")


def commands_section(commands: Path | None) -> str:
    if commands is None or not commands.is_file():
        return ""
    text = esc(commands.read_text(errors="replace"))
    return f'<h2 id="reproduce">Reproduce</h2><p>The exact commands, in order:</p><pre>{text}</pre>'


def build_report(
    run: Path,
    data: Path,
    robustness: Path | None = None,
    commands: Path | None = None,
    compare: list[Path] | None = None,
    embeddings: Path | None = None,
) -> str:
    # The loader's reader: size cap, regular file, schema (one line each), as every
    # command that reads a card.
    card = load_card(str(data))
    vocabulary = list(card["vocabulary"])
    robustness = robustness or run / "robustness"
    embedding_map = embedding_figure(embeddings or run / EMBEDDINGS, run, data)
    title = f"Tagging run: {run.name}"
    body = "\n".join(
        [
            f"<h1>{esc(title)}</h1>",
            dataset_section(data, card),
            training_section(run),
            evaluation_section(run, card, compare or [], embedding_map),
            ledger_section_for_run(run),
            robustness_section(robustness, run, vocabulary),
            commands_section(commands),
        ]
    )
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body>{body}</body></html>\n"
    )


def write_report(options: ReportOptions) -> Path:
    """report.html of `options.run` (default RUN/report.html); its path."""
    needed = [(options.run, "run"), (options.data / "dataset.json", "dataset card")]
    needed += [(path, "--compare run") for path in options.compare]
    for path, what in needed:
        if not path.exists():
            raise UserError(f"{what} not found: {path}")
    out = options.out or options.run / "report.html"
    page = build_report(
        options.run, options.data, options.robustness, options.commands, options.compare,
        options.embeddings,
    )  # fmt: skip
    out.write_text(page)
    return out
