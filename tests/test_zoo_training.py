"""Every model of the zoo trains through the real loader on the demo shards (issue 7).

The demo dataset stores 128-band mel and PCM at 16 kHz; models that want another mel
(96 bands, log10(1 + 10000 x)) get it computed on the device from the stored PCM by the
pipeline's own function, which is part of what this exercises. The Music Tagging
Transformers want 22,050 Hz audio: tests/test_student.py prepares the demo corpus at that
rate and trains both through the same loader."""

from __future__ import annotations

import csv
import math

import pytest
import torch

from tagtrain.commands.train import train
from tagtrain.models.registry import list_models
from tagtrain.run.config import RunConfig

AT_16K = [e.name for e in list_models() if e.input_spec.sample_rate == 16000]


@pytest.mark.slow
@pytest.mark.parametrize("name", AT_16K)
def test_model_trains_a_few_steps_on_the_demo_shards(name, demo_dataset, tmp_path):
    torch.set_num_threads(1)
    run = tmp_path / name
    cfg = RunConfig(
        data=str(demo_dataset),
        model=name,
        out=str(run),
        width=0.125,
        batch_size=2,
        workers=0,
        shuffle_buffer=4,
        epochs=1,
        max_steps_per_epoch=2,
        val_chunks=1,
        schedule="early_stop",
        lr=1e-3,
        progress=False,
    )
    summary = train(cfg)
    assert summary["global_step"] == 2
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert math.isfinite(float(rows[-1]["train_loss"])) and math.isfinite(
        float(rows[-1]["val_loss"])
    )
    assert (run / "best.pt").exists()
