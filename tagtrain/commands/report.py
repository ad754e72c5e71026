"""`python -m tagtrain report`: one self-contained HTML page about a run.

Dataset summary (tracks, seconds, rejects by reason), training (curves, learning rate, the
per-epoch table), evaluation (per-tag table sorted by ROC-AUC, AUC against positives, PR
curves of the best and worst tags, a 2-D map of the test tracks' embeddings coloured by
tag), robustness (table, figure, a per-tag x deformation heat map per run), and the exact
commands. Epochs are counted from 1 everywhere. Runs given with
`--compare` (e.g. a pretrained model evaluated on the same data) appear beside the run.
Images are embedded (base64), so the page can be moved or mailed as one file; the layout
wraps long cells and commands so nothing runs off the page.

Optional inputs, used when present: `predictions.parquet` next to evaluate's outputs
(key, tags, probabilities: PR curves) and, in the robustness directory,
`predictions-{run}-{set}.parquet` per test set, as robustness writes them (`clean` and
each deformation: the heat maps, through tagtrain.inference.robustness_tables, the function the
robustness command's per-tag table uses), and `RUN/embeddings-test.parquet` (`embed
--split test`: the embedding map, PCA in numpy).
"""

from __future__ import annotations

import argparse
import base64
import csv
import html
import json
import math
import sys
from pathlib import Path

import numpy as np

from tagtrain.inference.robustness_tables import per_tag_drops, read_predictions
from tagtrain.reporting import figures
from tagtrain.run.stale import stale_checkpoint, stale_data, stale_robustness

COMMAND = "report"
HELP = "write report.html for a run: dataset, training curves, evaluation, robustness"

CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; padding: 0 1em;
       color: #222; }
h1 { border-bottom: 2px solid #446; overflow-wrap: anywhere; } h2 { margin-top: 1.6em; color: #335; }
table { border-collapse: collapse; margin: .6em 0; font-size: 13px; max-width: 100%; }
th, td { border: 1px solid #ccd; padding: 2px 7px; text-align: right; overflow-wrap: anywhere; }
th { background: #eef; } td:first-child, th:first-child { text-align: left; }
td.text { text-align: left; max-width: 28em; }
.columns { column-width: 20em; column-gap: 1.5em; } .columns table { break-inside: avoid; }
.figures { display: flex; flex-wrap: wrap; gap: 1em; align-items: flex-start; }
.figures img { flex: 1 1 460px; min-width: 0; }
img { max-width: 100%; height: auto; border: 1px solid #ddd; }
pre { background: #f6f6fa; padding: .8em; font-size: 12px; white-space: pre-wrap;
      overflow-wrap: anywhere; }
.kpi { display: inline-block; margin: 0 1.5em .5em 0; } .kpi b { font-size: 1.5em; }
.missing { color: #a33; } .note { color: #555; font-size: 13px; }
.stale { color: #fff; background: #a33; padding: 6px 10px; font-weight: bold; }
"""

EPOCH_COLUMNS = ("epoch", "phase", "lr", "train_loss", "val_loss", "roc_auc", "pr_auc", "best",
                 "seconds")  # fmt: skip
DEFAULT_SET = "clean"
EMBEDDINGS = "embeddings-test.parquet"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, type=Path, help="run directory")
    parser.add_argument("--data", required=True, type=Path, help="prepared dataset directory")
    parser.add_argument(
        "--robustness", type=Path, default=None, help="robustness output (default RUN/robustness)"
    )
    parser.add_argument(
        "--commands", type=Path, default=None, help="file of the commands that made it"
    )
    parser.add_argument(
        "--compare", type=Path, action="append", default=[],
        help="another evaluated run (e.g. a pretrained model) shown beside this one; repeatable",
    )  # fmt: skip
    parser.add_argument(
        "--embeddings", type=Path, default=None,
        help=f"per-track embeddings of the test split, as `embed --split test` writes them "
        f"(default RUN/{EMBEDDINGS})",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, default=None, help="default RUN/report.html")


# --- HTML pieces -----------------------------------------------------------------------


def fmt(value, digits: int = 3) -> str:
    """Numbers rounded for reading (3 decimals; large values as integers), None as a dash."""
    if value is None or value == "":
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return "–"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        if value != 0 and abs(value) < 0.5 * 10**-digits:  # would show as 0.000
            return f"{value:.1e}"
        return f"{value:.{digits}f}"
    text = str(value)
    try:
        number = float(text)
    except ValueError:
        return text
    return fmt(int(number) if number.is_integer() and "." not in text else number, digits)


def table(header: list[str], rows: list[list], cls: str = "", text_columns=()) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)

    def cell(i, v):
        attr = ' class="text"' if i in text_columns else ""
        return f"<td{attr}>{html.escape(fmt(v))}</td>"

    body = "".join(
        "<tr>" + "".join(cell(i, v) for i, v in enumerate(row)) + "</tr>" for row in rows
    )
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def image(data: bytes | None, alt: str) -> str:
    if data is None:
        return f'<p class="missing">({html.escape(alt)}: not available)</p>'
    encoded = base64.b64encode(data).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{encoded}">'


def image_file(path: Path | None, alt: str) -> str:
    return image(path.read_bytes() if path is not None and path.exists() else None, alt)


def read_csv(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _first(directory: Path, pattern: str) -> Path | None:
    found = sorted(directory.glob(pattern)) if directory.exists() else []
    return found[0] if found else None


def _number(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


# --- sections --------------------------------------------------------------------------


def dataset_section(data: Path, card: dict) -> str:
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
        table(["split", "tracks", "shards", "minutes"], rows, "splits"),
        "<h3>Rejects by reason</h3>",
        table(["reason", "tracks"], sorted(reasons.items(), key=lambda kv: -kv[1]))
        if reasons
        else "<p>none</p>",
    ]
    rejects = data / "rejects.parquet"
    if rejects.exists() and reasons:
        import pyarrow.parquet as pq

        listed = pq.read_table(rejects).to_pylist()[:20]
        parts.append(
            table(
                ["key", "path", "stage", "reason", "message"],
                [[r["key"], r["path"], r["stage"], r["reason"], r["message"]] for r in listed],
                text_columns=(1, 4),
            )
        )
    features = card["features"]
    shown = ("sample_rate", "n_fft", "hop", "n_mels", "f_max", "log_scale", "stored")
    described = ", ".join(f"{k}={features[k]}" for k in shown if k in features)
    parts.append(f"<p>Features: {html.escape(described)}; {len(card['vocabulary'])} tags.</p>")
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
    parts = ["<h2>Training</h2>"]
    summary = run / "summary.json"
    if summary.exists():
        data = json.loads(summary.read_text())
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
        columns = [c for c in EPOCH_COLUMNS if c in rows[0]]
        shown = rows[-30:]
        body = [[int(r["epoch"]) + 1 if c == "epoch" else r[c] for c in columns] for r in shown]
        note = f" (last 30 of {len(rows)})" if len(rows) > len(shown) else ""
        stopped = [str(int(r["epoch"]) + 1) for r in shown if is_partial(r)]
        note += f" (epoch {', '.join(stopped)} stopped before its end)" if stopped else ""
        parts.append(f"<h3>Per epoch{note}</h3>" + table(columns, body, "epochs"))
    return "\n".join(parts)


def _kpis(metrics: dict) -> str:
    return "".join(
        f'<div class="kpi">{key} <b>{metrics[key]:.3f}</b></div>'
        for key in ("roc_auc", "pr_auc")
        if isinstance(metrics.get(key), (int, float))
    )


def _per_tag_scores(path: Path) -> dict[str, dict]:
    return {r["tag"]: r for r in read_csv(path / "per_tag.csv") if r.get("roc_auc")}


def comparison_table(run: Path, others: list[Path]) -> str:
    """Each run's macro scores on its own tags, and on the tags every one of them scored
    (a published model has only some of the dataset's tags), so the figures compare."""
    scored = {path: _per_tag_scores(path) for path in [run, *others]}
    shared = set.intersection(*(set(tags) for tags in scored.values()))
    rows, stale = [], []
    for path in [run, *others]:
        metrics_path = path / "metrics.json"
        m = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
        on_shared = [
            np.mean([_number(scored[path][t][key]) for t in shared]) if shared else None
            for key in ("roc_auc", "pr_auc")
        ]
        rows.append([path.name, m.get("model", "?"), m.get("tracks"), m.get("chunks"),
                     len(scored[path]), m.get("roc_auc"), m.get("pr_auc"), *on_shared])  # fmt: skip
        if path != run and (why := stale_checkpoint(path, m)):
            stale.append(stale_banner(f"{path.name}: {why}"))
    header = ["run", "model", "tracks", "chunks", "tags scored", "ROC-AUC", "PR-AUC",
              f"ROC-AUC ({len(shared)} shared tags)", f"PR-AUC ({len(shared)} shared tags)"]  # fmt: skip
    note = ""
    unscored = {p.name: json.loads((p / "metrics.json").read_text()).get(
        "not_in_model_vocabulary") for p in others if (p / "metrics.json").exists()}  # fmt: skip
    listed = "; ".join(f"{name}: {', '.join(tags)}" for name, tags in unscored.items() if tags)
    if listed:
        note = f'<p class="note">Not in the model\'s vocabulary (not scored): {html.escape(listed)}</p>'
    return "<h3>Beside other runs</h3>" + "".join(stale) + table(header, rows, "compare") + note


def per_tag_table(rows: list[dict]) -> str:
    """Sorted by ROC-AUC (best first, unscored tags last), split into page columns."""
    ordered = sorted(rows, key=lambda r: -_number(r.get("roc_auc")) if r.get("roc_auc") else 9)
    body = [[r["tag"], r.get("positives"), r.get("roc_auc"), r.get("pr_auc")] for r in ordered]
    header = ["tag", "positives", "ROC-AUC", "PR-AUC"]
    size = max(1, math.ceil(len(body) / 3)) if len(body) > 15 else len(body)
    chunks = [body[i : i + size] for i in range(0, len(body), size)] or [[]]
    return '<div class="columns">' + "".join(table(header, c, "per-tag") for c in chunks) + "</div>"


def embedding_figure(path: Path, run: Path, data: Path) -> bytes | None:
    """The embedding map of the tracks in `path` (embed's Parquet: key, tags, embedding),
    coloured by tags chosen on the whole dataset's index."""
    if not path.exists():
        return None
    import pyarrow.parquet as pq

    table = pq.read_table(path, columns=["tags", "embedding"])
    if table.num_rows < 3:
        return None
    embeddings = np.asarray(table.column("embedding").to_pylist(), dtype=np.float64)
    index = data / "index.parquet"
    reference = pq.read_table(index, columns=["tags"]).column("tags").to_pylist() if (
        index.exists()) else None  # fmt: skip
    meta = json.loads((table.schema.metadata or {}).get(b"tagtrain", b"{}"))
    title = f"{run.name}: {meta.get('layer', 'embedding')} of {table.num_rows} tracks, PCA"
    tags = table.column("tags").to_pylist()
    return figures.embedding_map(embeddings, tags, title, reference)


def evaluation_section(
    run: Path, card: dict, compare: list[Path], embedding_map: bytes | None = None
) -> str:
    vocabulary = [str(t) for t in card["vocabulary"]]
    parts = ["<h2>Evaluation (test split)</h2>"]
    metrics = run / "metrics.json"
    if metrics.exists():
        m = json.loads(metrics.read_text())
        parts.append(stale_banner(stale_checkpoint(run, m)))
        parts.append(stale_banner(stale_data(m, card)))
        parts.append(_kpis(m))
        excluded = m.get("excluded_tags") or []
        if excluded:
            parts.append(
                '<p class="note">Left out of the macro averages (no positives or no negatives): '
                + html.escape(", ".join(map(str, excluded)))
                + "</p>"
            )
    else:
        parts.append('<p class="missing">(metrics.json not found: run evaluate)</p>')
    if compare:
        parts.append(comparison_table(run, compare))
    rows = read_csv(run / "per_tag.csv")
    predictions = read_predictions(run / "predictions.parquet", vocabulary)
    pr = figures.pr_curves(*predictions, vocabulary) if predictions is not None else None
    parts.append('<div class="figures">')
    parts.append(image(figures.auc_vs_positives(rows), "per-tag AUC against positives"))
    parts.append(image(pr, "PR curves of the best and worst tags"))
    parts.append(image(embedding_map, "embedding map"))
    parts.append("</div>")
    if predictions is None:
        parts.append('<p class="note">PR curves need per-track predictions '
                     "(predictions.parquet from evaluate).</p>")  # fmt: skip
    if embedding_map is None:
        parts.append('<p class="note">The embedding map needs the test split\'s embeddings: '
                     f"python -m tagtrain embed --run RUN --split test --out RUN/{EMBEDDINGS}"
                     "</p>")  # fmt: skip
    if rows:
        parts.append(per_tag_table(rows))
    return "\n".join(parts)


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
    """One row per test set; each run's ROC-AUC, PR-AUC and drops side by side."""
    runs = list(dict.fromkeys(r["run"] for r in rows))
    sets = list(dict.fromkeys(r["deformation"] for r in rows))
    by = {(r["run"], r["deformation"]): r for r in rows}
    params = {r["deformation"]: _params(r.get("params", "")) for r in rows}
    metrics = [("roc_auc", "ROC-AUC"), ("roc_auc_drop", "drop"), ("pr_auc", "PR-AUC"),
               ("pr_auc_drop", "drop")]  # fmt: skip
    header = ["test set", "parameters", "tracks"]
    for run in runs:
        prefix = f"{run}: " if len(runs) > 1 else ""
        header += [prefix + title for _, title in metrics]
    body = []
    for name in sets:
        first = next(by[(run, name)] for run in runs if (run, name) in by)
        row = [name, params[name], first.get("tracks")]
        for run in runs:
            r = by.get((run, name), {})
            row += [r.get(key) for key, _ in metrics]
        body.append(row)
    return table(header, body, "robustness", text_columns=(1,))


def most_damaging(rows: list[dict]) -> str:
    """'Most damaging (largest ROC-AUC drop): run: set (-0.123); ...'."""
    found = []
    for label in dict.fromkeys(r["run"] for r in rows):
        drops = [(_number(r.get("roc_auc_drop")), r["deformation"]) for r in rows
                 if r["run"] == label and r["deformation"] != DEFAULT_SET]  # fmt: skip
        drops = [d for d in drops if math.isfinite(d[0])]
        if drops:
            drop, name = max(drops)
            found.append(f"{label}: {name} ({-drop:+.3f})")
    return "Most damaging (largest ROC-AUC drop): " + "; ".join(found) + "." if found else ""


def heat_maps(directory: Path, rows: list[dict], vocabulary: list[str]) -> list[str]:
    """One per-tag x deformation heat map per run of the robustness table (the trained
    run first, alt "per-tag x deformation heat map"; others name their run)."""
    runs = list(dict.fromkeys(r["run"] for r in rows))
    sets = list(dict.fromkeys(r["deformation"] for r in rows))
    out = []
    for i, label in enumerate(runs):
        drops = per_tag_drops(directory, label, sets, vocabulary)
        if drops is None:
            continue
        heat = figures.deformation_heatmap(
            drops.tags, drops.sets, -drops.drops("roc_auc"), f"{label}: per-tag ROC-AUC change"
        )
        alt = "per-tag x deformation heat map" + (f" ({label})" if i else "")
        out.append(image(heat, alt))
    return out


def robustness_section(directory: Path, run: Path, vocabulary: list[str]) -> str:
    parts = ["<h2>Robustness (MUDA deformations of the test split)</h2>"]
    table_path = directory / "robustness.csv"
    rows = read_csv(table_path if table_path.exists() else _first(directory, "*.csv") or table_path)
    if not rows:
        return "\n".join(parts + ['<p class="missing">(no robustness results found)</p>'])
    parts.extend(stale_banner(why) for why in stale_robustness(directory, run))
    parts.append(robustness_table(rows))
    parts.append('<p class="note">drop = clean minus deformed: positive is worse. '
                 f"{html.escape(most_damaging(rows))}</p>")  # fmt: skip
    heats = heat_maps(directory, rows, vocabulary)
    parts.append('<div class="figures">')
    parts.append(image_file(_first(directory, "*.png"), "robustness figure"))
    parts.extend(heats or [image(None, "per-tag x deformation heat map")])
    parts.append("</div>")
    if not heats:
        parts.append('<p class="note">The per-tag heat map needs per-track predictions of '
                     "each test set (predictions-{run}-{set}.parquet from robustness).</p>")  # fmt: skip
    return "\n".join(parts)


def stale_banner(why: str | None) -> str:
    """A warning over figures of an earlier checkpoint (also printed), or nothing."""
    if why is None:
        return ""
    print(f"warning: {why}", file=sys.stderr)
    return f'<p class="stale">Stale: {html.escape(why)}.</p>'


def commands_section(commands: Path | None) -> str:
    if commands is None or not commands.exists():
        return ""
    text = html.escape(commands.read_text())
    return f"<h2>Reproduce</h2><p>The exact commands, in order:</p><pre>{text}</pre>"


def build_report(
    run: Path,
    data: Path,
    robustness: Path | None = None,
    commands: Path | None = None,
    compare: list[Path] | None = None,
    embeddings: Path | None = None,
) -> str:
    card = json.loads((data / "dataset.json").read_text())
    vocabulary = [str(t) for t in card["vocabulary"]]
    robustness = robustness or run / "robustness"
    title = f"Tagging run: {run.name}"
    body = "\n".join(
        [
            f"<h1>{html.escape(title)}</h1>",
            dataset_section(data, card),
            training_section(run),
            evaluation_section(
                run,
                card,
                compare or [],
                embedding_figure(embeddings or run / EMBEDDINGS, run, data),
            ),  # fmt: skip
            robustness_section(robustness, run, vocabulary),
            commands_section(commands),
        ]
    )
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>{body}</body></html>\n"
    )


def run(args: argparse.Namespace) -> int:
    needed = [(args.run, "run"), (args.data / "dataset.json", "dataset card")]
    needed += [(path, "--compare run") for path in args.compare]
    for path, what in needed:
        if not path.exists():
            print(f"error: {what} not found: {path}", file=sys.stderr)
            return 2
    out = args.out or args.run / "report.html"
    page = build_report(
        args.run, args.data, args.robustness, args.commands, args.compare, args.embeddings
    )
    out.write_text(page)
    print(f"report: {out.resolve()}")
    return 0
