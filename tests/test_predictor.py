"""The one windowed predictor (tagtrain/inference/predict.py): a track's windows cover it
(the last aligned with its end, a short track padded to one), the per-window outputs do not
depend on how many windows share a forward, their average is the track's probabilities,
and `batch_probabilities` (the teachers' forward) gives the same numbers as a target that
training can use, leaving the model's mode as it was."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tagtrain.inference.predict import (
    TrackWindows,
    WindowPredictor,
    average,
    batch_probabilities,
    window_offsets,
)
from tagtrain.models.registry import create_model


def test_windows_cover_the_track_and_the_last_ends_with_it():
    assert window_offsets(100, 30) == [0, 30, 60, 70]
    assert window_offsets(90, 30) == [0, 30, 60]
    assert window_offsets(10, 30) == [0]
    pcm = torch.arange(100, dtype=torch.int16)
    windows = TrackWindows.of(pcm, 30)
    assert len(windows) == 4 and not windows.padded
    batch = windows[2:4]
    assert batch.shape == (2, 30) and batch.dtype == torch.int16
    assert batch[1, -1] == 99 and batch[0, 0] == 60
    assert [windows.new_samples(i) for i in range(4)] == [30, 30, 30, 10]
    short = TrackWindows.of(pcm[:10], 30)
    assert short.padded and len(short) == 1
    assert short[0:1].shape == (1, 30) and short[0:1][0, 10:].abs().sum() == 0


@pytest.fixture(scope="module")
def model_and_windows():
    model = create_model("fcn", 4, seed=0, width=0.125)
    spec = model.input_spec
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.standard_normal((7, spec.n_mels, spec.frames)).astype(np.float32))
    return model, x


def test_outputs_per_window_do_not_depend_on_the_batch_and_average_to_the_track(
    model_and_windows,
):
    model, x = model_and_windows
    model.train()
    taggrams = [WindowPredictor(model, lambda b: b, None, size).taggram(x) for size in (1, 3, 16)]
    assert model.training  # its mode restored
    assert taggrams[0].shape == (7, 4) and taggrams[0].dtype == np.float32
    for other in taggrams[1:]:
        np.testing.assert_allclose(other, taggrams[0], atol=1e-6)
    prediction = WindowPredictor(model, lambda b: b, None, 3).predict(x)
    assert prediction.windows == 7
    np.testing.assert_array_equal(prediction.probabilities, average(prediction.taggram))
    assert prediction.probabilities.dtype == np.float64
    np.testing.assert_allclose(prediction.probabilities, taggrams[0].mean(axis=0), atol=1e-6)
    # Not a constant: the windows differ.
    assert np.abs(taggrams[0][0] - taggrams[0][1]).max() > 1e-4


def test_batch_probabilities_are_the_predictors_and_a_usable_training_target(
    model_and_windows,
):
    model, x = model_and_windows
    model.train()
    p = batch_probabilities(model, x)
    assert model.training and not p.requires_grad and p.dtype == torch.float32
    expected = WindowPredictor(model, lambda b: b, None, len(x)).taggram(x)
    np.testing.assert_array_equal(p.numpy(), expected)
    # A student's loss on the teacher's probabilities trains (an inference-mode tensor
    # could not be saved for backward).
    logits = model(x)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, p)
    loss.backward()
    assert all(q.grad is not None for q in model.parameters() if q.requires_grad)
    model.zero_grad()
