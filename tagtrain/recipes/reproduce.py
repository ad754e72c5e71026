"""`tagtrain reproduce PAPER`: the recipes of one paper run in sequence, each evaluated on
the test split with its recipe's protocol, and the ledger of the paper's figures beside
ours (ledger.csv, ledger.md and the report's HTML section, ledger.html).

The plan (`plan`) is a list of steps, each the argv of a normal training command
(train, student or train-patchout with `--recipe NAME --out DIR/NAME`): running it again
resumes it (`--resume` once the run has a config.json), so `reproduce` itself resumes,
and `--print-commands` hands the same lines to a cluster scheduler. The commands layer
runs the steps (it owns the commands); this module plans, evaluates and writes the ledger.
"""

from __future__ import annotations

import csv
import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from pipelines.core.errors import UserError
from tagtrain.recipes import Recipe, load_recipe, recipe_names

LEDGER_FIELDS = (
    "paper", "recipe", "dataset", "table", "row", "metric", "reported", "reported_as_printed",
    "ours", "low", "high", "difference", "flagged", "tracks", "chunks", "run", "note",
)  # fmt: skip
LEDGER_METRICS = ("roc_auc", "pr_auc")


@dataclass
class Step:
    recipe: Recipe
    run_dir: Path
    argv: list[str] = field(default_factory=list)

    def command_line(self) -> str:
        return shlex.join(["python", "-m", "tagtrain", *self.argv])


def papers() -> dict[str, list[str]]:
    """Each paper's recipes (by the recipes' name prefix: won2020, pons2018, maest, ...)."""
    out: dict[str, list[str]] = {}
    for name in recipe_names():
        out.setdefault(name.split("_")[0], []).append(name)
    return out


def _teacher(recipe: Recipe, names: list[str]) -> str | None:
    """The recipe whose run teaches `recipe`'s: a student learns from its paper's
    supervised (train) recipe; a teacher-student patchout model from the same model
    without `_ts` (maest_30s_ts from maest_30s)."""
    if recipe.command == "student":
        teachers = [n for n in names if load_recipe(n).command == "train"]
        return teachers[0] if len(teachers) == 1 else None
    if recipe.model.endswith("_ts"):
        name = recipe.name.removesuffix("_ts")
        return name if name in names else None
    return None


def plan(
    paper: str, data: str, out: str | Path, *, only: list[str] = (), max_minutes: float = 0,
    config: str = "", init: str = "", device: str = "",
) -> list[Step]:  # fmt: skip
    """The steps that reproduce `paper`'s recipes (all, or `only` these), teachers first."""
    known = papers()
    if paper not in known:
        raise UserError(f"unknown paper {paper!r}; known: {', '.join(sorted(known))}")
    names = known[paper]
    bad = [n for n in only if n not in names]
    if bad:
        raise UserError(f"--only {bad[0]}: not a recipe of {paper} ({', '.join(names)})")
    out = Path(out)
    recipes = [load_recipe(n) for n in names if not only or n in only]
    # A run that teaches another goes first: the order is (taught?, name).
    recipes.sort(key=lambda r: (_teacher(r, names) is not None, r.name))
    steps = []
    for recipe in recipes:
        run_dir = out / recipe.name
        argv = [recipe.cli_command, "--recipe", recipe.name, "--data", data, "--out", str(run_dir)]
        if max_minutes:
            argv += ["--max-minutes", f"{max_minutes:g}"]
        if config:
            argv += ["--config", config]
        if device:
            argv += ["--device", device]
        teacher = _teacher(recipe, names)
        if teacher:
            argv += ["--teacher", str(out / teacher)]
        if recipe.patchout.get("init_checkpoint") == "required":
            if not init:
                raise UserError(
                    f"recipe {recipe.name} starts from PaSST/MAEST weights: give --init FILE"
                )
            argv += ["--init", init]
        if (run_dir / "config.json").is_file():
            argv.append("--resume")
        steps.append(Step(recipe, run_dir, argv))
    return steps


def evaluation_options(
    step: Step, *, bootstrap: int = 1000, device: str = "auto", workers: int = 2
):
    """How `step`'s run is evaluated: its test split, the recipe's `evaluate` section over
    the command's bootstrap, device and workers; chunks unset unless the recipe sets them,
    so the run's own protocol decides (eval_chunks, else val_chunks; eval_window)."""
    from tagtrain.inference.evaluation import EvaluateOptions

    settings = {"bootstrap": bootstrap, "device": device, "workers": workers, "chunks": None}
    return EvaluateOptions(run=str(step.run_dir), **{**settings, **step.recipe.evaluate})


def evaluate_step(step: Step, **settings) -> dict:
    """Evaluate the run of `step` (`evaluation_options`); its metrics summary."""
    from tagtrain.inference.evaluation import evaluate
    from tagtrain.run.directory import RunDir

    evaluate(evaluation_options(step, **settings))
    # The test split of the run's own dataset: metrics.json in the run directory.
    return json.loads(RunDir(str(step.run_dir)).evaluation("")[0].read_text())


def ledger_rows(recipe: Recipe, summary: dict | None, note: str = "") -> list[dict]:
    """One row per metric: the paper's figure (as a fraction; as printed beside it), ours
    with its bootstrap 95% interval, the difference, and whether the interval excludes
    the paper's figure."""
    rep = recipe.reported
    rows = []
    for metric in LEDGER_METRICS:
        paper = rep.fraction(metric) if rep else None
        ours = (summary or {}).get(metric)
        interval = ((summary or {}).get("bootstrap") or {}).get(metric) or {}
        low, high = interval.get("low"), interval.get("high")
        flagged = (
            paper is not None and low is not None and high is not None
            and not low <= paper <= high
        )  # fmt: skip
        rows.append({
            "paper": recipe.paper, "recipe": recipe.name,
            "dataset": rep.dataset if rep else "", "table": rep.table if rep else "",
            "row": rep.row if rep else "", "metric": metric, "reported": paper,
            "reported_as_printed": getattr(rep, metric) if rep else None, "ours": ours,
            "low": low, "high": high,
            "difference": None if ours is None or paper is None else ours - paper,
            "flagged": flagged, "tracks": (summary or {}).get("tracks"),
            "chunks": (summary or {}).get("chunks"), "run": (summary or {}).get("run", ""),
            "note": note or (rep.note if rep else ""),
        })  # fmt: skip
    return rows


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def write_ledger(rows: list[dict], out: str | Path) -> list[Path]:
    """ledger.csv, ledger.md and ledger.html (the report's section) in `out`."""
    from tagtrain.reporting.ledger_section import ledger_markdown, ledger_section_html

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "ledger.csv"
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, LEDGER_FIELDS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _cell(row.get(k)) for k in LEDGER_FIELDS})
    md, page = out / "ledger.md", out / "ledger.html"
    md.write_text(ledger_markdown(rows))
    page.write_text(ledger_section_html(rows))
    return [path, md, page]
