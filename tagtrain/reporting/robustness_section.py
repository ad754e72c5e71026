"""The report's robustness section: the table of every run's scores and drops per test
set (one pair of columns per registered metric), the most damaging deformation of each
run, robustness.png, and a per-tag x deformation heat map per run (from the saved
per-track predictions, through tagtrain.inference.robustness_tables: the function the
robustness command's per-tag table uses)."""

from __future__ import annotations

import html
import json
import math
from pathlib import Path

from tagtrain.inference.metrics import METRICS, primary_metric
from tagtrain.inference.robustness_tables import CLEAN, per_tag_drops
from tagtrain.reporting import figures
from tagtrain.reporting.html import (
    first_file,
    fmt,
    image,
    image_file,
    note,
    number,
    read_csv,
    stale_banner,
    table,
)
from tagtrain.run.stale import stale_robustness


def _params(text: str) -> str:
    """'{"semitones": 1.0}' -> 'semitones=1'."""
    try:
        params = json.loads(text) if text else {}
    except ValueError:
        return text
    if not isinstance(params, dict):
        return str(params)
    return ", ".join(f"{k}={fmt(v, 2).rstrip('0').rstrip('.')}" for k, v in params.items())


def robustness_table(rows: list[dict]) -> str:
    """One row per test set; each run's score and drop of every metric side by side."""
    runs = list(dict.fromkeys(r["run"] for r in rows))
    sets = list(dict.fromkeys(r["deformation"] for r in rows))
    by = {(r["run"], r["deformation"]): r for r in rows}
    params = {r["deformation"]: _params(r.get("params", "")) for r in rows}
    columns = [(key, title) for m in METRICS.values()
               for key, title in ((m.name, m.label), (f"{m.name}_drop", "drop"))]  # fmt: skip
    header = ["test set", "parameters", "tracks"]
    for run in runs:
        prefix = f"{run}: " if len(runs) > 1 else ""
        header += [prefix + title for _, title in columns]
    body = []
    for name in sets:
        first = next(by[(run, name)] for run in runs if (run, name) in by)
        row = [name, params[name], first.get("tracks")]
        for run in runs:
            r = by.get((run, name), {})
            row += [r.get(key) for key, _ in columns]
        body.append(row)
    return table(header, body, "robustness", text_columns=(1,))


def most_damaging(rows: list[dict]) -> str:
    """'Most damaging (largest ROC-AUC drop): run: set (-0.123); ...' (the primary
    metric; a drop is a loss in its direction)."""
    metric = primary_metric()
    found = []
    for label in dict.fromkeys(r["run"] for r in rows):
        losses = [(metric.goodness(number(r.get(f"{metric.name}_drop"))), r["deformation"])
                  for r in rows if r["run"] == label and r["deformation"] != CLEAN]  # fmt: skip
        losses = [d for d in losses if math.isfinite(d[0])]
        if losses:
            loss, name = max(losses)
            found.append(f"{label}: {name} ({-metric.goodness(loss):+.3f})")
    heading = f"Most damaging (largest {metric.label} drop): "
    return heading + "; ".join(found) + "." if found else ""


def heat_maps(directory: Path, rows: list[dict], vocabulary: list[str]) -> list[str]:
    """One per-tag x deformation heat map (of the primary metric) per run of the
    robustness table (the trained run first, alt "per-tag x deformation heat map";
    others name their run)."""
    metric = primary_metric()
    runs = list(dict.fromkeys(r["run"] for r in rows))
    sets = list(dict.fromkeys(r["deformation"] for r in rows))
    out = []
    for i, label in enumerate(runs):
        drops = per_tag_drops(directory, label, sets, vocabulary)
        if drops is None:
            continue
        heat = figures.deformation_heatmap(
            drops.tags, drops.sets, -drops.drops(metric.name),
            f"{label}: per-tag {metric.label} change", metric,
        )  # fmt: skip
        alt = "per-tag x deformation heat map" + (f" ({label})" if i else "")
        out.append(image(heat, alt))
    return out


def robustness_section(directory: Path, run: Path, vocabulary: list[str]) -> str:
    parts = ["<h2>Robustness (MUDA deformations of the test split)</h2>"]
    table_path = directory / "robustness.csv"
    found = table_path if table_path.exists() else first_file(directory, "*.csv") or table_path
    rows = read_csv(found)
    if not rows:
        return "\n".join(parts + ['<p class="missing">(no robustness results found)</p>'])
    parts.extend(stale_banner(why) for why in stale_robustness(directory, run))
    parts.append(robustness_table(rows))
    parts.append(note("drop = clean minus deformed: positive is worse. "
                      + html.escape(most_damaging(rows))))  # fmt: skip
    heats = heat_maps(directory, rows, vocabulary)
    parts.append('<div class="figures">')
    parts.append(image_file(first_file(directory, "*.png"), "robustness figure"))
    parts.extend(heats or [image(None, "per-tag x deformation heat map")])
    parts.append("</div>")
    if not heats:
        parts.append(note("The per-tag heat map needs per-track predictions of each test set "
                          "(predictions-{run}-{set}.parquet from robustness)."))  # fmt: skip
    return "\n".join(parts)
