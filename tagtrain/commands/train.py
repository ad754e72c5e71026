"""`python -m tagtrain train`: supervised training over streamed shards (tagtrain.training.loop).

Flags are generated from dataclass fields (pipelines.core.flags), so `--help` shows every
default: the command's own (`TrainFlags`), the run settings (`RunConfig`, tagtrain.run.config)
and, for student and train-patchout, their objective's options. `--config FILE` gives
settings as YAML or JSON, and flags override it. `--resume` continues the run in `--out`
from its saved config.json (flags still override). student and train-patchout build their
settings the same way (`run_settings`).

Names tests and bench import from here: `train`, `Trainer`, `Schedule`, `KILL_AT_STEP_ENV`,
`amp_settings`, `resolve_device`.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from pipelines.core.flags import add_flags, from_args, given, setting
from tagtrain.run.config import ConfigError, RunConfig, build_run_config
from tagtrain.run.runtime import amp_settings, resolve_device
from tagtrain.training.loop import KILL_AT_STEP_ENV, Trainer, train
from tagtrain.training.schedules import Schedule

COMMAND = "train"
HELP = "train a tagger on prepared shards (local, https://, s3://, gs://)"


@dataclass(frozen=True)
class TrainFlags:
    """A training command's flags beside its run settings and its objective's options."""

    config: str = setting("", "YAML or JSON file of settings (flags override it)")
    resume: bool = setting(
        False, "continue the run in --out from its config.json (flags still override)",
        negatable=False,
    )  # fmt: skip


def add_training_flags(parser: argparse.ArgumentParser, flags=TrainFlags, exclude=()) -> None:
    """The command's flags, then one flag per run setting (every command that trains)."""
    add_flags(parser, flags)
    add_flags(parser, RunConfig, exclude=exclude, title="run settings")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_training_flags(parser)


def with_recipe(overrides: dict, command: str) -> tuple[dict, dict]:
    """(base settings, the command's objective options) of `--recipe NAME`, or ({}, {}).
    Flags given beside the recipe override it; the run says which."""
    name = overrides.get("recipe")
    if not name:
        return {}, {}
    from tagtrain.recipes import recipe_settings

    base, options = recipe_settings(name, command)
    changed = sorted(
        k for k in overrides if k in base and k != "recipe" and base[k] != overrides[k]
    )
    if changed:
        print(f"recipe {name}, overridden by flags: {', '.join(changed)}")
    return base, options


def run_settings(command: str, args, flags, objective=None, model: str | None = None):
    """(run config, objective options or None) of a training command's flags: its recipe,
    config file, saved run and flags through `build_run_config`. `model`: a command that
    names the model itself (student: --student-model, else the recipe's)."""
    overrides = given(args, RunConfig)
    recipe, recipe_options = with_recipe(overrides, command)
    if model is not None:
        overrides["model"] = model or recipe.get("model", "")
        if not overrides["model"]:
            raise ConfigError(f"give --{command}-model NAME (or a {command} --recipe)")
    cfg, options = build_run_config(
        command, overrides, file=flags.config or None, recipe=recipe, resume=flags.resume,
        objective=objective, options=(recipe_options, given(args, objective) if objective else {}),
    )  # fmt: skip
    return checked_model(cfg), options


def checked_model(cfg: RunConfig) -> RunConfig:
    """`cfg` when its model is registered; else one line naming the unknown model."""
    from tagtrain.models.registry import get_entry

    try:
        get_entry(cfg.model)
    except KeyError as exc:
        raise ConfigError(str(exc.args[0] if exc.args else exc)) from None
    return cfg


def weights_init(cfg: RunConfig):
    """What loads `--init` weights into a new model (None without --init): published
    weights (pretrained:NAME) or a PaSST/MAEST checkpoint FILE (patchout models)."""
    if not cfg.init:
        return None
    from tagtrain.pretrained.finetune import INIT_PREFIX, init_from_pretrained

    if not cfg.init.startswith(INIT_PREFIX):  # a file: a PaSST/MAEST checkpoint
        from tagtrain.pretrained.importers.maest import init_from_checkpoint_file

        return init_from_checkpoint_file

    return init_from_pretrained


def run(args: argparse.Namespace) -> int:
    flags = from_args(args, TrainFlags)
    cfg, _ = run_settings(COMMAND, args, flags)
    Trainer(cfg, resume=flags.resume, init_weights=weights_init(cfg)).fit()
    return 0


__all__ = ["KILL_AT_STEP_ENV", "Schedule", "Trainer", "amp_settings", "resolve_device", "train"]
