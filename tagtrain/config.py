"""The run configuration: one typed dataclass, loaded from YAML/JSON, overridden by flags,
printed at the start of a run and saved as `config.json` in the run directory.

Precedence: defaults < `--config FILE` < command-line flags. On `--resume` the saved
`config.json` of the run takes the place of the defaults.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

SCHEDULES = ("adam_sgd", "early_stop")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


class ConfigError(ValueError):
    """An invalid setting; the message is one line."""


@dataclass
class RunConfig:
    data: str = ""  # dataset directory or URL prefix (https://, s3://, gs://)
    model: str = ""  # a registered model name (`python -m tagtrain models`)
    out: str = ""  # run directory; default runs/{model}
    width: float = 1.0  # channel-width multiplier passed to the model builder
    seed: int = 0
    device: str = "auto"  # auto, cpu, cuda, cuda:N
    precision: str = "auto"  # auto: bf16 (or fp16) autocast on CUDA, fp32 on CPU
    # data
    train_split: str = "train"
    val_split: str = "valid"
    batch_size: int = 16
    workers: int = 4
    shuffle_buffer: int = 256
    val_chunks: int = 4  # evenly spaced chunks averaged per validation track (chunk models)
    # waveform augmentation of training crops (tagtrain.augment): "" off, "default" (seed
    # 003's recipe), a YAML file, or the chain's entries (what config.json records)
    augment: str | list = ""
    storage_options: dict = field(default_factory=dict)  # fsspec options per protocol
    s3_endpoint_url: str = ""  # S3-compatible endpoint (or AWS_ENDPOINT_URL)
    # schedule
    schedule: str = "adam_sgd"  # adam_sgd (a) or early_stop (b)
    epochs: int = 0  # 0: the schedule's default (adam_sgd: 140, early_stop: 200)
    lr: float = 1e-4
    weight_decay: float = 1e-4
    adam_epochs: int = 80  # (a): Adam epochs before switching to SGD
    sgd_lr: float = 1e-3
    sgd_momentum: float = 0.9
    sgd_drop_after: list = field(default_factory=lambda: [20, 40])  # (a): /10 after these
    patience: int = 20  # (b): epochs without val-loss improvement before stopping
    # budget and bookkeeping
    max_minutes: float = 0.0  # 0: no time budget
    max_steps_per_epoch: int = 0  # 0: the whole epoch
    checkpoint_every: int = 500  # steps between mid-epoch checkpoints; 0: epoch ends only
    log_every: int = 10  # steps between TensorBoard training-loss points
    progress: bool = True
    log_samples: bool = False  # write samples-rank{R}.tsv: the keys of every training step

    def total_epochs(self) -> int:
        if self.epochs:
            return self.epochs
        if self.schedule == "adam_sgd":
            return self.adam_epochs + max(self.sgd_drop_after or [0]) + 20
        return 200

    def effective_storage_options(self) -> dict:
        options = {k: dict(v) for k, v in self.storage_options.items()}
        if self.s3_endpoint_url:
            options.setdefault("s3", {})["endpoint_url"] = self.s3_endpoint_url
        return options

    def run_dir(self) -> Path:
        return Path(self.out or f"runs/{self.model}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def describe(self) -> str:
        return "\n".join(f"  {k:<20} {v}" for k, v in self.to_dict().items())

    def validate(self) -> RunConfig:
        if not self.data:
            raise ConfigError("no dataset: give --data DIR_OR_URL (or 'data' in the config file)")
        if not self.model:
            raise ConfigError("no model: give --model NAME (see `python -m tagtrain models`)")
        if self.schedule not in SCHEDULES:
            raise ConfigError(
                f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}"
            )
        if self.precision not in PRECISIONS:
            raise ConfigError(
                f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}"
            )
        positive = {"batch_size": self.batch_size, "width": self.width, "lr": self.lr}
        for name, value in positive.items():
            if value <= 0:
                raise ConfigError(f"{name} must be positive, got {value}")
        non_negative = {
            "workers": self.workers,
            "shuffle_buffer": self.shuffle_buffer,
            "epochs": self.epochs,
            "max_minutes": self.max_minutes,
            "max_steps_per_epoch": self.max_steps_per_epoch,
            "checkpoint_every": self.checkpoint_every,
            "patience": self.patience,
            "adam_epochs": self.adam_epochs,
        }
        for name, value in non_negative.items():
            if value < 0:
                raise ConfigError(f"{name} must not be negative, got {value}")
        if self.val_chunks < 1:
            raise ConfigError(f"val_chunks must be at least 1, got {self.val_chunks}")
        return self


_FIELDS = {f.name: f for f in dataclasses.fields(RunConfig)}


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
