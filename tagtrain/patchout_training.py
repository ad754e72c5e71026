"""`python -m tagtrain train-patchout`: the PaSST/MAEST training recipe on the streaming trainer.

Every `train` flag works here too (data sources, DDP, checkpoints, --resume, time budget);
the run directory is the trainer's, plus `patchout.json` (the options below). On top:

- Structured patchout: `--time-patchout N` patch columns and `--freq-patchout N` rows are
  dropped at random in every training batch (default: the model's, 3 columns per second of
  input, no rows); `--inference-patchout` also drops them, evenly spaced, at validation.
- AdamW (lr `--lr`, weight decay `--weight-decay`) with the learning rate set every step
  from a fractional-epoch schedule: PaSST's exponential warm-up over `--warmup-epochs`,
  flat, then a linear ramp-down from `--rampdown-start` over `--rampdown-epochs` to
  `--last-lr-factor` x lr. `--epochs` defaults to the end of the ramp-down.
- Weight averaging (torch.optim.swa_utils.AveragedModel): after epoch `--swa-start`
  (counted from 1; 0 = off) and every `--swa-every` epochs after it the weights join the
  average. Once it has begun, validation, model selection and best.pt use the averaged
  weights, so `evaluate`/`embed`/`tag` on best.pt get the SWA model; last.pt keeps the
  live weights (and the average) so --resume continues exactly.
- Mixup (`--mixup-alpha`, PaSST's variant: lambda ~ Beta(a, a) folded to >= 0.5, inputs and
  labels mixed with a shuffled batch) on the normalised log-mel.
- SpecAugment-style masking (`--freq-mask F --time-mask T`): per sample, one band of
  uniform width in [0, F) mel bins and one span of width in [0, T) frames set to 0, the
  mean after normalisation (torchaudio's masks, written here: torchaudio is not a
  dependency).
- Balancing by inverse tag frequency (`--balance tags`). The streaming loader reads shards
  in a shuffled order and cannot draw tracks by weight, so the sampler is replaced by
  importance weights on the loss: a track's weight is the sum over its tags of
  1 / (train tracks with that tag) (tracks without tags: the smallest such term), scaled
  to mean 1 over the training split. In expectation the gradient equals that of sampling
  tracks with probability proportional to the weight (PaSST's balanced sampler), with
  more variance. Tag counts come from the dataset's index.parquet.
Defaults are MAEST's (warm-up 5, ramp-down 50 -> 100 to 0.01, SWA from epoch 50 every 5,
mixup 0.3); masking and balancing are off unless asked for.

`python -m tagtrain train --model patchout_tiny ...` trains the same models with the
generic schedules; structured patchout then runs at the model's defaults.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel

from tagtrain import checkpoint as ckpt
from tagtrain import train
from tagtrain.config import ConfigError, RunConfig, apply
from tagtrain.data import LoaderError, assign_shards, planned_steps
from tagtrain.models.patchout import PATCHOUT_MODELS, default_time_patchout, grid_size
from tagtrain.registry import get_entry

COMMAND = "train-patchout"
HELP = (
    "train a patchout transformer with the PaSST/MAEST recipe (patchout, AdamW, warm-up "
    "and ramp-down, SWA, mixup, masking, tag balancing)"
)
OPTIONS_FILE = "patchout.json"
BALANCE_MODES = ("none", "tags")


@dataclass
class PatchoutOptions:
    time_patchout: int | None = None  # None: the model's default (3 per second of input)
    freq_patchout: int = 0
    inference_patchout: bool = False
    warmup_epochs: float = 5.0
    rampdown_start: float = 50.0
    rampdown_epochs: float = 50.0
    last_lr_factor: float = 0.01
    swa_start: int = 50  # epochs done before the first averaging; 0: no averaging
    swa_every: int = 5
    mixup_alpha: float = 0.3  # 0: no mixup
    freq_mask: int = 0  # widest frequency mask in mel bins; 0: none
    time_mask: int = 0  # widest time mask in frames; 0: none
    balance: str = "none"  # "tags": loss weights by inverse tag frequency

    def validate(self, model: str) -> PatchoutOptions:
        if model not in PATCHOUT_MODELS:
            raise ConfigError(
                f"{COMMAND} trains patchout models ({', '.join(PATCHOUT_MODELS)}), "
                f"not {model!r}; use `train` for the others"
            )
        spec = get_entry(model).input_spec
        rows, cols = grid_size(spec.n_mels, spec.frames)
        time = self.resolved_time_patchout(spec.seconds)
        if not 0 <= time < cols:
            raise ConfigError(f"time_patchout must be in [0, {cols}) for {model}, got {time}")
        if not 0 <= self.freq_patchout < rows:
            raise ConfigError(
                f"freq_patchout must be in [0, {rows}) for {model}, got {self.freq_patchout}"
            )
        non_negative = {
            "warmup_epochs": self.warmup_epochs,
            "rampdown_start": self.rampdown_start,
            "rampdown_epochs": self.rampdown_epochs,
            "swa_start": self.swa_start,
            "mixup_alpha": self.mixup_alpha,
            "freq_mask": self.freq_mask,
            "time_mask": self.time_mask,
        }
        for name, value in non_negative.items():
            if value < 0:
                raise ConfigError(f"{name} must not be negative, got {value}")
        if not 0 < self.last_lr_factor <= 1:
            raise ConfigError(f"last_lr_factor must be in (0, 1], got {self.last_lr_factor}")
        if self.swa_every < 1:
            raise ConfigError(f"swa_every must be at least 1, got {self.swa_every}")
        if self.balance not in BALANCE_MODES:
            raise ConfigError(
                f"balance must be one of {', '.join(BALANCE_MODES)}, got {self.balance!r}"
            )
        return self

    def resolved_time_patchout(self, seconds: float) -> int:
        return default_time_patchout(seconds) if self.time_patchout is None else self.time_patchout

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict, source: str) -> PatchoutOptions:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ConfigError(f"{source}: unknown patchout option(s) {', '.join(unknown)}")
        return cls(**values)


# --- the recipe's pieces (pure functions of tensors) -----------------------------------


def restore_inference_patchout(model: torch.nn.Module, run_dir: Path) -> None:
    """A run trained with --inference-patchout is evaluated with the same patches dropped."""
    path = run_dir / OPTIONS_FILE
    if not path.is_file():
        return
    options = PatchoutOptions.from_dict(json.loads(path.read_text()), str(path))
    if options.inference_patchout:
        model.set_patchout(
            time=options.resolved_time_patchout(model.input_spec.seconds),
            freq=options.freq_patchout,
            inference=True,
        )


def lr_factor(epoch: float, options: PatchoutOptions) -> float:
    """Learning-rate multiplier at a fractional epoch: PaSST's exp warm-up x linear ramp-down."""
    o = options
    up = 1.0
    if o.warmup_epochs > 0 and epoch < o.warmup_epochs:
        up = math.exp(-5.0 * (1.0 - epoch / o.warmup_epochs) ** 2)
    end = o.rampdown_start + o.rampdown_epochs
    if epoch <= o.rampdown_start:
        down = 1.0
    elif epoch < end:
        down = o.last_lr_factor + (1.0 - o.last_lr_factor) * (end - epoch) / o.rampdown_epochs
    else:
        down = o.last_lr_factor
    return up * down


def _bands(batch: int, size: int, max_width: int, device) -> torch.Tensor:
    """[batch, size] bool: one span per row, width uniform in [0, max_width)."""
    width = (torch.rand(batch, device=device) * min(max_width, size)).long()
    start = (torch.rand(batch, device=device) * (size - width + 1)).long()
    index = torch.arange(size, device=device)
    return (index >= start[:, None]) & (index < (start + width)[:, None])


def spec_mask(x: torch.Tensor, freq_width: int, time_width: int) -> torch.Tensor:
    """[B, F, T] with one frequency band and one time span per sample set to 0."""
    if not freq_width and not time_width:
        return x
    b, f, t = x.shape
    masked = torch.zeros_like(x, dtype=torch.bool)
    if freq_width:
        masked |= _bands(b, f, freq_width, x.device)[:, :, None]
    if time_width:
        masked |= _bands(b, t, time_width, x.device)[:, None, :]
    return x.masked_fill(masked, 0.0)


def mixup(x: torch.Tensor, y: torch.Tensor, weights: torch.Tensor | None, alpha: float):
    """PaSST's mixup: (x, y, weights) mixed with a shuffled copy of the batch, lambda ~
    Beta(alpha, alpha) folded to [0.5, 1] so each sample stays the dominant part of its mix."""
    b = x.shape[0]
    lam = torch.distributions.Beta(alpha, alpha).sample((b,))
    lam = torch.maximum(lam, 1.0 - lam).to(x.device)
    order = torch.randperm(b).to(x.device)

    def mix(t: torch.Tensor) -> torch.Tensor:
        shape = (b,) + (1,) * (t.dim() - 1)
        return t * lam.reshape(shape) + t[order] * (1.0 - lam.reshape(shape))

    return mix(x), mix(y), None if weights is None else mix(weights)


@dataclass(frozen=True)
class TagBalance:
    """Per-track loss weights by inverse tag frequency (see the module docs)."""

    tag_weights: tuple[float, ...]  # 1 / train tracks with the tag (0 for absent tags)
    untagged: float  # the weight of a track without tags, before scaling
    scale: float  # 1 / the mean unscaled weight over the training split

    @classmethod
    def from_tags(cls, tag_lists, vocabulary) -> TagBalance:
        index = {t: i for i, t in enumerate(vocabulary)}
        counts = [0] * len(vocabulary)
        untagged_tracks = 0
        for tags in tag_lists:
            known = {index[t] for t in tags if t in index}
            untagged_tracks += not known
            for i in known:
                counts[i] += 1
        n = len(tag_lists)
        if n == 0:
            raise LoaderError("balancing by tags needs training tracks; the index has none")
        weights = tuple(1.0 / c if c else 0.0 for c in counts)
        present = [w for w in weights if w > 0]
        untagged = min(present) if present else 1.0
        # Each present tag's tracks sum to 1, so the mean unscaled weight is closed-form.
        mean = (len(present) + untagged_tracks * untagged) / n
        return cls(weights, untagged, 1.0 / mean)

    def __call__(self, y: torch.Tensor) -> torch.Tensor:
        """[B] weights for multi-hot labels [B, C]."""
        a = torch.tensor(self.tag_weights, dtype=y.dtype, device=y.device)
        raw = y @ a
        raw = torch.where(y.sum(dim=1) > 0, raw, torch.full_like(raw, self.untagged))
        return raw * self.scale


def load_tag_balance(cfg: RunConfig, vocabulary) -> TagBalance:
    from tagtrain.probe import read_index

    index = read_index(cfg.data, cfg.effective_storage_options())
    rows = [r for r in index.select(["split", "tags"]).to_pylist() if r["split"] == cfg.train_split]
    return TagBalance.from_tags([r["tags"] or [] for r in rows], vocabulary)


# --- the trainer -----------------------------------------------------------------------


class RampSchedule(train.Schedule):
    """AdamW; the rate follows `lr_factor` step by step; no phase changes, no early stop
    (the best epoch by validation loss is still kept as best.pt)."""

    def __init__(self, cfg: RunConfig, options: PatchoutOptions):
        super().__init__(cfg)
        self.recipe = options
        self.phase = "adamw"
        self.lr = cfg.lr * lr_factor(0.0, options)

    def make_optimizer(self, params) -> torch.optim.Optimizer:
        return torch.optim.AdamW(params, lr=self.lr, weight_decay=self.cfg.weight_decay)

    def set_epoch(self, epoch: float, optimizer: torch.optim.Optimizer) -> None:
        self.lr = self.cfg.lr * lr_factor(epoch, self.recipe)
        for group in optimizer.param_groups:
            group["lr"] = self.lr

    def after_epoch(self, epoch: int) -> str | None:
        return None


class PatchoutTrainer(train.Trainer):
    def __init__(self, cfg: RunConfig, options: PatchoutOptions, resume: bool = False):
        self.recipe = options.validate(cfg.model)
        self.swa: AveragedModel | None = None
        self._live_state: dict | None = None  # the live weights while the average is loaded
        self._saving: str | None = None
        self._steps_per_epoch = 1
        super().__init__(cfg, resume)
        if not resume:
            self._install_schedule()
        self.model.set_patchout(
            time=options.resolved_time_patchout(self.model.input_spec.seconds),
            freq=options.freq_patchout,
            inference=options.inference_patchout,
        )
        self.balance = load_tag_balance(cfg, self.vocabulary) if options.balance == "tags" else None

    def _install_schedule(self) -> None:
        self.schedule = RampSchedule(self.cfg, self.recipe)
        self.optimizer = self.schedule.make_optimizer(self.model.parameters())

    def _resume(self) -> None:
        self._install_schedule()  # the saved optimizer state is AdamW's
        super()._resume()
        state = ckpt.load_checkpoint(self.run_dir / ckpt.LAST, map_location=self.device)
        if state.get("swa"):
            self.swa = AveragedModel(self.model)
            self.swa.load_state_dict(state["swa"])

    def run(self) -> dict:
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            text = json.dumps(self.recipe.to_dict(), indent=2, sort_keys=True)
            (self.run_dir / OPTIONS_FILE).write_text(text + "\n")
            m = self.model
            print(
                f"patchout recipe: drop {m.time_patchout} of {m.grid[1]} time columns and "
                f"{m.freq_patchout} of {m.grid[0]} frequency rows in training"
                f"{' and inference' if m.inference_patchout else ''}; "
                + ", ".join(f"{k} {v}" for k, v in self.recipe.to_dict().items()),
                flush=True,
            )
        return super().run()

    # -- steps

    def _train_epoch(self, epoch, log, start, budget, kill_at):
        cfg, loader = self.cfg, self.train_loader_cfg
        assignment = assign_shards(
            self.train_shards, loader.world, loader.slots, cfg.seed, epoch, shuffle=True
        )
        steps = planned_steps(assignment, cfg.batch_size)
        if cfg.max_steps_per_epoch:
            steps = min(steps, cfg.max_steps_per_epoch)
        self._steps_per_epoch = max(1, steps)
        return super()._train_epoch(epoch, log, start, budget, kill_at)

    def _step(self, batch) -> float:
        progress = self.progress
        self.schedule.set_epoch(
            progress.epoch + progress.epoch_step / self._steps_per_epoch, self.optimizer
        )
        return super()._step(batch)

    def _loss(self, batch) -> torch.Tensor:
        o = self.recipe
        x = self.device_input(batch.x)
        y = batch.y.to(self.device, non_blocking=True)
        weights = self.balance(y) if self.balance is not None else None
        x = spec_mask(x, o.freq_mask, o.time_mask)
        if o.mixup_alpha > 0:
            x, y, weights = mixup(x, y, weights, o.mixup_alpha)
        dtype = self.autocast_dtype
        with torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None):
            logits = self.net(x)
        per_track = F.binary_cross_entropy_with_logits(logits.float(), y, reduction="none")
        per_track = per_track.mean(dim=1)
        return (per_track * weights).mean() if weights is not None else per_track.mean()

    # -- weight averaging

    def _swa_due(self, epoch: int) -> bool:
        o, done = self.recipe, epoch + 1
        return o.swa_start > 0 and done >= o.swa_start and (done - o.swa_start) % o.swa_every == 0

    def _end_epoch(self, epoch, outcome, log, partial):
        if not partial and self._swa_due(epoch):
            if self.swa is None:
                self.swa = AveragedModel(self.model)
            self.swa.update_parameters(self.model)
        if self.swa is None:
            return super()._end_epoch(epoch, outcome, log, partial)
        if self.dist.is_main:
            n = int(self.swa.n_averaged)
            print(f"validating the average of {n} epoch(s) of weights (SWA)", flush=True)
        # Validate (and keep as best.pt) the averaged weights; last.pt keeps the live ones.
        self._live_state = copy.deepcopy(self.model.state_dict())
        self.model.load_state_dict(self.swa.module.state_dict())
        try:
            return super()._end_epoch(epoch, outcome, log, partial)
        finally:
            self.model.load_state_dict(self._live_state)
            self._live_state = None

    def save(self, name: str, positions) -> None:
        self._saving = name
        try:
            super().save(name, positions)
        finally:
            self._saving = None

    def _payload(self, positions) -> dict:
        payload = super()._payload(positions)
        payload["patchout"] = self.recipe.to_dict()
        if self._saving != ckpt.BEST:
            if self._live_state is not None:
                payload["model"] = self._live_state
            if self.swa is not None:
                payload["swa"] = self.swa.state_dict()
        return payload


# --- command line ---------------------------------------------------------------------

# field -> (type, help); the booleans are flags.
_FLAGS = {
    "time_patchout": (int, "time patch columns dropped in training (default: 3 per second)"),
    "freq_patchout": (int, "frequency patch rows dropped in training (default 0)"),
    "warmup_epochs": (float, "exponential warm-up length in epochs (default 5)"),
    "rampdown_start": (float, "epoch where the linear ramp-down starts (default 50)"),
    "rampdown_epochs": (float, "ramp-down length in epochs (default 50)"),
    "last_lr_factor": (float, "learning rate after the ramp-down, as a fraction (default 0.01)"),
    "swa_start": (int, "average weights from this many epochs on (default 50; 0 = off)"),
    "swa_every": (int, "epochs between averaged weights (default 5)"),
    "mixup_alpha": (float, "mixup Beta(a, a) parameter (default 0.3; 0 = off)"),
    "freq_mask": (int, "widest frequency mask in mel bins (default 0 = off)"),
    "time_mask": (int, "widest time mask in frames (default 0 = off)"),
    "balance": (str, "none or tags: loss weights by inverse tag frequency (default none)"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    train.add_arguments(parser)
    group = parser.add_argument_group("patchout recipe")
    for name, (kind, text) in _FLAGS.items():
        group.add_argument(
            "--" + name.replace("_", "-"),
            type=kind,
            default=None,
            choices=BALANCE_MODES if name == "balance" else None,
            help=text,
        )
    group.add_argument(
        "--inference-patchout",
        action="store_true",
        help="drop the same patches, evenly spaced, at validation (faster, less accurate)",
    )


def config_from_args(args: argparse.Namespace) -> tuple[RunConfig, PatchoutOptions]:
    cfg = train.config_from_args(args)
    saved = {}
    if args.resume:
        path = cfg.run_dir() / OPTIONS_FILE
        if path.is_file():
            saved = json.loads(path.read_text())
    flags = {k: getattr(args, k) for k in _FLAGS if getattr(args, k) is not None}
    if args.inference_patchout:
        flags["inference_patchout"] = True
    options = PatchoutOptions.from_dict({**saved, **flags}, "patchout options")
    if not args.resume:
        # Model selection by validation loss, never an early stop; the rate is the ramp's.
        fixed = {"schedule": "early_stop", "patience": 0}
        if not cfg.epochs:
            fixed["epochs"] = max(1, math.ceil(options.rampdown_start + options.rampdown_epochs))
        cfg = apply(cfg, fixed, COMMAND).validate()
    return cfg, options.validate(cfg.model)


def run(args: argparse.Namespace) -> int:
    def build():
        cfg, options = config_from_args(args)
        return PatchoutTrainer(cfg, options, resume=args.resume)

    return train.run_trainer(build)


__all__ = [
    "PatchoutOptions",
    "PatchoutTrainer",
    "RampSchedule",
    "TagBalance",
    "lr_factor",
    "mixup",
    "spec_mask",
]
