"""robustness's macro outputs: `robustness.csv` / `robustness.json` (one row per run and
test set: every registered metric, its drop from clean and their bootstrap intervals), the
printed table, the most damaging deformation of each run, and `robustness.png`: each
run's score of every metric across the deformations, its clean score drawn as a reference
line (after Figure 2 of Won et al., "Evaluation of CNN-based automatic music tagging
models", 2020)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from tagtrain.inference.metrics import METRICS, primary_metric
from tagtrain.inference.robustness_tables import CLEAN

# The figure's size, fixed so that its pixel size is known: 1200 x 450.
FIGURE_INCHES = (12.0, 4.5)
FIGURE_DPI = 100


def row_fields() -> tuple[str, ...]:
    """robustness.csv's columns: four groups per registered metric."""
    return (
        "run", "model", "deformation", "params", "tracks",
        *METRICS,
        *(f"{m}_drop" for m in METRICS),
        *(f"{m}_{end}" for m in METRICS for end in ("low", "high")),
        *(f"{m}_drop_{end}" for m in METRICS for end in ("low", "high", "significant")),
    )  # fmt: skip


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def write_tables(rows: list[dict], report: dict, out_dir: Path) -> tuple[Path, Path]:
    csv_path, json_path = out_dir / "robustness.csv", out_dir / "robustness.json"
    fields = row_fields()
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fields)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if row[k] is None else row[k] for k in fields})
    json_path.write_text(json.dumps({**report, "rows": rows}, indent=2) + "\n")
    return csv_path, json_path


def write_figure(rows: list[dict], labels: list[str], set_names: list[str], path: Path) -> Path:
    """Every metric per deformation (one panel each), one marker series per run (side by
    side within each deformation); each run's clean score is a dotted line, and a stem
    joins it to the deformed score, so the stem's length is the drop."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(METRICS), figsize=FIGURE_INCHES, squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    spread = 0.6 / max(1, len(labels))
    for ax, metric in zip(axes[0], METRICS.values()):
        for i, label in enumerate(labels):
            colour = colours[i % len(colours)]
            by_set = {r["deformation"]: r[metric.name] for r in rows if r["run"] == label}
            clean = by_set.get(CLEAN)
            shift = (i - (len(labels) - 1) / 2) * spread
            points = [(j + shift, by_set.get(n)) for j, n in enumerate(set_names)]
            points = [(x, v) for x, v in points if v is not None]
            if points:
                ax.plot(*zip(*points), "o", color=colour, label=label)
            if clean is not None:
                ax.axhline(clean, color=colour, linestyle=":", linewidth=1)
                ax.vlines([x for x, _ in points], clean, [v for _, v in points], color=colour)
        ax.set_xticks(range(len(set_names)), set_names, rotation=30, ha="right")
        title = metric.label
        ax.set(title=f"{title} under deformations (dotted: clean)", ylabel=f"macro {title}")
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=FIGURE_DPI)
    plt.close(fig)
    return path


def print_table(rows: list[dict], labels: list[str], set_names: list[str], split: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"robustness on the {split} split (change from clean in brackets, deformed "
        "minus clean as in report.html: negative is worse where higher is better; * = "
        "significant: its paired-bootstrap 95% interval excludes 0)",
        title_justify="left",
    )
    table.add_column("deformation")
    for label in labels:
        for metric in METRICS.values():
            table.add_column(f"{label}\n{metric.label}", justify="right")
    index = {(r["run"], r["deformation"]): r for r in rows}
    for name in set_names:
        cells = []
        for label in labels:
            row = index.get((label, name))
            for metric in METRICS:
                if row is None:
                    cells.append("-")
                elif name == CLEAN:
                    cells.append(_fmt(row[metric]))
                else:
                    drop = row[f"{metric}_drop"]
                    change = "-" if drop is None else f"{-drop:+.4f}"
                    if row.get(f"{metric}_drop_significant"):
                        change += "*"
                    cells.append(f"{_fmt(row[metric])} ({change})")
        table.add_row(name, *cells)
    width = max(100, 30 + 18 * len(METRICS) * len(labels))
    Console(highlight=False, width=width).print(table)


def print_most_damaging(rows: list[dict], labels: list[str]) -> None:
    """Per run, the deformation with the largest loss of the primary metric."""
    metric = primary_metric()
    drop = f"{metric.name}_drop"
    for label in labels:
        losses = [r for r in rows if r["run"] == label and r[drop] is not None]
        losses = [r for r in losses if r["deformation"] != CLEAN]
        if losses:
            worst = max(losses, key=lambda r: metric.goodness(r[drop]))
            print(f"most damaging deformation for {label}: {worst['deformation']} "
                  f"({metric.label} {-worst[drop]:+.4f})")  # fmt: skip
