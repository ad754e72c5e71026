"""`python -m tagtrain report`: one self-contained HTML page about a run.

Dataset summary (tracks, seconds, rejects by reason), training curves, evaluation with the
per-tag table, the robustness table and figure, and the exact commands that produced them.
Images are embedded (base64), so the page can be moved or mailed as one file.
"""

from __future__ import annotations

import argparse
import base64
import csv
import html
import json
import sys
from pathlib import Path

COMMAND = "report"
HELP = "write report.html for a run: dataset, training curves, evaluation, robustness"

CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { border-bottom: 2px solid #446; } h2 { margin-top: 1.6em; color: #335; }
table { border-collapse: collapse; margin: .6em 0; font-size: 14px; }
th, td { border: 1px solid #ccd; padding: 3px 8px; text-align: right; }
th { background: #eef; } td:first-child, th:first-child { text-align: left; }
img { max-width: 100%; border: 1px solid #ddd; }
pre { background: #f6f6fa; padding: .8em; overflow-x: auto; font-size: 13px; }
.kpi { display: inline-block; margin: 0 1.5em .5em 0; } .kpi b { font-size: 1.5em; }
.missing { color: #a33; }
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, type=Path, help="run directory")
    parser.add_argument("--data", required=True, type=Path, help="prepared dataset directory")
    parser.add_argument(
        "--robustness", type=Path, default=None, help="robustness output (default RUN/robustness)"
    )
    parser.add_argument(
        "--commands", type=Path, default=None, help="file of the commands that made it"
    )
    parser.add_argument("--out", type=Path, default=None, help="default RUN/report.html")


def _table(header: list[str], rows: list[list], cls: str = "") -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in row) + "</tr>" for row in rows
    )
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.0f}"
    if value is None:
        return "–"
    text = str(value)
    try:
        number = float(text)
    except ValueError:
        return text
    return _fmt(number) if "." in text else text


def _image(path: Path | None, alt: str) -> str:
    if path is None or not path.exists():
        return f'<p class="missing">({html.escape(alt)}: not found)</p>'
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _read_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    return (rows[0], rows[1:]) if rows else ([], [])


def _first(directory: Path, pattern: str) -> Path | None:
    found = sorted(directory.glob(pattern)) if directory.exists() else []
    return found[0] if found else None


def dataset_section(data: Path) -> str:
    card = json.loads((data / "dataset.json").read_text())
    counts = card.get("counts", {})
    rows = [
        [name, s["samples"], len(s["shards"]), round(s["seconds"] / 60, 1)]
        for name, s in card["splits"].items()
    ]
    total_seconds = sum(s["seconds"] for s in card["splits"].values())
    reasons = counts.get("rejects_by_reason", {})
    parts = [
        "<h2>Dataset</h2>",
        f'<div class="kpi">inputs <b>{counts.get("inputs", "?")}</b></div>',
        f'<div class="kpi">samples <b>{counts.get("samples", "?")}</b></div>',
        f'<div class="kpi">rejects <b>{counts.get("rejects", "?")}</b></div>',
        f'<div class="kpi">audio <b>{total_seconds / 3600:.2f} h</b></div>',
        _table(["split", "tracks", "shards", "minutes"], rows, "splits"),
        "<h3>Rejects by reason</h3>",
        _table(["reason", "tracks"], sorted(reasons.items())) if reasons else "<p>none</p>",
    ]
    rejects = data / "rejects.parquet"
    if rejects.exists() and reasons:
        import pyarrow.parquet as pq

        listed = pq.read_table(rejects).to_pylist()[:20]
        parts.append(
            _table(
                ["key", "path", "stage", "reason", "message"],
                [[r["key"], r["path"], r["stage"], r["reason"], r["message"]] for r in listed],
            )
        )
    features = card["features"]
    parts.append(
        "<p>Features: "
        + html.escape(
            ", ".join(
                f"{k}={features[k]}"
                for k in ("sample_rate", "n_fft", "hop", "n_mels", "f_max", "log_scale", "stored")
                if k in features
            )
        )
        + f"; {len(card['vocabulary'])} tags.</p>"
    )
    return "\n".join(parts)


def training_section(run: Path) -> str:
    parts = ["<h2>Training</h2>"]
    summary = run / "summary.json"
    if summary.exists():
        data = json.loads(summary.read_text())
        flat = {k: v for k, v in data.items() if isinstance(v, (int, float, str))}
        parts.append(_table(["", "value"], sorted(flat.items()), "summary"))
    parts.append(_image(run / "curves.png", "training curves"))
    metrics = run / "metrics.csv"
    if metrics.exists():
        header, rows = _read_csv(metrics)
        parts.append("<h3>Per epoch</h3>" + _table(header, rows[-30:], "epochs"))
    return "\n".join(parts)


def evaluation_section(run: Path) -> str:
    parts = ["<h2>Evaluation (test split)</h2>"]
    metrics = run / "metrics.json"
    if metrics.exists():
        m = json.loads(metrics.read_text())
        for key in ("roc_auc", "pr_auc", "macro_roc_auc", "macro_pr_auc"):
            if isinstance(m.get(key), (int, float)):
                parts.append(f'<div class="kpi">{key} <b>{m[key]:.3f}</b></div>')
        excluded = m.get("excluded_tags") or m.get("excluded") or []
        if excluded:
            parts.append(
                "<p>Left out of the macro averages (no positives or no negatives): "
                + html.escape(", ".join(map(str, excluded)))
                + "</p>"
            )
    else:
        parts.append('<p class="missing">(metrics.json not found: run evaluate)</p>')
    per_tag = run / "per_tag.csv"
    if per_tag.exists():
        header, rows = _read_csv(per_tag)
        parts.append(_table(header, rows, "per-tag"))
    return "\n".join(parts)


def robustness_section(directory: Path) -> str:
    parts = ["<h2>Robustness (MUDA deformations of the test split)</h2>"]
    table = _first(directory, "*.csv")
    if table is None:
        return "\n".join(parts + ['<p class="missing">(no robustness results found)</p>'])
    header, rows = _read_csv(table)
    parts.append(_table(header, rows, "robustness"))
    parts.append(_image(_first(directory, "*.png"), "robustness figure"))
    return "\n".join(parts)


def commands_section(commands: Path | None) -> str:
    if commands is None or not commands.exists():
        return ""
    text = html.escape(commands.read_text())
    return f"<h2>Reproduce</h2><p>The exact commands, in order:</p><pre>{text}</pre>"


def build_report(
    run: Path, data: Path, robustness: Path | None = None, commands: Path | None = None
) -> str:
    robustness = robustness or run / "robustness"
    title = f"Tagging run: {run.name}"
    body = "\n".join(
        [
            f"<h1>{html.escape(title)}</h1>",
            dataset_section(data),
            training_section(run),
            evaluation_section(run),
            robustness_section(robustness),
            commands_section(commands),
        ]
    )
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}'
        f"</title><style>{CSS}</style></head><body>{body}</body></html>\n"
    )


def run(args: argparse.Namespace) -> int:
    for path, what in ((args.run, "run"), (args.data / "dataset.json", "dataset card")):
        if not path.exists():
            print(f"error: {what} not found: {path}", file=sys.stderr)
            return 2
    out = args.out or args.run / "report.html"
    out.write_text(build_report(args.run, args.data, args.robustness, args.commands))
    print(f"report: {out.resolve()}")
    return 0
