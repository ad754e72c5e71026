"""`python -m tagtrain robustness`: runs evaluated on the clean test split and on every
deformed copy of it under `DATA/perturbed/*/` (written by `beam_runner.py perturb`).

One table: ROC-AUC, PR-AUC and their drop from clean (clean minus deformed, so a positive
drop is a loss), per deformation and run; printed, and written as `robustness.csv` and
`robustness.json`, with `robustness.png`: each run's ROC-AUC and PR-AUC across the
deformations, its clean score drawn as a reference line (after Figure 2 of Won et al.,
"Evaluation of CNN-based automatic music tagging models", 2020).

Every set is normalised with the statistics each run trained with (see tagtrain.inference.trained_run):
the clean card's, which the perturbed cards copy.

With `--bootstrap N` (default 1000) each row also has 95% intervals of its scores and of
its drop; the drop's is a paired bootstrap (the same resampled tracks scored clean and
deformed), and `{metric}_drop_significant` says whether it excludes 0 (marked * in the
printed table). Per-track predictions of every run and set are written next to the
tables as `predictions-{run}-{set}.parquet`; from them, robustness per tag
(tagtrain.inference.robustness_tables): `robustness-per-tag.csv` / `.json`, a tag x deformation table
of every metric and its drop, and a printed list of the most affected tags.

`--pretrained NAME` adds a published model (tagtrain/pretrained/on_shards.py: its own
front end on the stored 16 kHz PCM, scored on the tags it shares with the dataset) beside
the runs, or alone with `--data` and `--out`.
"""

from __future__ import annotations

import argparse
import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipelines.core.card import CARD_NAME, card_checksum
from tagtrain.commands.evaluate import (
    add_bootstrap_argument,
    add_pretrained_arguments,
    evaluate_set,
    fmt,
    write_predictions,
)
from tagtrain.inference.metrics import METRICS, bootstrap_macro
from tagtrain.inference.robustness_tables import per_tag_drops, print_most_affected, write_per_tag
from tagtrain.inference.trained_run import (
    RunError,
    TrainedRun,
    add_run_arguments,
    check_run_arguments,
    load_run_from_args,
    open_split,
)
from tagtrain.loader import load_card
from tagtrain.loader.openers import filesystem, join_url, local_path, scheme_of

COMMAND = "robustness"
HELP = "evaluate runs on the clean test split and every perturbed copy of it"
CLEAN = "clean"
PERTURBED_DIR = "perturbed"
ROW_FIELDS = (
    "run",
    "model",
    "deformation",
    "params",
    "tracks",
    *METRICS,
    *(f"{m}_drop" for m in METRICS),
    *(f"{m}_{end}" for m in METRICS for end in ("low", "high")),
    *(f"{m}_drop_{end}" for m in METRICS for end in ("low", "high", "significant")),
)
# The figure's size, fixed so that its pixel size is known: 1200 x 450.
FIGURE_INCHES = (12.0, 4.5)
FIGURE_DPI = 100


@dataclass(frozen=True)
class TestSet:
    name: str  # CLEAN or the deformation's name
    data: str
    card: dict
    params: dict  # the deformation's parameters ({} for the clean set)


def _paper_order() -> list[str]:
    from pipelines.core.deformations import paper_set

    return [d.name for d in paper_set()]


def perturbed_dirs(root: str, options: dict | None = None) -> list[str]:
    """Locations of the perturbed sets directly under `root` (those holding a card)."""
    if scheme_of(root) in ("", "file"):
        base = Path(local_path(root))
        if not base.is_dir():
            return []
        return [str(p) for p in sorted(base.iterdir()) if (p / CARD_NAME).is_file()]
    if scheme_of(root) in ("http", "https"):
        raise RunError(f"cannot list {root} over HTTP: give a local path or a bucket URL")
    fs = filesystem(root, options)
    protocol = root.split("://", 1)[0]
    try:
        entries = fs.ls(root.rstrip("/"), detail=True)
    except FileNotFoundError:
        return []
    dirs = sorted(e["name"] for e in entries if e.get("type") == "directory")
    found = [f"{protocol}://{d.split('://', 1)[-1]}" for d in dirs]
    return [d for d in found if fs.exists(join_url(d, CARD_NAME))]


def find_sets(data: str, perturbed: str, options: dict | None = None) -> list[TestSet]:
    """The clean set, then every perturbed set under `perturbed`: the paper's eight in
    their order, then any others by name."""
    sets = [TestSet(CLEAN, data, load_card(data, options), {})]
    found = []
    for location in perturbed_dirs(perturbed, options):
        card = load_card(location, options)
        deformation = card.get("deformation") or {}
        name = deformation.get("name") or location.rstrip("/").rsplit("/", 1)[-1]
        found.append(TestSet(name, location, card, dict(deformation.get("params") or {})))
    order = {name: i for i, name in enumerate(_paper_order())}
    found.sort(key=lambda s: (order.get(s.name, len(order)), s.name))
    check_made_from(sets[0], found, perturbed)
    return sets + found


def check_made_from(clean: TestSet, perturbed_sets: list[TestSet], perturbed: str) -> None:
    """RunError (one line) when a perturbed set was made from another version of the clean
    dataset (its card records the source card's sha256): its drops would measure the
    change of audio, labels or features, not the deformation. Sets made before the
    checksum was recorded cannot be checked."""
    made_from = {s.name: (s.card.get("source") or {}).get("card_sha256") for s in perturbed_sets}
    current = card_checksum(clean.card)
    stale = [name for name, digest in made_from.items() if digest not in (None, current)]
    if stale:
        raise RunError(
            f"{perturbed}: {', '.join(stale)} made from another version of {clean.data} "
            "(its card changed since): run perturb again with --force"
        )


def run_labels(runs: list[TrainedRun]) -> list[str]:
    """Short distinct names: the directory name, with its parent when two share one."""
    labels = [r.name for r in runs]
    for i, r in enumerate(runs):
        if labels.count(r.name) > 1:
            labels[i] = "/".join(r.location.rstrip("/").rsplit("/", 2)[-2:])
    return [label if labels.count(label) == 1 else f"{label}#{i}" for i, label in enumerate(labels)]


def robustness_rows(
    runs: list[TrainedRun], sets: list[TestSet], split: str, args: argparse.Namespace,
    out_dir: Path | None = None,
) -> list[dict]:  # fmt: skip
    """One row per run and set: every metric, its drop from clean, and with --bootstrap
    95% intervals of the score and of the paired drop (the same tracks resampled on both
    sets), a drop being significant when its interval excludes 0."""
    rows = []
    for run, label in zip(runs, run_labels(runs)):
        clean = None
        for test_set in sets:
            evaluation = evaluate_set(
                run, open_split(run, test_set.data, split, test_set.card), run_args(run, args)
            )
            if out_dir is not None:
                write_predictions(
                    evaluation, out_dir / f"predictions-{label}-{test_set.name}.parquet"
                )
            summary = evaluation.summary()
            if clean is None:
                clean = evaluation
            row = {
                "run": label, "model": run.model_name, "deformation": test_set.name,
                "params": json.dumps(test_set.params, sort_keys=True),
                "tracks": evaluation.tracks,
            }  # fmt: skip
            for m in METRICS:
                row[m] = summary[m]
                row[f"{m}_drop"] = _drop(clean.summary()[m], summary[m])
                row.update(
                    {
                        f"{m}_{end}": evaluation.intervals.get(m, {}).get(end)
                        for end in ("low", "high")
                    }
                )
            row.update(paired_drops(clean, evaluation, args.bootstrap))
            rows.append(row)
            scores = "  ".join(f"{METRICS[m].label} {fmt(row[m])}" for m in METRICS)
            print(f"  {label} / {test_set.name}: {scores}", flush=True)
    return rows


def run_args(run: TrainedRun, args: argparse.Namespace) -> argparse.Namespace:
    """A published model's chunks per track are --pretrained-chunks (default --chunks)."""
    chunks = getattr(args, "pretrained_chunks", None)
    if run.label_columns is None or chunks is None:
        return args
    return argparse.Namespace(**{**vars(args), "chunks": chunks})


def paired_drops(clean, deformed, resamples: int) -> dict:
    """Bootstrap intervals of clean minus deformed over the tracks both sets hold."""
    empty = {f"{m}_drop_{e}": None for m in METRICS for e in ("low", "high", "significant")}
    if not resamples or clean is deformed:
        return empty
    where = {k: i for i, k in enumerate(deformed.keys)}
    common = [(i, where[k]) for i, k in enumerate(clean.keys) if k in where]
    if not common:
        return empty
    a, b = (np.array(ix) for ix in zip(*common))
    boot = bootstrap_macro(clean.labels[a], clean.probs[a], resamples, y_other=deformed.probs[b])
    out = {}
    for m, interval in boot.items():
        out[f"{m}_drop_low"] = interval["diff_low"]
        out[f"{m}_drop_high"] = interval["diff_high"]
        out[f"{m}_drop_significant"] = interval["significant"]
    return out


def _drop(clean: float | None, value: float | None) -> float | None:
    return None if clean is None or value is None else clean - value


# --- outputs ---------------------------------------------------------------------------


def write_tables(rows: list[dict], report: dict, out_dir: Path) -> tuple[Path, Path]:
    csv_path, json_path = out_dir / "robustness.csv", out_dir / "robustness.json"
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, ROW_FIELDS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if row[k] is None else row[k] for k in ROW_FIELDS})
    json_path.write_text(json.dumps({**report, "rows": rows}, indent=2) + "\n")
    return csv_path, json_path


def plot(rows: list[dict], labels: list[str], set_names: list[str], path: Path) -> Path:
    """ROC-AUC and PR-AUC per deformation, one marker series per run (side by side within
    each deformation); each run's clean score is a dotted line, and a stem joins it to the
    deformed score, so the stem's length is the drop."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=FIGURE_INCHES)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    spread = 0.6 / max(1, len(labels))
    for ax, metric, title in zip(axes, ("roc_auc", "pr_auc"), ("ROC-AUC", "PR-AUC")):
        for i, label in enumerate(labels):
            colour = colours[i % len(colours)]
            by_set = {r["deformation"]: r[metric] for r in rows if r["run"] == label}
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
        ax.set(title=f"{title} under deformations (dotted: clean)", ylabel=f"macro {title}")
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=FIGURE_DPI)
    plt.close(fig)
    return path


def print_table(rows: list[dict], labels: list[str], set_names: list[str], split: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"robustness on the {split} split (change from clean in brackets; * = "
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
                    cells.append(fmt(row[metric]))
                else:
                    drop = row[f"{metric}_drop"]
                    change = "-" if drop is None else f"{-drop:+.4f}"
                    if row.get(f"{metric}_drop_significant"):
                        change += "*"
                    cells.append(f"{fmt(row[metric])} ({change})")
        table.add_row(name, *cells)
    Console(highlight=False, width=max(100, 30 + 36 * len(labels))).print(table)


def print_most_damaging(rows: list[dict], labels: list[str]) -> None:
    """Per run, the deformation with the largest macro ROC-AUC drop."""
    for label in labels:
        drops = [r for r in rows if r["run"] == label and r["roc_auc_drop"] is not None]
        drops = [r for r in drops if r["deformation"] != CLEAN]
        if drops:
            worst = max(drops, key=lambda r: r["roc_auc_drop"])
            print(f"most damaging deformation for {label}: {worst['deformation']} "
                  f"(ROC-AUC {-worst['roc_auc_drop']:+.4f})")  # fmt: skip


# --- command line ------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--run", action="append", default=[], help="run directory (repeat to compare runs)"
    )
    add_pretrained_arguments(parser, repeat=True)
    parser.add_argument(
        "--pretrained-chunks", type=int, default=None, metavar="N",
        help="chunks per track for the --pretrained models (default: --chunks); musicnn "
        "costs ~50 ms of CPU per chunk",
    )  # fmt: skip
    parser.add_argument(
        "--data", default=None, help="the clean dataset holding perturbed/ (default: first run's)"
    )
    parser.add_argument(
        "--perturbed",
        default=None,
        help=f"folder holding one dataset per deformation (default DATA/{PERTURBED_DIR})",
    )
    parser.add_argument("--split", default="test", help="the split that was perturbed (test)")
    parser.add_argument("--out", default=None, help="output directory (default RUN/robustness)")
    add_bootstrap_argument(parser)
    add_run_arguments(parser)


def load_runs(args: argparse.Namespace) -> tuple[list[TrainedRun], str, list[TestSet]]:
    """The runs, then the published models (scored on the tags they share with the
    dataset), the clean dataset and its test sets."""
    if not args.run and not args.pretrained:
        raise RunError("the following arguments are required: --run (or --pretrained NAME)")
    runs = [load_run_from_args(args, r) for r in args.run]
    data = args.data or (runs[0].config.data if runs else None)
    if not data:
        raise RunError("--pretrained without --run needs --data DATASET")
    options = runs[0].config.effective_storage_options() if runs else {}
    perturbed = args.perturbed or join_url(data, PERTURBED_DIR)
    sets = find_sets(data, perturbed, options)
    if len(sets) == 1:
        raise RunError(
            f"no perturbed sets under {perturbed}: run "
            f"`python beam_runner.py perturb --dataset {data} --split {args.split}`"
        )
    if args.pretrained:
        from tagtrain.pretrained.on_shards import pretrained_run

        for name in args.pretrained:
            published = pretrained_run(name, data, sets[0].card, args.device)
            runs.append(published)
            print(f"{name}: scored on the {len(published.vocabulary)} tags it shares with "
                  f"the dataset; not scored: {', '.join(published.unscored_tags) or 'none'}")  # fmt: skip
    return runs, data, sets


def run(args: argparse.Namespace) -> int:
    check_run_arguments(args)
    if args.pretrained_chunks is not None and args.pretrained_chunks < 1:
        raise RunError("--pretrained-chunks must be at least 1")
    runs, data, sets = load_runs(args)
    perturbed = args.perturbed or join_url(data, PERTURBED_DIR)
    if not args.out and not args.run:
        raise RunError("--pretrained without --run needs --out DIR")
    out_dir = Path(args.out) if args.out else runs[0].dir / "robustness"
    out_dir.mkdir(parents=True, exist_ok=True)
    print(f"{len(runs)} run(s) x {len(sets)} sets ({args.split} split of {data})", flush=True)
    rows = robustness_rows(runs, sets, args.split, args, out_dir)
    labels = run_labels(runs)
    set_names = [s.name for s in sets]
    report = {
        "data": data,
        "split": args.split,
        "chunks": args.chunks,
        "runs": [
            {
                "label": label,
                "dir": r.location,
                "model": r.model_name,
                "checkpoint": r.checkpoint.name,
                "checkpoint_sha256": r.checkpoint_sha256,
                "chunks": run_args(r, args).chunks,
                "tags": r.vocabulary,
                "not_in_model_vocabulary": r.unscored_tags,
            }
            for label, r in zip(labels, runs)
        ],
        "perturbed": perturbed,
        "sets": [{"name": s.name, "data": s.data, "params": s.params} for s in sets],
    }
    csv_path, json_path = write_tables(rows, report, out_dir)
    figure = plot(rows, labels, set_names, out_dir / "robustness.png")
    print_table(rows, labels, set_names, args.split)
    print_most_damaging(rows, labels)
    tag_tables = [per_tag_drops(out_dir, label, set_names) for label in labels]
    tag_tables = [t for t in tag_tables if t is not None]
    tag_paths = write_per_tag(tag_tables, out_dir)
    print_most_affected(tag_tables)
    missing = [n for n in _paper_order() if n not in set_names]
    if missing:
        print(f"note: the paper's protocol also has {', '.join(missing)} (not found)")
    if not args.out:
        runs[0].publish(out_dir)
        csv_path, json_path, figure = (
            runs[0].store.url(f"robustness/{p.name}") if runs[0].store else p
            for p in (csv_path, json_path, figure)
        )
    print(f"wrote {csv_path}, {json_path}")
    print(f"per tag: {tag_paths[0]}, {tag_paths[1]}")
    print(f"figure: {figure}")
    return 0
