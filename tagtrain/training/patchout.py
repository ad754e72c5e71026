"""The PaSST/MAEST training objective on the streaming trainer (`python -m tagtrain train-patchout`).

Every `train` flag works here too (data sources, DDP, checkpoints, --resume, time budget);
the run directory is the trainer's, plus `patchout.json` (the options below). The objective
(`PatchoutObjective`) adds to the loop (tagtrain.training.loop):

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
- SpecAugment-style masking (`--freq-mask F --time-mask T`): per sample,
  `--freq-mask-count` bands of uniform width in [0, F) mel bins and `--time-mask-count`
  spans of width in [0, T) frames set to 0, the mean after normalisation (torchaudio's
  masks, written here: torchaudio is not a dependency), each sample with probability
  `--mask-p`.
- MAEST's balanced sample (`--epoch-samples N --balance inverse_frequency`, run settings
  of every training command): each epoch draws N tracks without replacement, weighted by
  inverse tag frequency (tagtrain.training.data).
- Loss weights by inverse tag frequency (`--loss-balance tags`), the alternative without
  an epoch sample: importance weights on the loss: a track's weight is the sum over its tags of
  1 / (train tracks with that tag) (tracks without tags: the smallest such term), scaled
  to mean 1 over the training split. In expectation the gradient equals that of sampling
  tracks with probability proportional to the weight (PaSST's balanced sampler), with
  more variance. Tag counts come from the dataset's index.parquet.
- Teacher-student (MAEST's `maest_30s_from_passt_teacher_student_pretrain`, model
  `maest_30s_ts`): `--teacher RUN` (a finished run on the same features and tags) tags
  each clean training batch; its probabilities above `--teacher-threshold` (0.45; none
  above: the most probable tag) are the targets of the distillation-token head, the
  labels those of the CLS head, loss (BCE(CLS, y) + BCE(dist, teacher)) / 2, mixup on both
  (callbacks.TeacherTargets). Validation, selection and inference use the CLS head.
Defaults are MAEST's (warm-up 5, ramp-down 50 -> 100 to 0.01, SWA from epoch 50 every 5,
mixup 0.3); masking and balancing are off unless asked for.

`python -m tagtrain train --model patchout_tiny ...` trains the same models with the
generic schedules; structured patchout then runs at the model's defaults.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass

from pipelines.core.flags import setting
from tagtrain.models.patchout import (
    PATCHOUT_MODELS,
    SEPARATED_MODELS,
    default_time_patchout,
    grid_size,
)
from tagtrain.models.registry import get_entry
from tagtrain.run.config import ConfigError, ObjectiveSettings, RunConfig
from tagtrain.run.directory import RunDir
from tagtrain.training.callbacks import (
    SWA,
    Mixup,
    SpecMask,
    TagBalance,
    TagBalancing,
    TeacherTargets,
    mixup,
    spec_mask,
)
from tagtrain.training.context import TrainingContext
from tagtrain.training.loop import Trainer
from tagtrain.training.objectives import Supervised
from tagtrain.training.schedules import RampSchedule, lr_factor

OPTIONS_FILE = RunDir.PATCHOUT
BALANCE_MODES = ("none", "tags")
INIT_CHECKPOINT = ("optional", "required")


@dataclass
class PatchoutOptions(ObjectiveSettings):
    time_patchout: int | None = setting(
        None, "time patch columns dropped in training (unset: the model's, 3 per second)"
    )
    freq_patchout: int = setting(0, "frequency patch rows dropped in training")
    inference_patchout: bool = setting(
        False, "drop the same patches, evenly spaced, at validation (faster, less accurate)"
    )
    warmup_epochs: float = setting(5.0, "exponential warm-up length in epochs")
    rampdown_start: float = setting(50.0, "epoch where the linear ramp-down starts")
    rampdown_epochs: float = setting(50.0, "ramp-down length in epochs")
    last_lr_factor: float = setting(0.01, "learning rate after the ramp-down, as a fraction")
    swa_start: int = setting(50, "average weights from this many epochs on (0 = off)")
    swa_every: int = setting(5, "epochs between averaged weights")
    mixup_alpha: float = setting(0.3, "mixup Beta(a, a) parameter (0 = off)")
    freq_mask: int = setting(0, "widest frequency mask in mel bins (0 = off)")
    time_mask: int = setting(0, "widest time mask in frames (0 = off)")
    freq_mask_count: int = setting(1, "frequency masks per sample (Alonso-Jiménez et al. 2023: 5)")
    time_mask_count: int = setting(1, "time masks per sample (Alonso-Jiménez et al. 2023: 20)")
    mask_p: float = setting(1.0, "probability that a sample is masked at all")
    loss_balance: str = setting(
        "none", "tags: loss weights by inverse tag frequency", choices=BALANCE_MODES
    )
    init_checkpoint: str = setting(
        "optional",
        "required: refuse to start a run without --init FILE (a PaSST/MAEST checkpoint; "
        "the MAEST recipes)",
        choices=INIT_CHECKPOINT,
    )
    teacher: str = setting("", "teacher run directory (teacher-student models: maest_30s_ts)")
    teacher_checkpoint: str = setting("best", "teacher checkpoint", choices=("best", "last"))
    teacher_threshold: float = setting(
        0.45, "teacher probability above which a tag is a distillation target"
    )

    def validate(self, model: str) -> PatchoutOptions:
        if model not in PATCHOUT_MODELS:
            raise ConfigError(
                f"train-patchout trains patchout models ({', '.join(PATCHOUT_MODELS)}), "
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
        non_negative = (
            "warmup_epochs", "rampdown_start", "rampdown_epochs", "swa_start", "mixup_alpha",
            "freq_mask", "time_mask", "freq_mask_count", "time_mask_count",
        )  # fmt: skip
        for name in non_negative:
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must not be negative, got {getattr(self, name)}")
        if not 0 < self.last_lr_factor <= 1:
            raise ConfigError(f"last_lr_factor must be in (0, 1], got {self.last_lr_factor}")
        if self.swa_every < 1:
            raise ConfigError(f"swa_every must be at least 1, got {self.swa_every}")
        if (model in SEPARATED_MODELS) != bool(self.teacher):
            raise ConfigError(
                f"{model} learns from a teacher: give --teacher RUN"
                if model in SEPARATED_MODELS
                else f"--teacher needs a teacher-student model ({', '.join(SEPARATED_MODELS)})"
            )
        if not 0 < self.teacher_threshold < 1:
            raise ConfigError(f"teacher_threshold must be in (0, 1), got {self.teacher_threshold}")
        if not 0 <= self.mask_p <= 1:
            raise ConfigError(f"mask_p must be in [0, 1], got {self.mask_p}")
        for name, value, allowed in (
            ("loss_balance", self.loss_balance, BALANCE_MODES),
            ("init_checkpoint", self.init_checkpoint, INIT_CHECKPOINT),
        ):
            if value not in allowed:
                raise ConfigError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
        return self

    def check_init(self, init: str, resume: bool) -> None:
        """`init_checkpoint: required` (MAEST: initialisation is the paper's point) refuses a
        new run without `--init FILE`, before anything is read."""
        if self.init_checkpoint == "required" and not init and not resume:
            raise ConfigError(
                "this run must start from a PaSST/MAEST checkpoint (init_checkpoint: "
                "required): give --init FILE"
            )

    @classmethod
    def from_settings(cls, values, source: str):
        values = dict(values)
        if "balance" in values:  # patchout.json of runs before the epoch sample's --balance
            values["loss_balance"] = values.pop("balance")
        return super().from_settings(values, source)

    # The run config (tagtrain.run.config.build_run_config): --resume reads patchout.json.
    saved_file = RunDir.PATCHOUT

    def fixed_settings(self, cfg: RunConfig, resume: bool) -> dict:
        """A new run's settings this objective decides: model selection by validation loss,
        never an early stop (the rate is the ramp's); epochs to the end of the ramp-down."""
        if resume:
            return {}
        fixed = {"schedule": "early_stop", "patience": 0}
        if not cfg.epochs:
            fixed["epochs"] = max(1, math.ceil(self.rampdown_start + self.rampdown_epochs))
        return fixed

    def resolved_time_patchout(self, seconds: float) -> int:
        return default_time_patchout(seconds) if self.time_patchout is None else self.time_patchout

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def load_tag_balance(cfg: RunConfig, vocabulary) -> TagBalance:
    from tagtrain.loader.index import read_index

    index = read_index(cfg.data, cfg.effective_storage_options())
    rows = [r for r in index.select(["split", "tags"]).to_pylist() if r["split"] == cfg.train_split]
    return TagBalance.from_tags([r["tags"] or [] for r in rows], vocabulary)


def load_patchout_teacher(ctx: TrainingContext, run_dir: str, checkpoint: str):
    """The frozen teacher model of a finished run that eats exactly the student's input
    (same tags, features, crop and normalisation); one-line error otherwise."""
    from tagtrain.inference.trained_run import RunError, load_run

    run = load_run(run_dir, checkpoint, str(ctx.rt.device))
    if run.vocabulary != list(ctx.vocabulary):
        raise RunError(f"the teacher {run_dir} was trained on other tags than this dataset")
    fields = ("kind", "length", "features", "standardize", "global_stats")
    ours, theirs = ctx.data.plan, run.plan
    differ = [f for f in fields if getattr(ours, f, None) != getattr(theirs, f, None)]
    if differ:
        raise ConfigError(
            f"the teacher {run.model_name} must see the student's input; its {', '.join(differ)} "
            f"differ (train the teacher on the same features and crop length)"
        )
    return run.model.requires_grad_(False)


class PatchoutObjective(Supervised):
    """Supervised batches and loss, structured patchout on the model, the ramp schedule,
    and the callbacks the options ask for (tag balancing, masking, mixup, SWA)."""

    name = "patchout"
    settings_file = RunDir.PATCHOUT

    def __init__(self, options: PatchoutOptions, model: str):
        self.options = options.validate(model)

    def schedule(self, cfg: RunConfig) -> RampSchedule:
        return RampSchedule(cfg, self.options)

    def callbacks(self, ctx: TrainingContext) -> list:
        o = self.options
        chosen = []
        if o.teacher:  # first: the teacher sees the batch before masks and mixup
            teacher = load_patchout_teacher(ctx, o.teacher, o.teacher_checkpoint)
            chosen.append(TeacherTargets(teacher, o.teacher_threshold, ctx.rt.autocast_dtype))
        if o.loss_balance == "tags":  # weights first: mixup mixes them with the labels
            chosen.append(TagBalancing(load_tag_balance(ctx.cfg, ctx.vocabulary)))
        if (o.freq_mask or o.time_mask) and o.mask_p > 0:
            masks = (o.freq_mask_count, o.time_mask_count, o.mask_p)
            chosen.append(SpecMask(o.freq_mask, o.time_mask, *masks))
        if o.mixup_alpha > 0:
            chosen.append(Mixup(o.mixup_alpha))
        return [*chosen, SWA(ctx.model, o.swa_start, o.swa_every)]

    def setup(self, ctx: TrainingContext) -> None:
        o, model = self.options, ctx.model
        model.set_patchout(**self.model_setup(model)["set_patchout"])
        if o.teacher:
            model.set_distillation_output(True)
        text = json.dumps(o.to_dict(), indent=2, sort_keys=True)
        ctx.files.write(RunDir.PATCHOUT, text + "\n")

    def model_setup(self, model) -> dict:
        o = self.options
        time = o.resolved_time_patchout(model.input_spec.seconds)
        patchout = {"time": time, "freq": o.freq_patchout, "inference": o.inference_patchout}
        return {"set_patchout": patchout}

    def settings(self) -> dict:
        return self.options.to_dict()

    def describe(self, ctx: TrainingContext) -> list[str]:
        m = ctx.model
        return [
            f"patchout objective: drop {m.time_patchout} of {m.grid[1]} time columns and "
            f"{m.freq_patchout} of {m.grid[0]} frequency rows in training"
            f"{' and inference' if m.inference_patchout else ''}; "
            + ", ".join(f"{k} {v}" for k, v in self._shown_options().items())
        ]

    def _shown_options(self) -> dict:
        shown = self.options.to_dict()
        if not shown["teacher"]:  # the teacher settings mean nothing without a teacher
            shown = {k: v for k, v in shown.items() if not k.startswith("teacher")}
        return shown


def PatchoutTrainer(
    cfg: RunConfig, options: PatchoutOptions, resume: bool = False, init_weights=None
) -> Trainer:
    """The loop with the patchout objective."""
    options.check_init(cfg.init, resume)
    if options.loss_balance != "none" and cfg.balance != "none":
        raise ConfigError("--loss-balance and --balance both weight by tag frequency: choose one")
    return Trainer(cfg, PatchoutObjective(options, cfg.model), resume, init_weights)


__all__ = [
    "PatchoutOptions",
    "PatchoutObjective",
    "PatchoutTrainer",
    "RampSchedule",
    "TagBalance",
    "lr_factor",
    "mixup",
    "spec_mask",
]
