"""Exact resume with several loader workers: killed after any step, odd or even, a resumed
run trains on the same batches in the same order and ends with the same weights, bit for
bit, as an uninterrupted run (issue 18: the DataLoader's worker turn-taking restarted at
worker 0 on resume, swapping two steps after a kill at an odd batch position)."""

from __future__ import annotations

import pytest
import torch

from tagtrain.commands.train import KILL_AT_STEP_ENV
from tagtrain.run import checkpoint as ckpt
from tests import shardkit
from tests.test_train import logged_steps, trainer_cli

FLAGS = [
    "--model", "short_chunk_cnn", "--width", "0.125", "--batch-size", "2", "--workers", "2",
    "--shuffle-buffer", "4", "--val-chunks", "1", "--no-progress", "--log-samples",
    "--epochs", "2", "--checkpoint-every", "1",
]  # fmt: skip


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("shards")
    card = shardkit.make_dataset(out, {"train": [4, 4, 4], "valid": [2]}, seed=5)
    run = tmp_path_factory.mktemp("whole") / "run"
    done = trainer_cli("--data", str(out), "--out", str(run), *FLAGS)
    assert done.returncode == 0, done.stderr[-2000:]
    return out, card, run


@pytest.mark.parametrize("kill_at", [8, 9])  # epoch 2 holds steps 7..12: odd and even
def test_resume_with_two_workers_is_bit_identical_wherever_killed(uninterrupted, tmp_path, kill_at):
    out, card, whole = uninterrupted
    run = tmp_path / "run"
    killed = trainer_cli(
        "--data", str(out), "--out", str(run), *FLAGS, env={KILL_AT_STEP_ENV: str(kill_at)}
    )
    assert killed.returncode == -9, killed.stderr[-2000:]
    before = logged_steps(run)
    assert [s for _, s, _ in before] == list(range(1, kill_at + 1))
    resumed = trainer_cli("--out", str(run), "--resume", "--no-progress")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    after = logged_steps(run)[len(before) :]
    assert logged_steps(whole) == before + after  # the same keys at every step, in order
    epoch2 = [k for e, _, keys in before + after if e == 1 for k in keys]
    assert sorted(epoch2) == shardkit.split_keys(card, "train")
    resumed_weights = ckpt.load_checkpoint(run / "last.pt")["model"]
    for name, tensor in ckpt.load_checkpoint(whole / "last.pt")["model"].items():
        assert torch.equal(resumed_weights[name], tensor), name


@pytest.mark.parametrize("workers", ["1", "3"])
def test_resume_with_other_worker_counts_sees_each_sample_once(uninterrupted, tmp_path, workers):
    out, card, _ = uninterrupted
    run = tmp_path / "run"
    killed = trainer_cli("--data", str(out), "--out", str(run), *FLAGS, env={KILL_AT_STEP_ENV: "9"})
    assert killed.returncode == -9, killed.stderr[-2000:]
    before = logged_steps(run)
    resumed = trainer_cli("--out", str(run), "--resume", "--no-progress", "--workers", workers)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    epoch2 = [k for e, _, keys in logged_steps(run) if e == 1 for k in keys]
    assert len(epoch2) == len(set(epoch2)) == 12  # every sample of the epoch exactly once
    assert len(logged_steps(run)) - len(before) == 3
