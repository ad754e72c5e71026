"""Learning-rate schedules and model selection; a schedule's state is plain values.

(a) `adam_sgd` (Won et al. 2020's reference code): Adam (lr 1e-4, wd 1e-4) for
    `adam_epochs`, then reload the best checkpoint and switch to SGD (Nesterov, momentum
    0.9) at 1e-3, reloading the best and dividing the rate by 10 after each of
    `sgd_drop_after` more epochs (20, 40); 200 epochs in all.
(b) `early_stop`: Adam with early stopping after `patience` epochs without improvement;
    with `plateau_halving` N the rate is halved after every N epochs in a row without
    improvement (the best weights are not reloaded).
(c) `Ramp` (PaSST/MAEST): AdamW, the rate set every step from a fractional-epoch
    exponential warm-up and linear ramp-down (`lr_factor`).

Selection: `observe` takes the epoch's criterion value, lower is better (the loop passes
the validation loss, or minus the ROC-AUC with `--select roc_auc`).
"""

from __future__ import annotations

import math

import torch

from tagtrain.run.config import RunConfig


class Schedule:
    """Schedules (a) and (b)."""

    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        self.phase = "adam"
        self.lr = cfg.lr
        if cfg.schedule == "adam_sgd" and cfg.adam_epochs == 0:
            self.phase, self.lr = "sgd", cfg.sgd_lr
        self.best_value = math.inf
        self.best_epoch = -1
        self.bad_epochs = 0
        self.stopped = False

    def make_optimizer(self, params) -> torch.optim.Optimizer:
        cfg = self.cfg
        if self.phase == "adam":
            decay = cfg.weight_decay if cfg.adam_weight_decay is None else cfg.adam_weight_decay
            return torch.optim.Adam(params, lr=self.lr, weight_decay=decay)
        return torch.optim.SGD(
            params, lr=self.lr, momentum=cfg.sgd_momentum, nesterov=cfg.sgd_nesterov,
            weight_decay=cfg.weight_decay,
        )  # fmt: skip

    def before_step(self, epoch: float, optimizer: torch.optim.Optimizer) -> None:
        """Called before every step with the fractional epoch; (a) and (b) change nothing."""

    def observe(self, epoch: int, value: float, count: bool = True) -> bool:
        """Record an epoch's criterion value (lower is better); True when it is the best so
        far. `count=False` (a partial epoch) does not count towards the patience."""
        if math.isfinite(value) and value < self.best_value:
            self.best_value, self.best_epoch = value, epoch
            if count:
                self.bad_epochs = 0
            return True
        if count:
            self.bad_epochs += 1
        return False

    def after_epoch(self, epoch: int) -> str | None:
        """Advance past `epoch` (0-based). Returns "switch" (reload best, new SGD
        optimiser), "drop" (reload best, lr / 10), "halve" (lr / 2, (b) with
        plateau_halving) or None; sets `stopped` for (b)."""
        done = epoch + 1
        cfg = self.cfg
        if cfg.schedule == "early_stop":
            if self.bad_epochs >= cfg.patience > 0:
                self.stopped = True
                return None
            halving = cfg.plateau_halving
            if halving and self.bad_epochs and self.bad_epochs % halving == 0:
                self.lr /= 2.0
                return "halve"
            return None
        if self.phase == "adam" and done == cfg.adam_epochs:
            self.phase, self.lr = "sgd", cfg.sgd_lr
            return "switch"
        if self.phase == "sgd" and (done - cfg.adam_epochs) in cfg.sgd_drop_after:
            self.lr /= 10.0
            return "drop"
        return None

    def state_dict(self) -> dict:
        keys = ("phase", "lr", "best_value", "best_epoch", "bad_epochs", "stopped")
        return {k: getattr(self, k) for k in keys}

    def load_state_dict(self, state: dict) -> None:
        state = dict(state)
        if "best_loss" in state:  # checkpoints written before selection was selectable
            state["best_value"] = state.pop("best_loss")
        for k, v in state.items():
            setattr(self, k, v)


def lr_factor(epoch: float, options) -> float:
    """Learning-rate multiplier at a fractional epoch: PaSST's exp warm-up x linear
    ramp-down. `options` has warmup_epochs, rampdown_start, rampdown_epochs, last_lr_factor."""
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


class RampSchedule(Schedule):
    """(c): AdamW; the rate follows `lr_factor` step by step; no phase changes, no early
    stop (the best epoch by the criterion is still kept as best.pt)."""

    def __init__(self, cfg: RunConfig, options):
        super().__init__(cfg)
        self.options = options
        self.phase = "adamw"
        self.lr = cfg.lr * lr_factor(0.0, options)

    def make_optimizer(self, params) -> torch.optim.Optimizer:
        return torch.optim.AdamW(params, lr=self.lr, weight_decay=self.cfg.weight_decay)

    def before_step(self, epoch: float, optimizer: torch.optim.Optimizer) -> None:
        self.lr = self.cfg.lr * lr_factor(epoch, self.options)
        for group in optimizer.param_groups:
            group["lr"] = self.lr

    def after_epoch(self, epoch: int) -> str | None:
        return None
