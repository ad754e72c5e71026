"""The report's dataset and training sections: the dataset card (splits, rejects by
reason, features), the run's summary, its curves and learning rate, and the per-epoch
table (epochs counted from 1, one column per registered metric)."""

from __future__ import annotations

from pathlib import Path

from tagtrain.inference.metrics import METRICS
from tagtrain.reporting import figures
from tagtrain.reporting.html import esc, image, image_file, read_csv, read_json, table


def epoch_columns() -> tuple[str, ...]:
    return ("epoch", "phase", "lr", "train_loss", "val_loss", *METRICS, "best", "seconds")


def dataset_section(data: Path, card: dict) -> str:
    """`card` is checked (tagtrain.loader.load_card): its counts and seconds are numbers;
    every value still goes through `esc`."""
    counts = card.get("counts") or {}
    rows = [
        [name, s.get("samples"), len(s["shards"]), round(s.get("seconds", 0) / 60, 1)]
        for name, s in card["splits"].items()
    ]
    total_seconds = sum(s.get("seconds", 0) for s in card["splits"].values())
    reasons = counts.get("rejects_by_reason") or {}
    parts = [
        '<h2 id="dataset">Dataset</h2>',
        *(
            f'<div class="kpi">{name} <b>{esc(counts.get(name, "?"))}</b></div>'
            for name in ("inputs", "samples", "rejects")
        ),  # fmt: skip
        f'<div class="kpi">audio <b>{total_seconds / 3600:.2f} h</b></div>',
        table(["split", "tracks", "shards", "minutes"], rows, "splits"),
        "<h3>Rejects by reason</h3>",
        table(["reason", "tracks"], sorted(reasons.items(), key=lambda kv: -kv[1]))
        if reasons
        else "<p>none</p>",
    ]
    rejects = data / "rejects.parquet"
    if rejects.is_file() and reasons:
        import pyarrow.parquet as pq

        listed = pq.read_table(rejects).to_pylist()[:20]
        parts.append(
            table(
                ["key", "path", "stage", "reason", "message"],
                [[r.get(c) for c in ("key", "path", "stage", "reason", "message")] for r in listed],
                text_columns=(1, 4),
            )
        )
    features = card["features"]
    shown = ("sample_rate", "n_fft", "hop", "n_mels", "f_max", "log_scale", "stored")
    described = ", ".join(f"{k}={features[k]}" for k in shown if k in features)
    parts.append(f"<p>Features: {esc(described)}; {len(card['vocabulary'])} tags.</p>")
    return "\n".join(parts)


def is_partial(row: dict) -> bool:
    return str(row.get("partial", "0")) not in ("0", "False", "")


def epoch_rows(run: Path) -> list[dict]:
    """One row per epoch of metrics.csv: a partial epoch that was resumed is logged again
    and only its last row counts; one that ended the run (a time budget) is kept."""
    rows = read_csv(run / "metrics.csv")
    return [
        r
        for i, r in enumerate(rows)
        if not (is_partial(r) and any(later["epoch"] == r["epoch"] for later in rows[i + 1 :]))
    ]


def training_section(run: Path) -> str:
    parts = ['<h2 id="training">Training</h2>']
    summary = run / "summary.json"
    if summary.exists():
        data = read_json(summary)
        flat = {
            k: v for k, v in data.items() if isinstance(v, (int, float, str)) and k != "run_dir"
        }
        parts.append(table(["", "value"], sorted(flat.items()), "summary", text_columns=(1,)))
    rows = epoch_rows(run)
    lr = figures.learning_rate_curve(rows)
    parts.append('<div class="figures">')
    parts.append(image_file(run / "curves.png", "training curves"))
    parts.append(image(lr, "learning rate"))
    parts.append("</div>")
    if rows:
        columns = [c for c in epoch_columns() if c in rows[0]]
        shown = rows[-30:]
        body = [[int(r["epoch"]) + 1 if c == "epoch" else r[c] for c in columns] for r in shown]
        note = f" (last 30 of {len(rows)})" if len(rows) > len(shown) else ""
        stopped = [str(int(r["epoch"]) + 1) for r in shown if is_partial(r)]
        note += f" (epoch {', '.join(stopped)} stopped before its end)" if stopped else ""
        header = [METRICS[c].label if c in METRICS else c for c in columns]
        parts.append(f"<h3>Per epoch{note}</h3>" + table(header, body, "epochs"))
    return "\n".join(parts)
