"""Recipes: what a training run feeds the loop. A recipe says which batches an epoch
reads, what loss a batch gives, which schedule and callbacks it uses and what it adds to
the run directory and the checkpoints; the loop (tagtrain.training.loop) does the rest.

`Supervised` is plain tagging (BCE on logits) and the base of the others: noisy-student
training (tagtrain.training.student) and the PaSST/MAEST patchout objective
(tagtrain.training.patchout).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tagtrain.run.config import RunConfig
from tagtrain.training.callbacks import Callback
from tagtrain.training.schedules import Schedule


class Supervised:
    name = "supervised"
    settings_file: str | None = None  # a JSON file of the recipe's settings in the run
    # Whether a mid-epoch checkpoint's loader positions are the loader's own state, which
    # a run with another world size or worker count can resume from (checkpoint.py).
    elastic_resume = True

    def augment_chain(self, cfg: RunConfig):
        """The waveform augmentation chain (None: off); config.json records it."""
        from tagtrain.training.augment_chain import resolve_chain

        return resolve_chain(cfg.augment)

    def schedule(self, cfg: RunConfig) -> Schedule:
        return Schedule(cfg)

    def callbacks(self, trainer) -> list[Callback]:
        return []

    def setup(self, trainer) -> None:
        """After the model, data and optimiser exist (before a resume restores them)."""

    def reader(self, trainer, epoch: int, resume: torch.Tensor | None):
        """The epoch's training batches, from the checkpointed positions `resume`."""
        return trainer.data.reader(trainer.data.train_shards, epoch, resume)

    def loss(self, trainer, batch) -> torch.Tensor:
        x = trainer.data.device_input(batch.x)
        y = batch.y.to(trainer.rt.device, non_blocking=True)
        weights = None
        for callback in trainer.callbacks:
            x, y, weights = callback.transform(x, y, weights)
        with trainer.rt.autocast():
            logits = trainer.net(x).float()
        if weights is None:
            return F.binary_cross_entropy_with_logits(logits, y)
        per_track = F.binary_cross_entropy_with_logits(logits, y, reduction="none").mean(dim=1)
        return (per_track * weights).mean()

    def model_setup(self, model) -> dict:
        """Method name -> kwargs to call on a rebuilt model for inference (checkpoints)."""
        return {}

    def settings(self) -> dict:
        return {}

    def describe(self, trainer) -> list[str]:
        """Lines added to the run's header."""
        return []

    def summary(self, trainer) -> dict:
        """Entries added to summary.json."""
        return {}
