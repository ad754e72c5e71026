"""The report's robustness section: the table of every run's scores and changes from
clean per test set (one pair of columns per registered metric, the change starred where
its paired-bootstrap interval excludes 0), the most damaging deformation of each run,
robustness.png, and a per-tag x deformation heat map per run (from the saved per-track
predictions, through tagtrain.inference.robustness_tables: the function the robustness
command's per-tag table uses). One sign everywhere: change = deformed minus clean."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from tagtrain.inference.metrics import METRICS, primary_metric
from tagtrain.inference.robustness_tables import CLEAN, per_tag_drops
from tagtrain.reporting import figures
from tagtrain.reporting.html import (
    esc,
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


def change_text(row: dict, name: str) -> str | None:
    """'-0.003*': the change of metric `name` from clean (deformed - clean, as the terminal
    table and the heat maps show it), starred when its paired-bootstrap 95% interval
    excludes 0; None where there is none (the clean set, an undefined score)."""
    drop = number(row.get(f"{name}_drop"))
    if row.get("deformation") == CLEAN or not math.isfinite(drop):
        return None
    significant = str(row.get(f"{name}_drop_significant", "")).lower() in ("true", "1")
    return f"{-drop:+.3f}" + ("*" if significant else "")


def robustness_table(rows: list[dict]) -> str:
    """One row per test set; each run's score and change from clean of every metric side
    by side."""
    runs = list(dict.fromkeys(r["run"] for r in rows))
    sets = list(dict.fromkeys(r["deformation"] for r in rows))
    by = {(r["run"], r["deformation"]): r for r in rows}
    params = {r["deformation"]: _params(r.get("params", "")) for r in rows}
    header = ["test set", "parameters", "tracks"]
    for run in runs:
        prefix = f"{run}: " if len(runs) > 1 else ""
        header += [prefix + title for m in METRICS.values() for title in (m.label, "change")]
    body = []
    for name in sets:
        first = next(by[(run, name)] for run in runs if (run, name) in by)
        row = [name, params[name], first.get("tracks")]
        for run in runs:
            r = by.get((run, name), {})
            row += [v for m in METRICS for v in (r.get(m), change_text(r, m))]
        body.append(row)
    # Parameters wrap between words only (`noise_0.1`, `rate=0.5` stay whole).
    return table(header, body, "robustness", word_columns=(1,))


def sign_note() -> str:
    better = ", ".join(m.label for m in METRICS.values() if m.higher_is_better)
    worse = ", ".join(m.label for m in METRICS.values() if not m.higher_is_better)
    text = f"change = deformed minus clean, as in the terminal table and the heat maps: negative is worse for {better}"
    text += f" (positive is worse for {worse})" if worse else ""
    return text + ". * = significant: its paired-bootstrap 95% interval excludes 0. "


def most_damaging(rows: list[dict]) -> str:
    """'Most damaging (largest ROC-AUC drop): run: set (-0.123); ...' (the primary
    metric; a drop is a loss in its direction; the value is the change from clean)."""
    metric = primary_metric()
    found = []
    for label in dict.fromkeys(r["run"] for r in rows):
        losses = [(metric.goodness(number(r.get(f"{metric.name}_drop"))),
                   -number(r.get(f"{metric.name}_drop")), r["deformation"])
                  for r in rows if r["run"] == label and r["deformation"] != CLEAN]  # fmt: skip
        losses = [d for d in losses if math.isfinite(d[0])]
        if losses:
            _, change, name = max(losses, key=lambda d: d[0])
            found.append(f"{label}: {name} ({change:+.3f})")
    heading = f"Most damaging (largest {metric.label} drop): "
    return heading + "; ".join(found) + "." if found else ""


def _aligned(drops, tags: list[str], sets: list[str], metric: str) -> np.ndarray:
    """`drops`' change from clean [tags, sets] on the given rows and columns; NaN where
    the run has no score (a tag a published model lacks, a set it was not run on)."""
    change = -drops.drops(metric)
    out = np.full((len(tags), len(sets)), np.nan)
    row = {t: i for i, t in enumerate(drops.tags)}
    col = {s: j for j, s in enumerate(drops.sets)}
    for i, tag in enumerate(tags):
        for j, name in enumerate(sets):
            if tag in row and name in col:
                out[i, j] = change[row[tag], col[name]]
    return out


def heat_maps(directory: Path, rows: list[dict], vocabulary: list[str]) -> list[str]:
    """One per-tag x deformation heat map (of the primary metric) per run of the
    robustness table (the trained run first, alt "per-tag x deformation heat map";
    others name their run). All of them share one tag order (the first run's, best
    first; tags only others scored after it), one column order, one size and one
    symmetric colour range, so that they compare cell by cell."""
    metric = primary_metric()
    runs = list(dict.fromkeys(r["run"] for r in rows))
    sets = list(dict.fromkeys(r["deformation"] for r in rows))
    found = {label: per_tag_drops(directory, label, sets, vocabulary) for label in runs}
    found = {label: d for label, d in found.items() if d is not None}
    if not found:
        return []
    tags = list(dict.fromkeys(t for d in found.values() for t in d.tags))
    columns = [s for s in sets if any(s in d.sets for d in found.values())]
    columns += sorted({s for d in found.values() for s in d.sets} - set(columns))
    changes = {label: _aligned(d, tags, columns, metric.name) for label, d in found.items()}
    finite = [np.abs(c[np.isfinite(c)]).max() for c in changes.values() if np.isfinite(c).any()]
    limit = max([0.05, *finite])
    out = []
    for i, (label, change) in enumerate(changes.items()):
        heat = figures.deformation_heatmap(
            tags, columns, change, f"{label}: per-tag {metric.label} change", metric, limit
        )
        alt = "per-tag x deformation heat map" + (f" ({label})" if i else "")
        out.append(image(heat, alt))
    return out


def robustness_section(directory: Path, run: Path, vocabulary: list[str]) -> str:
    parts = ['<h2 id="robustness">Robustness (MUDA deformations of the test split)</h2>']
    table_path = directory / "robustness.csv"
    found = table_path if table_path.exists() else first_file(directory, "*.csv") or table_path
    rows = read_csv(found)
    if not rows:
        return "\n".join(parts + ['<p class="missing">(no robustness results found)</p>'])
    parts.extend(stale_banner(why) for why in stale_robustness(directory, run))
    parts.append(robustness_table(rows))
    parts.append(note(esc(sign_note() + most_damaging(rows))))
    heats = heat_maps(directory, rows, vocabulary)
    parts.append('<div class="figures">')
    parts.append(image_file(first_file(directory, "*.png"), "robustness figure"))
    parts.append("</div>")
    # Side by side at one width: the maps share their rows, columns and colours.
    parts.append('<div class="heat">')
    parts.extend(heats or [image(None, "per-tag x deformation heat map")])
    parts.append("</div>")
    if not heats:
        parts.append(note("The per-tag heat map needs per-track predictions of each test set "
                          "(predictions-{run}-{set}.parquet from robustness)."))  # fmt: skip
    return "\n".join(parts)
