"""Named recipes: one YAML file per paper setting, in this package (`python -m tagtrain
recipes` lists them with the paper's figures; docs/FIDELITY.md's per-recipe tables are
generated from them, `tagtrain.recipes.fidelity`).

A recipe is a typed object, and every key in it changes the run or says what the paper
reports. Its sections:

    cite:      the paper, table and row it reproduces (text)
    command:   train | student | patchout (which trainer runs it)
    train:     RunConfig fields (tagtrain.run.config): the run's saved config.json
    student:   StudentConfig fields (noisy-student recipes): the run's student options
    patchout:  PatchoutOptions fields (MAEST recipes): the run's patchout options
    evaluate:  EvaluateOptions fields (tagtrain.inference.evaluation) that `reproduce`
               evaluates the run with (the chunk count is the run's `eval_chunks`)
    prepare:   overrides of the features prepare computes: `features` (the stored
               members, e.g. "mel,pcm") and FeatureConfig fields; the rest come from the
               model's InputSpec, so features and model cannot disagree
    reported:  the paper's figures for this row, as printed (`Reported`)
    differs:   where we depart from the paper: [{paper: its words, ours: what we do,
               why: the reason}] (docs/FIDELITY.md's tables)

A key that no dataclass field reads is refused in one line ("recipe maest_10s:
protocol.mask_p is not implemented"), so a recipe can only declare what happens.
`load_recipe(name)` takes a shipped name or the path of a user's YAML, validated the same
way, and returns a `Recipe`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from pipelines.core.errors import UserError
from pipelines.core.features import FeatureConfig

RECIPE_DIR = Path(__file__).resolve().parent
COMMANDS = ("train", "student", "patchout")
# The stored members, then every feature field (declared once, in FeatureConfig).
PREPARE_KEYS = ("features", *FeatureConfig.field_names())
CLI_COMMAND = {"train": "train", "student": "student", "patchout": "train-patchout"}


class RecipeError(UserError):
    """An unknown or invalid recipe; one line."""


@dataclass(frozen=True)
class Reported:
    """The paper's figures for the recipe's row, as printed (percent or fraction: the
    ledger reads 91.8 and 0.918 alike); None where the paper prints none."""

    dataset: str
    table: str
    row: str = ""
    roc_auc: float | None = None
    pr_auc: float | None = None
    note: str = ""

    def fraction(self, metric: str) -> float | None:
        value = getattr(self, metric)
        return None if value is None else (value / 100 if value > 1 else float(value))


@dataclass(frozen=True)
class Differs:
    """One departure from the paper: its words, what we do, and why."""

    paper: str
    ours: str
    why: str


@dataclass(frozen=True)
class Recipe:
    name: str
    source: str
    cite: str
    command: str
    train: dict
    student: dict = field(default_factory=dict)
    patchout: dict = field(default_factory=dict)
    evaluate: dict = field(default_factory=dict)
    prepare: dict = field(default_factory=dict)
    reported: Reported | None = None
    differs: tuple[Differs, ...] = ()

    @property
    def paper(self) -> str:
        """The paper a shipped recipe belongs to: its name's prefix (won2020, maest, ...)."""
        return self.name.split("_")[0]

    @property
    def model(self) -> str:
        return self.train["model"]

    @property
    def cli_command(self) -> str:
        return CLI_COMMAND[self.command]

    def options(self) -> dict:
        """The section of the command's own options (student or patchout; train: {})."""
        return {"student": self.student, "patchout": self.patchout}.get(self.command, {})

    def __getitem__(self, key: str):
        # beam_runner and older callers read a recipe as a mapping (recipe["prepare"]).
        return getattr(self, key)


def recipe_names() -> list[str]:
    return sorted(p.stem for p in RECIPE_DIR.glob("*.yaml"))


def _read(name: str) -> tuple[dict, str]:
    import yaml

    path = Path(name)
    if not (path.suffix in (".yaml", ".yml") and path.is_file()):
        path = RECIPE_DIR / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(recipe_names())
        raise RecipeError(f"unknown recipe {name!r}; known: {known}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise RecipeError(f"{path}: invalid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe is a mapping of sections")
    return data, str(path)


def _section_classes() -> dict:
    from tagtrain.inference.evaluation import EvaluateOptions
    from tagtrain.run.config import RunConfig
    from tagtrain.training.patchout import PatchoutOptions
    from tagtrain.training.student import StudentConfig

    return {
        "train": RunConfig,
        "student": StudentConfig,
        "patchout": PatchoutOptions,
        "evaluate": EvaluateOptions,
    }


# evaluate keys reproduce decides itself (the run, its data, the test split).
_EVALUATE_FIXED = ("run", "pretrained", "data", "out", "split")
SECTIONS = ("cite", "command", "train", "student", "patchout", "evaluate", "prepare")
SECTIONS += ("reported", "differs")


class _Checker:
    def __init__(self, name: str):
        self.name = name

    def fail(self, message: str):
        raise RecipeError(f"recipe {self.name}: {message}")

    def not_implemented(self, section: str, keys) -> None:
        keys = sorted(keys)
        if keys:
            self.fail(f"{section}.{keys[0]} is not implemented")

    def mapping(self, section: str, values) -> dict:
        if values is None:
            return {}
        if not isinstance(values, dict):
            self.fail(f"{section} must be a mapping")
        return dict(values)

    def fields(self, section: str, values, cls, exclude=()) -> dict:
        values = self.mapping(section, values)
        known = {f.name for f in dataclasses.fields(cls)} - set(exclude)
        self.not_implemented(section, set(values) - known)
        return values


def _check_run_config(check: _Checker, train: dict) -> None:
    """The train section must make a valid RunConfig (types and values), given data."""
    from tagtrain.run.config import ConfigError, RunConfig, apply

    try:
        apply(RunConfig(), {"data": "-", **train}, "train").validate()
    except ConfigError as exc:
        check.fail(str(exc))


def model_prepare(model: str) -> dict:
    """What prepare must store for `model`: {"features": its members, **the FeatureConfig
    fields its input depends on} (from its InputSpec; the others stay prepare's defaults)."""
    from tagtrain.models.registry import get_entry

    spec = get_entry(model).input_spec
    stored = "pcm" if spec.kind == "pcm" else f"{spec.kind},pcm"
    return {"features": stored, **spec.card_requirements()}


def _check_prepare(check: _Checker, model: str, overrides) -> dict:
    overrides = check.mapping("prepare", overrides)
    check.not_implemented("prepare", set(overrides) - set(PREPARE_KEYS))
    prepare = {**model_prepare(model), **overrides}
    try:
        FeatureConfig.from_fields({k: v for k, v in prepare.items() if k != "features"})
    except (TypeError, ValueError) as exc:
        check.fail(f"prepare: {exc}")
    return prepare


def _typed(check: _Checker, section: str, cls, values: dict):
    check.not_implemented(section, set(values) - {f.name for f in dataclasses.fields(cls)})
    try:
        return cls(**values)
    except TypeError as exc:
        check.fail(f"{section}: {exc}")


def _check_reported(check: _Checker, values) -> Reported | None:
    if values is None:
        return None
    reported = _typed(check, "reported", Reported, check.mapping("reported", values))
    for metric in ("roc_auc", "pr_auc"):
        value = getattr(reported, metric)
        if value is not None and (isinstance(value, bool) or not 0 <= value <= 100):
            check.fail(f"reported.{metric} must be a figure as printed (0-100) or null")
    return reported


def _check_differs(check: _Checker, values) -> tuple[Differs, ...]:
    if values is None:
        return ()
    if not isinstance(values, list):
        check.fail("differs must be a list of {paper, ours, why}")
    out = []
    for i, entry in enumerate(values):
        entry = check.mapping(f"differs[{i}]", entry)
        item = _typed(check, f"differs[{i}]", Differs, entry)
        if not all(isinstance(v, str) and v.strip() for v in dataclasses.astuple(item)):
            check.fail(f"differs[{i}]: paper, ours and why are each a non-empty text")
        out.append(item)
    return tuple(out)


def load_recipe(name: str) -> Recipe:
    """The recipe `name` (a shipped name or a YAML path), validated; see the module doc."""
    from tagtrain.models.registry import get_entry

    data, source = _read(name)
    check = _Checker(Path(source).stem)
    for section in sorted(set(data) - set(SECTIONS)):
        value = data[section]
        if isinstance(value, dict) and value:
            check.not_implemented(section, value)
        check.fail(f"{section} is not implemented")
    if data.get("command") not in COMMANDS:
        check.fail(f"command must be one of {', '.join(COMMANDS)}")
    if not isinstance(data.get("cite"), str) or not data["cite"].strip():
        check.fail("cite (paper, table, row) is required")
    classes = _section_classes()
    sections = {
        s: check.fields(s, data.get(s), cls, _EVALUATE_FIXED if s == "evaluate" else ())
        for s, cls in classes.items()
    }
    for own in ("student", "patchout"):
        if sections[own] and data["command"] != own:
            check.fail(f"a {data['command']} recipe has no {own} section")
    _check_run_config(check, sections["train"])
    model = sections["train"].get("model")
    try:
        get_entry(model or "")
    except KeyError:
        check.fail(f"train.model {model!r} is not a registered model")
    return Recipe(
        name=check.name,
        source=source,
        cite=data["cite"],
        command=data["command"],
        **sections,
        prepare=_check_prepare(check, model, data.get("prepare")),
        reported=_check_reported(check, data.get("reported")),
        differs=_check_differs(check, data.get("differs")),
    )


def recipe_settings(name: str, command: str) -> tuple[dict, dict]:
    """The settings recipe `name` gives a `command` run: (RunConfig fields, the section of
    that command's own options: `student` or `patchout`, else {})."""
    recipe = load_recipe(name)
    if recipe.cli_command != command:
        raise RecipeError(
            f"recipe {recipe.name} is for `python -m tagtrain {recipe.cli_command}`, not {command}"
        )
    return {**recipe.train, "recipe": recipe.name}, dict(recipe.options())


def _figure(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


def recipes_table() -> str:
    """One line per recipe: name, command, model, the paper's figures (ROC-AUC / PR-AUC,
    as printed, on its dataset and table), then the cite."""
    rows = [("name", "command", "model", "paper ROC/PR", "on", "cite")]
    for name in recipe_names():
        r = load_recipe(name)
        rep = r.reported
        figures = f"{_figure(rep.roc_auc)} / {_figure(rep.pr_auc)}" if rep else "-"
        where = f"{rep.dataset}, {rep.table}" if rep else "-"
        rows.append((name, r.cli_command, r.model, figures, where, r.cite))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    return "\n".join(
        "  ".join([*(c.ljust(w) for c, w in zip(row[:5], widths)), row[5]]) for row in rows
    )
