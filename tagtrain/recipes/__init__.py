"""Named recipes: one YAML file per paper setting, in this package (`python -m tagtrain
recipes` lists them; docs/FIDELITY.md says what each reproduces and what differs).

A recipe file has:

    cite:      the paper, table and row it reproduces
    command:   train | student | patchout
    train:     RunConfig fields (tagtrain.run.config), checked against the dataclass
    student:   StudentConfig fields (noisy-student recipes), checked likewise
    patchout:  PatchoutOptions fields (MAEST recipes), checked likewise
    prepare:   optional overrides of the features prepare computes: `features` (the
               stored members, e.g. "mel,pcm") and FeatureConfig fields
               (pipelines/core/features.py), checked against it; the rest come from the
               model's InputSpec, so features and model cannot disagree
    protocol:  settings the paper fixes that the trainer/loader must honour but that are
               not RunConfig fields yet (PROTOCOL_KEYS); the lead wires them

`load_recipe(name)` returns a plain dict {name, cite, command, prepare, train, student,
patchout, protocol, source}; `name` may also be the path of a YAML file of this form. Its
`prepare` is {"features": the stored members, **the FeatureConfig fields the model depends
on}: `beam_runner.py prepare --recipe NAME` takes them as its flags' defaults.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from pipelines.core.errors import UserError
from pipelines.core.features import FeatureConfig

RECIPE_DIR = Path(__file__).resolve().parent
COMMANDS = ("train", "student", "patchout")
SECTIONS = ("cite", "command", "train", "student", "patchout", "prepare", "protocol")
# The stored members, then every feature field (declared once, in FeatureConfig).
PREPARE_KEYS = ("features", *FeatureConfig.field_names())
# Protocol settings, with what the trainer/loader is expected to do (docs/FIDELITY.md).
PROTOCOL_KEYS = {
    "train_crop": "random: a fresh random crop of every track each epoch (song-level too)",
    "eval_chunks": "test prediction = mean over this many evenly spaced chunks",
    "selection": "best.pt criterion: val_loss or val_roc_auc",
    "reload_best_on_switch": "adam_sgd: restart from best.pt at each optimizer switch / lr drop",
    "sgd_nesterov": "adam_sgd: Nesterov momentum in the SGD phase",
    "adam_weight_decay": "adam_sgd: weight decay of the Adam phase (train.weight_decay: SGD's)",
    "plateau_halving": "halve the lr after this many epochs without improvement",
    "train_fraction": "train on this fraction of the training split (dataset-size studies)",
    "mask_time_count": "patchout: number of time masks per example",
    "mask_freq_count": "patchout: number of frequency masks per example",
    "mask_p": "patchout: probability of masking an example",
    "init_checkpoint": "patchout: 'required': start from a PaSST-layout weights file",
}
SELECTIONS = ("val_loss", "val_roc_auc")


class RecipeError(UserError):
    """An unknown or invalid recipe; one line."""


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


def _check_fields(section: str, values, cls, source: str) -> dict:
    if not isinstance(values, dict):
        raise RecipeError(f"{source}: {section} must be a mapping")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise RecipeError(f"{source}: {section}: unknown field(s) {', '.join(unknown)}")
    return dict(values)


def _section_classes() -> dict:
    from tagtrain.run.config import RunConfig
    from tagtrain.training.patchout import PatchoutOptions
    from tagtrain.training.student import StudentConfig

    return {"train": RunConfig, "student": StudentConfig, "patchout": PatchoutOptions}


def _check_types(train: dict, source: str) -> None:
    """The train section must make a valid RunConfig (types and values), given data."""
    from tagtrain.run.config import ConfigError, RunConfig, apply

    try:
        apply(RunConfig(), {"data": "-", **train}, source).validate()
    except ConfigError as exc:
        raise RecipeError(f"{source}: train: {exc}") from None


def model_prepare(model: str) -> dict:
    """What prepare must store for `model`: {"features": its members, **the FeatureConfig
    fields its input depends on} (from its InputSpec; the others stay prepare's defaults)."""
    from tagtrain.models.registry import get_entry

    spec = get_entry(model).input_spec
    stored = "pcm" if spec.kind == "pcm" else f"{spec.kind},pcm"
    return {"features": stored, **spec.card_requirements()}


def _check_prepare(model: str, overrides, source: str) -> dict:
    """The model's prepare settings with the recipe's overrides, checked against
    FeatureConfig (names and values)."""
    if not isinstance(overrides, dict):
        raise RecipeError(f"{source}: prepare must be a mapping")
    bad = sorted(set(overrides) - set(PREPARE_KEYS))
    if bad:
        raise RecipeError(f"{source}: prepare: unknown field(s) {', '.join(bad)}")
    prepare = {**model_prepare(model), **overrides}
    try:
        FeatureConfig.from_fields({k: v for k, v in prepare.items() if k != "features"})
    except (TypeError, ValueError) as exc:
        raise RecipeError(f"{source}: prepare: {exc}") from None
    return prepare


def _check_protocol(values, source: str) -> dict:
    if not isinstance(values, dict):
        raise RecipeError(f"{source}: protocol must be a mapping")
    unknown = sorted(set(values) - set(PROTOCOL_KEYS))
    if unknown:
        raise RecipeError(f"{source}: protocol: unknown key(s) {', '.join(unknown)}")
    if values.get("selection", "val_loss") not in SELECTIONS:
        raise RecipeError(f"{source}: protocol: selection must be one of {', '.join(SELECTIONS)}")
    return dict(values)


def load_recipe(name: str) -> dict:
    """The recipe `name` (or a YAML path), validated; see the module docstring."""
    from tagtrain.models.registry import get_entry

    data, source = _read(name)
    unknown = sorted(set(data) - set(SECTIONS))
    if unknown:
        raise RecipeError(f"{source}: unknown section(s) {', '.join(unknown)}")
    if data.get("command") not in COMMANDS:
        raise RecipeError(f"{source}: command must be one of {', '.join(COMMANDS)}")
    if not isinstance(data.get("cite"), str) or not data["cite"].strip():
        raise RecipeError(f"{source}: cite (paper, table, row) is required")
    classes = _section_classes()
    out = {"name": Path(source).stem, "source": source, "cite": data["cite"]}
    out["command"] = data["command"]
    for section, cls in classes.items():
        out[section] = _check_fields(section, data.get(section) or {}, cls, source)
    _check_types(out["train"], source)
    model = out["train"].get("model")
    try:
        get_entry(model or "")
    except KeyError:
        raise RecipeError(f"{source}: train.model {model!r} is not a registered model") from None
    out["prepare"] = _check_prepare(model, data.get("prepare") or {}, source)
    out["protocol"] = _check_protocol(data.get("protocol") or {}, source)
    return out


# Protocol keys the trainer implements as RunConfig settings (the rest: docs/FIDELITY.md).
_PROTOCOL_SETTINGS = {
    "selection": "select",
    "train_fraction": "train_fraction",
    "adam_weight_decay": "adam_weight_decay",
    "reload_best_on_switch": "reload_best",
}
_SELECTION_SETTING = {"val_loss": "val_loss", "val_roc_auc": "roc_auc"}
_CLI_COMMAND = {"train": "train", "student": "student", "patchout": "train-patchout"}


def recipe_settings(name: str, command: str) -> tuple[dict, dict]:
    """The settings recipe `name` gives a `command` run: (RunConfig fields, the section of
    that command's own options: `student` or `patchout`, else {})."""
    recipe = load_recipe(name)
    wanted = _CLI_COMMAND[recipe["command"]]
    if wanted != command:
        raise RecipeError(f"recipe {name} is for `python -m tagtrain {wanted}`, not {command}")
    train = {**recipe["train"], "recipe": recipe["name"]}
    for key, setting in _PROTOCOL_SETTINGS.items():
        if key in recipe["protocol"]:
            value = recipe["protocol"][key]
            train[setting] = _SELECTION_SETTING[value] if key == "selection" else value
    return train, recipe.get(recipe["command"], {}) if recipe["command"] != "train" else {}


def recipes_table() -> str:
    rows = [("name", "command", "model", "cite")]
    for name in recipe_names():
        r = load_recipe(name)
        rows.append((name, r["command"], r["train"]["model"], r["cite"]))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    return "\n".join(
        "  ".join([*(c.ljust(w) for c, w in zip(row[:3], widths)), row[3]]) for row in rows
    )
