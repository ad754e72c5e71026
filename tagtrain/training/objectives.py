"""Objectives: what a training run feeds the loop. An objective says which batches an
epoch reads, what loss a batch gives, which schedule and callbacks it uses and what it adds
to the run directory and the checkpoints; the loop (tagtrain.training.loop) does the rest.
(A *recipe* is something else: a paper's settings, a YAML file in tagtrain/recipes/.)

Every hook gets the run's `TrainingContext` (tagtrain.training.context), never the trainer.
`Supervised` is plain tagging (BCE on logits) and the base of the others: noisy-student
training (tagtrain.training.student) and the PaSST/MAEST patchout objective
(tagtrain.training.patchout).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tagtrain.run.config import RunConfig
from tagtrain.training.callbacks import Callback
from tagtrain.training.context import TrainingContext
from tagtrain.training.schedules import Schedule


class Supervised:
    name = "supervised"
    settings_file: str | None = None  # a JSON file of the objective's settings in the run
    # Whether a mid-epoch checkpoint's loader positions are the loader's own state, which
    # a run with another world size or worker count can resume from (training/state.py).
    elastic_resume = True

    def augment_chain(self, cfg: RunConfig):
        """The training augmentation chain (None: off); config.json records it."""
        from tagtrain.training.augment_chain import resolve_chain

        return resolve_chain(cfg.augment)

    def schedule(self, cfg: RunConfig) -> Schedule:
        return Schedule(cfg)

    def callbacks(self, ctx: TrainingContext) -> list[Callback]:
        return []

    def setup(self, ctx: TrainingContext) -> None:
        """After the model, data and optimiser exist (before a resume restores them)."""

    def reader(self, ctx: TrainingContext, epoch: int, resume: torch.Tensor | None):
        """The epoch's training batches, from the checkpointed positions `resume`."""
        return ctx.data.reader(ctx.data.train_shards, epoch, resume)

    def loss(self, ctx: TrainingContext, batch) -> torch.Tensor:
        x = ctx.data.device_input(batch.x)
        y = batch.y.to(ctx.rt.device, non_blocking=True)
        weights = None
        for callback in ctx.callbacks:
            x, y, weights = callback.transform(x, y, weights)
        with ctx.rt.autocast():
            logits = ctx.net(x).float()
        if weights is None:
            return F.binary_cross_entropy_with_logits(logits, y)
        per_track = F.binary_cross_entropy_with_logits(logits, y, reduction="none").mean(dim=1)
        return (per_track * weights).mean()

    def model_setup(self, model) -> dict:
        """Method name -> kwargs to call on a rebuilt model for inference (checkpoints)."""
        return {}

    def settings(self) -> dict:
        return {}

    def describe(self, ctx: TrainingContext) -> list[str]:
        """Lines added to the run's header."""
        return []

    def summary(self, ctx: TrainingContext) -> dict:
        """Entries added to summary.json."""
        return {}
