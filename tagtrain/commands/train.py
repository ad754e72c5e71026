"""`python -m tagtrain train`: supervised training over streamed shards (tagtrain.training.loop).

Flags are generated from `RunConfig`'s fields (tagtrain.run.config), so `--help` shows every
default; `--config FILE` gives settings as YAML or JSON, and flags override it. `--resume`
continues the run in `--out` from its saved config.json (flags still override).

The names other modules used from here stay importable: `Trainer`, `train`, `Schedule`,
`KILL_AT_STEP_ENV`, `amp_settings`, `resolve_device`, `predict_split`.
"""

from __future__ import annotations

import argparse
import json

from pipelines.core.flags import add_flags, given
from tagtrain.inference.predict import predict_split
from tagtrain.run.config import ConfigError, RunConfig, build_config
from tagtrain.run.directory import RunDir
from tagtrain.run.runtime import DistEnv, amp_settings, resolve_device
from tagtrain.training.loop import KILL_AT_STEP_ENV, Trainer, train
from tagtrain.training.schedules import Schedule

COMMAND = "train"
HELP = "train a tagger on prepared shards (local, https://, s3://, gs://)"


def add_config_flags(parser: argparse.ArgumentParser, exclude=()) -> None:
    """--config and one flag per run setting (other commands that train reuse them)."""
    parser.add_argument("--config", help="YAML or JSON file of settings (flags override it)")
    add_flags(parser, RunConfig, exclude=exclude, title="run settings")


def add_arguments(parser: argparse.ArgumentParser, resume_help: str = "") -> None:
    add_config_flags(parser)
    parser.add_argument(
        "--resume", action="store_true", help=resume_help or "continue the run in --out"
    )


def config_overrides(args: argparse.Namespace) -> dict:
    """The run settings given as flags."""
    return given(args, RunConfig)


def with_recipe(overrides: dict, command: str) -> tuple[dict, dict]:
    """(base settings, the command's recipe options) of `--recipe NAME`, or ({}, {}).
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


def config_from_args(
    args: argparse.Namespace, base: dict | None = None, command: str = COMMAND
) -> RunConfig:
    overrides = config_overrides(args)
    if base is None:
        base = with_recipe(overrides, command)[0]
    if args.resume:
        probe = build_config(args.config, {"data": "-", "model": "-", **overrides})
        if not (probe.out or "model" in overrides):
            raise ConfigError("--resume needs the run directory: give --out (or --model)")
        saved = RunDir(probe.run_dir(), probe.effective_storage_options())
        if not saved.exists(RunDir.CONFIG):
            raise ConfigError(f"--resume: no run to resume at {probe.run_dir()}")
        base = json.loads(saved.read_text(RunDir.CONFIG))
    return build_config(args.config, overrides, base)


def checked_model(cfg: RunConfig) -> RunConfig:
    """`cfg` when its model is registered; else one line naming the unknown model."""
    from tagtrain.models.registry import get_entry

    try:
        get_entry(cfg.model)
    except KeyError as exc:
        raise ConfigError(str(exc.args[0] if exc.args else exc)) from None
    return cfg


def weights_init(cfg: RunConfig):
    """What loads `--init` weights into a new model (None without --init)."""
    if not cfg.init:
        return None
    from tagtrain.pretrained.finetune import init_from_pretrained

    return init_from_pretrained


def run(args: argparse.Namespace) -> int:
    cfg = checked_model(config_from_args(args))
    Trainer(cfg, resume=args.resume, init_weights=weights_init(cfg)).fit()
    return 0


__all__ = [
    "KILL_AT_STEP_ENV",
    "DistEnv",
    "Schedule",
    "Trainer",
    "add_arguments",
    "add_config_flags",
    "amp_settings",
    "config_from_args",
    "predict_split",
    "resolve_device",
    "train",
]
