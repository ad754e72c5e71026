"""The reproduction ledger's section of a report: the papers' figures beside ours
(`tagtrain reproduce` writes ledger.csv; this renders it as HTML or Markdown). Rows are
the ledger's: dicts with paper, recipe, dataset, table, row, metric, reported (a
fraction), ours, low, high, difference, flagged, note; values as written to the CSV
(strings) or as computed (numbers)."""

from __future__ import annotations

import csv
from pathlib import Path

from tagtrain.reporting.html import esc

LABELS = {"roc_auc": "ROC-AUC", "pr_auc": "PR-AUC"}
HEADER = ("recipe", "paper's row", "metric", "paper", "ours (95% interval)", "difference", "")


def read_ledger(path: str | Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _number(value) -> float | None:
    if value is None or value == "":
        return None
    return float(value)


def _flagged(value) -> bool:
    return value is True or str(value).lower() == "true"


def _cells(row: dict) -> tuple[str, ...]:
    paper, ours = _number(row.get("reported")), _number(row.get("ours"))
    low, high = _number(row.get("low")), _number(row.get("high"))
    diff = _number(row.get("difference"))
    where = ", ".join(str(row.get(k)) for k in ("dataset", "table", "row") if row.get(k))
    if ours is None:
        ours_text = "not evaluated"
    elif low is None or high is None:
        ours_text = f"{ours:.4f}"
    else:
        ours_text = f"{ours:.4f} ({low:.4f}–{high:.4f})"
    return (
        str(row.get("recipe", "")),
        where,
        LABELS.get(str(row.get("metric")), str(row.get("metric"))),
        "—" if paper is None else f"{paper:.4f}",
        ours_text,
        "" if diff is None else f"{diff:+.4f}",
        "outside the interval" if _flagged(row.get("flagged")) else "",
    )


def ledger_markdown(rows: list[dict]) -> str:
    lines = [
        "## Reproduction ledger: the papers' figures beside ours",
        "",
        "Flagged: our bootstrap 95% interval excludes the paper's figure.",
        "",
        "| " + " | ".join(HEADER) + " |",
        "|" + "---|" * len(HEADER),
    ]
    lines += ["| " + " | ".join(_cells(row)) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def ledger_section_html(rows: list[dict]) -> str:
    """A <section> of the report: one table row per recipe and metric."""
    head = "".join(f"<th>{esc(h)}</th>" for h in HEADER)
    body = []
    for row in rows:
        cells = _cells(row)
        cls = ' class="flagged"' if cells[-1] else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{esc(c)}</td>" for c in cells) + "</tr>")
    return (
        '<section id="reproduction-ledger">\n<h2>Reproduction ledger</h2>\n'
        "<p>The papers' figures beside ours; flagged where our bootstrap 95% interval "
        "excludes the paper's figure.</p>\n"
        f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n" + "\n".join(body)
        + "\n</tbody>\n</table>\n</section>\n"
    )  # fmt: skip


def ledger_section_for_run(run_dir: str | Path) -> str:
    """The ledger section for a run's report: a run that `tagtrain reproduce` made lives in
    DIR/RECIPE beside DIR/ledger.csv; its rows come first. "" for any other run."""
    run_dir = Path(run_dir)
    path = run_dir.parent / "ledger.csv"
    if not path.is_file():
        return ""
    rows = read_ledger(path)
    mine = [r for r in rows if r.get("recipe") == run_dir.name]
    if not mine:
        return ""
    return ledger_section_html(mine + [r for r in rows if r.get("recipe") != run_dir.name])
