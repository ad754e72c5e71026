"""The run configuration: one typed dataclass, loaded from YAML/JSON, overridden by flags
(generated from its fields, see pipelines.core.flags), printed at the start of a run as a diff
from the defaults and saved whole as `config.json` in the run directory.

Precedence: defaults < `--config FILE` < command-line flags. On `--resume` the saved
`config.json` of the run takes the place of the defaults.

Every training command (train, student, train-patchout) builds its config one way,
`build_run_config`; what an objective changes in it its options class declares
(`ObjectiveSettings`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import ClassVar

from pipelines.core.errors import UserError
from pipelines.core.flags import setting

SCHEDULES = ("adam_sgd", "early_stop")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
SELECTIONS = ("val_loss", "roc_auc")
BALANCE = ("none", "inverse_frequency")  # the epoch sample's weights (--epoch-samples)
STANDARDIZE = ("", "none", "band", "global")  # "": the model's InputSpec
EVAL_WINDOWS = ("chunks", "moving")  # evenly spaced chunks, or Pons' moving window
S3_CLIENTS = ("obstore", "s3fs")  # see tagtrain/loader/s3ranges.py
# Reference epochs of each schedule (minzwon/sota-music-tagging-models trains 200 epochs:
# Adam 80, SGD 1e-3 20, 1e-4 20, then 1e-5 to the end).
SCHEDULE_EPOCHS = {"adam_sgd": 200, "early_stop": 200}


class ConfigError(UserError, ValueError):
    """An invalid setting; the message is one line."""


@dataclass
class RunConfig:
    data: str = setting("", "dataset directory or URL prefix (https://, s3://, gs://)")
    model: str = setting("", "registered model name (see `python -m tagtrain models`)")
    recipe: str = setting(
        "", "paper recipe to start from (`python -m tagtrain recipes`); flags override it"
    )
    out: str = setting("", "run directory (empty: runs/MODEL)")
    width: float = setting(1.0, "channel-width multiplier of the model")
    init: str = setting(
        "",
        "start from published weights, e.g. pretrained:musicnn-msd (a new output layer "
        "when the vocabulary differs), or for patchout models a PaSST/MAEST checkpoint FILE",
    )
    seed: int = setting(0, "seed of initialisation, shuffles and crops")
    device: str = setting("auto", "auto, cpu, cuda or cuda:N")
    precision: str = setting("auto", "autocast on CUDA (auto: bf16 or fp16)", choices=PRECISIONS)
    # data
    train_split: str = setting("train", "split trained on")
    val_split: str = setting("valid", "split validated on")
    train_fraction: float = setting(
        1.0, "fraction of the train split's shards used (data-size experiments)"
    )
    batch_size: int = setting(16, "batch size per rank")
    workers: int = setting(4, "loader worker processes per rank (0 = main process)")
    shuffle_buffer: int = setting(256, "samples in each loader worker's shuffle buffer")
    val_chunks: int = setting(
        16, "evenly spaced chunks averaged per validation track (the test protocol's)"
    )
    epoch_samples: int = setting(
        0,
        "each epoch trains on a sample of this many tracks drawn without replacement, "
        "deterministic per (seed, epoch) (0: every track; Alonso-Jiménez et al. 2023: 200000)",
    )
    balance: str = setting(
        "none",
        "weights of the --epoch-samples draw: none (uniform) or inverse_frequency (a "
        "track's weight: the sum of 1 / count of its tags, as MAEST's balanced sample)",
        choices=BALANCE,
    )
    standardize: str = setting(
        "",
        "input standardisation: none, band (per-band zero mean, unit variance), global "
        "(one mean and variance over all bands) or empty: the model's own",
        choices=STANDARDIZE,
    )
    split_variant: str = setting(
        "", "the dataset's split variant the run requires (its card's split_variant, e.g. "
        "full or clean for MTT; empty: any)",
    )  # fmt: skip
    eval_chunks: int = setting(
        0, "chunks `evaluate --run` averages per track unless --chunks is given (0: val_chunks)"
    )
    eval_window: str = setting(
        "chunks",
        "evaluation crops: chunks (evenly spaced) or moving (consecutive windows of the "
        "model's input length over the whole track, Pons et al. 2018)",
        choices=EVAL_WINDOWS,
    )
    augment: str | list = setting(
        "",
        "training augmentation chain, online on training crops (not perturb --augment): "
        "default (Won et al. 2021's chain; student's default), a YAML file, or none; config.json "
        "records the chain itself",
    )
    storage_options: dict = setting({}, "fsspec options per protocol", flag=False)
    max_bad_fraction: float = setting(
        0.05, "fail the run when more than this fraction of an epoch's samples is bad"
    )
    cache_dir: str = setting("", "keep local copies of remote shards here (empty: no cache)")
    cache_limit: float = setting(0.0, "GiB the shard cache may hold (0: no limit)")
    verify: bool = setting(False, "check every shard's sha256 against the card before training")
    s3_endpoint_url: str = setting("", "S3-compatible endpoint (or set AWS_ENDPOINT_URL)")
    s3_client: str = setting(
        "obstore",
        "client of the loader's s3:// range requests: obstore (less CPU per request) or s3fs",
        choices=S3_CLIENTS,
    )
    # schedule
    schedule: str = setting(
        "adam_sgd",
        "adam_sgd: Adam then SGD with drops; early_stop: Adam + patience",
        choices=SCHEDULES,
    )
    epochs: int = setting(0, "epochs (0: the schedule's reference count, 200)")
    select: str = setting(
        "val_loss", "model-selection criterion on the validation split", choices=SELECTIONS
    )
    lr: float = setting(1e-4, "Adam learning rate")
    weight_decay: float = setting(1e-4, "weight decay of every optimiser")
    adam_weight_decay: float | None = setting(
        None, "adam_sgd: weight decay of the Adam phase (unset: --weight-decay; Won et al. 2019: 0)"
    )
    reload_best: bool = setting(
        True,
        "adam_sgd: restart from best.pt at each optimizer switch and lr drop (Won et al. 2020)",
    )
    adam_epochs: int = setting(80, "adam_sgd: Adam epochs before SGD")
    sgd_lr: float = setting(1e-3, "adam_sgd: SGD learning rate")
    sgd_momentum: float = setting(0.9, "adam_sgd: SGD momentum")
    sgd_nesterov: bool = setting(True, "adam_sgd: Nesterov momentum in the SGD phase")
    sgd_drop_after: list = setting([20, 40], "adam_sgd: SGD epochs after which lr /= 10")
    patience: int = setting(20, "early_stop: epochs without improvement before stopping")
    plateau_halving: int = setting(
        0, "early_stop: halve the learning rate after this many epochs without improvement "
        "(0 = off)",
    )  # fmt: skip
    # budget and bookkeeping
    max_minutes: float = setting(0.0, "time budget; the run checkpoints and stops (0: none)")
    max_steps_per_epoch: int = setting(0, "cap on steps per epoch (0: the whole epoch)")
    checkpoint_every: int = setting(500, "steps between mid-epoch checkpoints (0: epoch ends)")
    log_every: int = setting(10, "steps between TensorBoard training-loss points")
    max_bad_steps: int = setting(
        5, "consecutive steps with a non-finite loss that stop the run (each is skipped)"
    )
    progress: bool = setting(True, "tqdm progress bars")
    log_samples: bool = setting(False, "write samples-rankR.tsv: the keys of every step")

    def total_epochs(self) -> int:
        return self.epochs or SCHEDULE_EPOCHS[self.schedule]

    def effective_storage_options(self) -> dict:
        options = {k: dict(v) for k, v in self.storage_options.items()}
        if self.s3_endpoint_url:
            options.setdefault("s3", {})["endpoint_url"] = self.s3_endpoint_url
        return options

    def evaluation_chunks(self) -> int:
        """Chunks per track `evaluate --run` averages when --chunks is not given."""
        return self.eval_chunks or self.val_chunks

    def run_dir(self) -> str:
        """The run directory: a local path or an object-store prefix (s3://, gs://)."""
        return self.out or f"runs/{self.model}"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        # What a run saves (config.json, checkpoints): never how to reach its storage.
        return json.dumps(without_storage(self.to_dict()), indent=2, sort_keys=True)

    def validate(self) -> RunConfig:
        if not self.data:
            raise ConfigError("no dataset: give --data DIR_OR_URL (or 'data' in the config file)")
        if not self.model:
            raise ConfigError("no model: give --model NAME (see `python -m tagtrain models`)")
        for name, allowed in (
            ("schedule", SCHEDULES), ("precision", PRECISIONS), ("select", SELECTIONS),
            ("s3_client", S3_CLIENTS), ("balance", BALANCE), ("standardize", STANDARDIZE),
            ("eval_window", EVAL_WINDOWS),
        ):  # fmt: skip
            if getattr(self, name) not in allowed:
                raise ConfigError(
                    f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}"
                )
        positive = {"batch_size": self.batch_size, "width": self.width, "lr": self.lr}
        for name, value in positive.items():
            if value <= 0:
                raise ConfigError(f"{name} must be positive, got {value}")
        non_negative = (
            "workers", "shuffle_buffer", "epochs", "max_minutes", "max_steps_per_epoch",
            "checkpoint_every", "patience", "adam_epochs", "epoch_samples", "eval_chunks",
            "plateau_halving",
        )  # fmt: skip
        for name in non_negative:
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must not be negative, got {getattr(self, name)}")
        if self.schedule == "early_stop" and 0 < self.patience <= self.plateau_halving:
            raise ConfigError(
                f"plateau_halving {self.plateau_halving} never takes effect: patience "
                f"{self.patience} stops the run first (patience 0 never stops early)"
            )
        if self.val_chunks < 1:
            raise ConfigError(f"val_chunks must be at least 1, got {self.val_chunks}")
        if self.max_bad_steps < 1:
            raise ConfigError(f"max_bad_steps must be at least 1, got {self.max_bad_steps}")
        if not 0 <= self.max_bad_fraction <= 1:
            raise ConfigError(f"max_bad_fraction must be in [0, 1], got {self.max_bad_fraction}")
        if self.adam_weight_decay is not None and self.adam_weight_decay < 0:
            raise ConfigError(
                f"adam_weight_decay must not be negative, got {self.adam_weight_decay}"
            )
        if self.cache_limit < 0:
            raise ConfigError(f"cache_limit must not be negative, got {self.cache_limit}")
        if not 0 < self.train_fraction <= 1:
            raise ConfigError(f"train_fraction must be in (0, 1], got {self.train_fraction}")
        if self.balance != "none" and not self.epoch_samples:
            raise ConfigError(
                f"balance {self.balance} weights the epoch sample: give --epoch-samples N"
            )
        return self


_FIELDS = {f.name: f for f in dataclasses.fields(RunConfig)}

# How to reach storage (endpoints, credentials, regions, client options) comes from the
# user's flags, config file and environment only: a run's saved config, a checkpoint or a
# recipe that set it could send the user's signed requests, and so their key id, to a
# server of its choosing. A run records that it read s3:// (its `data`), not how.
STORAGE_SETTINGS = ("storage_options", "s3_endpoint_url")


def without_storage(values: Mapping) -> dict:
    """`values` less the storage settings (what a run saves and what is read back)."""
    return {k: v for k, v in values.items() if k not in STORAGE_SETTINGS}


# A loaded run's model settings are bounded before anything is built: width 40 alone asks
# for about 24 GB. The references are width 1.
MAX_WIDTH = 4.0


def check_saved_model_settings(cfg: RunConfig, source: str) -> None:
    """One line when a saved config asks for a model no run of ours trains: an unknown
    model or a width that is not a finite number in (0, MAX_WIDTH]."""
    from tagtrain.models.registry import list_models

    known = [entry.name for entry in list_models()]
    if cfg.model not in known:
        raise ConfigError(f"{source}: unknown model {cfg.model!r}")
    if not (math.isfinite(cfg.width) and 0 < cfg.width <= MAX_WIDTH):
        raise ConfigError(f"{source}: width must be in (0, {MAX_WIDTH:g}], got {cfg.width}")


def _check_type(name: str, value, source: str):
    hint = typing.get_type_hints(RunConfig)[name]
    origin = typing.get_origin(hint)
    expected = typing.get_args(hint) if origin in (typing.Union, types.UnionType) else (hint,)
    expected = tuple(typing.get_origin(t) or t for t in expected)
    if float in expected and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, bool) and bool not in expected:
        raise ConfigError(f"{source}: {name} must be {_names(expected)}, got {value!r}")
    if not isinstance(value, expected):
        raise ConfigError(f"{source}: {name} must be {_names(expected)}, got {value!r}")
    return value


def _names(types_) -> str:
    return " or ".join(t.__name__ for t in types_)


def apply(cfg: RunConfig, values: Mapping, source: str) -> RunConfig:
    """A copy of `cfg` with `values` set, each checked against the field's type."""
    unknown = sorted(set(values) - set(_FIELDS))
    if unknown:
        raise ConfigError(f"{source}: unknown setting(s) {', '.join(unknown)}")
    checked = {k: _check_type(k, v, source) for k, v in values.items()}
    return dataclasses.replace(cfg, **checked)


def read_config_file(path: str | Path) -> dict:
    """Settings from a YAML (.yaml/.yml) or JSON file."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror or exc}") from None
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            values = yaml.safe_load(text)
        else:
            values = json.loads(text)
    except ValueError as exc:  # yaml.YAMLError derives from Exception, caught below
        raise ConfigError(f"{path} is not valid: {str(exc).splitlines()[0]}") from None
    except Exception as exc:  # noqa: BLE001  (a YAML syntax error: one line, no traceback)
        raise ConfigError(f"{path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError(f"{path} must hold a mapping of settings")
    return values


def build_config(
    file: str | Path | None = None, overrides: Mapping | None = None, base: Mapping | None = None
) -> RunConfig:
    cfg = RunConfig()
    if base:
        cfg = apply(cfg, base, "saved config.json")
    if file:
        cfg = apply(cfg, read_config_file(file), str(file))
    if overrides:
        cfg = apply(cfg, overrides, "command line")
    return cfg.validate()


class ObjectiveSettings:
    """What the options class (a dataclass) of a training objective declares about the
    run config; every part optional, `build_run_config` reads them:

    base_settings        run settings under the recipe, the config file and the flags
    reads_saved_config   whether --resume starts from the run's config.json
    saved_file           the run's file of these options that --resume reads back
    fixed_settings       run settings this objective decides, over everything else"""

    base_settings: ClassVar[Mapping] = MappingProxyType({})
    reads_saved_config: ClassVar[bool] = True
    saved_file: ClassVar[str | None] = None

    def fixed_settings(self, cfg: RunConfig, resume: bool) -> dict:
        return {}

    @classmethod
    def from_settings(cls, values: Mapping, source: str):
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ConfigError(f"{source}: unknown option(s) {', '.join(unknown)}")
        return cls(**values)


def resumed_run_dir(file: str | None, overrides: Mapping):
    """The run directory `--resume` continues (a RunDir holding config.json): the one
    --out (or the model's default) names. One line when there is none."""
    from tagtrain.run.directory import RunDir

    probe = build_config(file, {"data": "-", "model": "-", **overrides})
    if not (probe.out or "model" in overrides):
        raise ConfigError("--resume needs the run directory: give --out (or --model)")
    run_dir = RunDir(probe.run_dir(), probe.effective_storage_options())
    if not run_dir.exists(RunDir.CONFIG):
        raise ConfigError(f"--resume: no run to resume at {probe.run_dir()}")
    return run_dir


def build_run_config(
    command: str,
    overrides: Mapping,
    *,
    file: str | None = None,
    recipe: Mapping | None = None,
    resume: bool = False,
    objective: type[ObjectiveSettings] | None = None,
    options: tuple[Mapping, Mapping] = ({}, {}),
):
    """The run config of a training command, and its objective's options: one way for
    every command that trains.

    run settings:  defaults < the objective's base settings < the recipe's (--recipe)
                   < the run's config.json (--resume, where the objective reads it)
                   < --config FILE < the flags (`overrides`);
                   then the objective's fixed settings
    options:       the recipe's < the run's saved options file (--resume) < the flags
                   (`options`: the recipe's and the flags')

    `objective`: the options class of the objective (None: plain training, no options)."""
    declared = objective or ObjectiveSettings
    base = {**declared.base_settings, **without_storage(recipe or {})}
    if resume and declared.reads_saved_config:
        saved = resumed_run_dir(file, overrides)
        base = without_storage(json.loads(saved.read_text(saved.CONFIG)))
    cfg = build_config(file, overrides, base)
    if objective is None:
        return cfg, None
    from_recipe, from_flags = options
    saved_options = {}
    if resume and objective.saved_file:
        from tagtrain.run.directory import RunDir

        run_dir = RunDir(cfg.run_dir(), cfg.effective_storage_options())
        if run_dir.exists(objective.saved_file):
            saved_options = json.loads(run_dir.read_text(objective.saved_file))
    chosen = objective.from_settings(
        {**from_recipe, **saved_options, **from_flags}, f"{command} options"
    )
    fixed = chosen.fixed_settings(cfg, resume)
    return (apply(cfg, fixed, command).validate() if fixed else cfg), chosen
