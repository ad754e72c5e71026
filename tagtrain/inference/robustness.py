"""`robustness`: runs evaluated on the clean test split and on every deformed copy of it
under `DATA/perturbed/*/` (written by `beam_runner.py perturb`).

One table: every registered metric (tagtrain.inference.metrics) and its drop from clean
(clean minus deformed, so a positive drop is a loss for a higher-is-better metric), per
deformation and run; printed, and written as `robustness.csv` and `robustness.json`, with
`robustness.png` (tagtrain.inference.robustness_report).

Every set is normalised with the statistics each run trained with (see
tagtrain.inference.trained_run): the clean card's, which the perturbed cards copy.

With `--bootstrap N` (default 1000) each row also has 95% intervals of its scores and of
its drop; the drop's is a paired bootstrap (the same resampled tracks scored clean and
deformed), and `{metric}_drop_significant` says whether it excludes 0 (marked * in the
printed table). Per-track predictions of every run and set are written next to the
tables as `predictions-{run}-{set}.parquet`; from them, robustness per tag
(tagtrain.inference.robustness_tables): `robustness-per-tag.csv` / `.json`, a tag x
deformation table of every metric and its drop, and a printed list of the most affected
tags.

`--pretrained NAME` adds a published model (tagtrain/pretrained/on_shards.py: its own
front end on the stored 16 kHz PCM, scored on the tags it shares with the dataset) beside
the runs, or alone with `--data` and `--out`; the command hands this room the function
that makes one (`published`), as the pretrained room sits above this one.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipelines.core.card import CARD_NAME, card_checksum
from pipelines.core.flags import setting
from pipelines.core.storage import HTTP_SCHEMES, LOCAL_SCHEMES
from tagtrain.inference.evaluation import Bootstrap, evaluate_set, fmt, write_predictions
from tagtrain.inference.metrics import METRICS, bootstrap_macro
from tagtrain.inference.robustness_report import (
    print_most_damaging,
    print_table,
    write_figure,
    write_tables,
)
from tagtrain.inference.robustness_tables import (
    CLEAN,
    per_tag_drops,
    print_most_affected,
    write_per_tag,
)
from tagtrain.inference.trained_run import (
    EvalOptions,
    RunError,
    TrainedRun,
    check_run_arguments,
    load_run_from_args,
    open_split,
)
from tagtrain.loader import load_card
from tagtrain.loader.openers import filesystem, join_url, local_path, scheme_of

PERTURBED_DIR = "perturbed"
# (name, data, card, device) -> a published model as a TrainedRun
# (tagtrain.pretrained.on_shards.pretrained_run).
PublishedRun = Callable[..., TrainedRun]


@dataclass
class RobustnessOptions(Bootstrap, EvalOptions):
    """`robustness`'s settings (`--pretrained` is the command's: see PublishedRun)."""

    run: list[str] = setting([], "run directory (repeat to compare runs)", repeat=True)
    pretrained_chunks: int | None = setting(
        None, "chunks per track for the --pretrained models (default: --chunks); musicnn "
        "costs ~50 ms of CPU per chunk", metavar="N",
    )  # fmt: skip
    data: str | None = setting(
        None, "the clean dataset holding perturbed/ (default: first run's)"
    )  # fmt: skip
    perturbed: str | None = setting(
        None, f"folder holding one dataset per deformation (default DATA/{PERTURBED_DIR})"
    )  # fmt: skip
    split: str = setting("test", "the split that was perturbed")
    out: str | None = setting(None, "output directory (default RUN/robustness)")
    pretrained: list[str] = dataclasses.field(default_factory=list)  # published models' names

    def check(self) -> None:
        check_run_arguments(self)
        if self.bootstrap < 0:
            raise RunError("--bootstrap must not be negative")
        if self.pretrained_chunks is not None and self.pretrained_chunks < 1:
            raise RunError("--pretrained-chunks must be at least 1")


@dataclass(frozen=True)
class TestSet:
    name: str  # CLEAN or the deformation's name
    data: str
    card: dict
    params: dict  # the deformation's parameters ({} for the clean set)


def paper_order() -> list[str]:
    from pipelines.core.deformations import paper_set

    return [d.name for d in paper_set()]


def perturbed_dirs(root: str, options: dict | None = None) -> list[str]:
    """Locations of the perturbed sets directly under `root` (those holding a card)."""
    if scheme_of(root) in LOCAL_SCHEMES:
        base = Path(local_path(root))
        if not base.is_dir():
            return []
        return [str(p) for p in sorted(base.iterdir()) if (p / CARD_NAME).is_file()]
    if scheme_of(root) in HTTP_SCHEMES:
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
    order = {name: i for i, name in enumerate(paper_order())}
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


def run_options(run: TrainedRun, options: RobustnessOptions) -> RobustnessOptions:
    """A published model's chunks per track are --pretrained-chunks (default --chunks)."""
    if run.label_columns is None or options.pretrained_chunks is None:
        return options
    return dataclasses.replace(options, chunks=options.pretrained_chunks)


def robustness_rows(
    runs: list[TrainedRun], sets: list[TestSet], options: RobustnessOptions,
    out_dir: Path | None = None,
) -> list[dict]:  # fmt: skip
    """One row per run and set: every metric, its drop from clean, and with --bootstrap
    95% intervals of the score and of the paired drop (the same tracks resampled on both
    sets), a drop being significant when its interval excludes 0."""
    rows = []
    for run, label in zip(runs, run_labels(runs)):
        clean = None
        for test_set in sets:
            eval_set = open_split(run, test_set.data, options.split, test_set.card)
            evaluation = evaluate_set(run, eval_set, run_options(run, options))
            if out_dir is not None:
                path = out_dir / f"predictions-{label}-{test_set.name}.parquet"
                write_predictions(evaluation, path)
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
                for end in ("low", "high"):
                    row[f"{m}_{end}"] = evaluation.intervals.get(m, {}).get(end)
            row.update(paired_drops(clean, evaluation, options.bootstrap))
            rows.append(row)
            scores = "  ".join(f"{METRICS[m].label} {fmt(row[m])}" for m in METRICS)
            print(f"  {label} / {test_set.name}: {scores}", flush=True)
    return rows


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


def load_runs(
    options: RobustnessOptions, published: PublishedRun | None = None
) -> tuple[list[TrainedRun], str, list[TestSet]]:
    """The runs, then the published models (scored on the tags they share with the
    dataset), the clean dataset and its test sets."""
    if not options.run and not options.pretrained:
        raise RunError("the following arguments are required: --run (or --pretrained NAME)")
    runs = [load_run_from_args(options, r) for r in options.run]
    data = options.data or (runs[0].config.data if runs else None)
    if not data:
        raise RunError("--pretrained without --run needs --data DATASET")
    storage = runs[0].config.effective_storage_options() if runs else {}
    perturbed = options.perturbed or join_url(data, PERTURBED_DIR)
    sets = find_sets(data, perturbed, storage)
    if len(sets) == 1:
        raise RunError(
            f"no perturbed sets under {perturbed}: run "
            f"`python beam_runner.py perturb --dataset {data} --split {options.split}`"
        )
    if options.pretrained and published is None:
        raise RunError("--pretrained: this build has no published models")
    for name in options.pretrained:
        model = published(name, data, sets[0].card, options.device)
        runs.append(model)
        print(f"{name}: scored on the {len(model.vocabulary)} tags it shares with "
              f"the dataset; not scored: {', '.join(model.unscored_tags) or 'none'}")  # fmt: skip
    return runs, data, sets


def robustness(options: RobustnessOptions, published: PublishedRun | None = None) -> int:
    """Score every run (and `published(...)` model of --pretrained) on every test set;
    write, print and publish the tables, the figure and the per-tag tables."""
    options.check()
    runs, data, sets = load_runs(options, published)
    if not options.out and not options.run:
        raise RunError("--pretrained without --run needs --out DIR")
    out_dir = Path(options.out) if options.out else runs[0].dir / "robustness"
    out_dir.mkdir(parents=True, exist_ok=True)
    print(f"{len(runs)} run(s) x {len(sets)} sets ({options.split} split of {data})", flush=True)
    rows = robustness_rows(runs, sets, options, out_dir)
    labels = run_labels(runs)
    set_names = [s.name for s in sets]
    report = {
        "data": data,
        "split": options.split,
        "chunks": options.chunks,
        "runs": [
            {
                "label": label,
                "dir": r.location,
                "model": r.model_name,
                "checkpoint": r.checkpoint.name,
                "checkpoint_sha256": r.checkpoint_sha256,
                "chunks": run_options(r, options).chunks,
                "tags": r.vocabulary,
                "not_in_model_vocabulary": r.unscored_tags,
            }
            for label, r in zip(labels, runs)
        ],
        "perturbed": options.perturbed or join_url(data, PERTURBED_DIR),
        "sets": [{"name": s.name, "data": s.data, "params": s.params} for s in sets],
    }
    csv_path, json_path = write_tables(rows, report, out_dir)
    figure = write_figure(rows, labels, set_names, out_dir / "robustness.png")
    print_table(rows, labels, set_names, options.split)
    print_most_damaging(rows, labels)
    tag_tables = [per_tag_drops(out_dir, label, set_names) for label in labels]
    tag_tables = [t for t in tag_tables if t is not None]
    tag_paths = write_per_tag(tag_tables, out_dir)
    print_most_affected(tag_tables)
    missing = [n for n in paper_order() if n not in set_names]
    if missing:
        print(f"note: the paper's protocol also has {', '.join(missing)} (not found)")
    if not options.out:
        runs[0].publish(out_dir)
        csv_path, json_path, figure = (
            runs[0].store.url(f"robustness/{p.name}") if runs[0].store else p
            for p in (csv_path, json_path, figure)
        )
    print(f"wrote {csv_path}, {json_path}")
    print(f"per tag: {tag_paths[0]}, {tag_paths[1]}")
    print(f"figure: {figure}")
    return 0
