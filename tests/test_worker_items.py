"""What crosses from a loader worker (tagtrain/loader/worker_item.py): numpy arrays by
value, turned into tensors (pinned when asked) on the trainer's side; and the workers die
with their trainer, even when it is SIGKILLed mid-epoch (a worker of a dead trainer would
otherwise block forever at exit, flushing a full pipe that its sibling holds open)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import torch

from tagtrain.loader.stats import LoaderStats
from tagtrain.loader.worker_item import WorkerItem
from tests import shardkit

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_an_items_arrays_become_tensors_sharing_their_memory():
    x = np.arange(12, dtype=np.float16).reshape(2, 2, 3)
    item = WorkerItem(0, np.zeros(5, np.int64), LoaderStats(), x=x, y=np.ones((2, 4), np.float32))
    tensors = item.tensors()
    assert isinstance(tensors.x, torch.Tensor) and tensors.x.dtype == torch.float16
    assert tensors.x.data_ptr() == x.ctypes.data  # no copy
    assert torch.equal(tensors.y, torch.ones(2, 4)) and tensors.clean is None
    assert tensors.tensors().x is tensors.x  # tensors stay as they are
    assert item.x is x  # the item itself is left alone


def test_a_loader_reads_batches_as_tensors_through_workers(tmp_path):
    from tagtrain import loader as data
    from tagtrain.models.registry import get_entry

    shardkit.make_dataset(tmp_path, {"train": [4, 4]}, seed=2)
    card = data.load_card(str(tmp_path), {})
    plan = data.plan_input(card, get_entry("short_chunk_cnn").input_spec)
    shards = data.split_shards(card, str(tmp_path), "train")
    cfg = data.LoaderConfig(batch_size=2, workers=2, seed=0)
    reader = data.EpochReader(data.ShardStream(shards, plan, card["vocabulary"], cfg, 0))
    batches = list(reader)
    assert len(batches) == 4 and all(isinstance(b.x, torch.Tensor) for b in batches)
    assert all(b.x.shape == (2, 128, plan.length) and b.y.shape == (2, 5) for b in batches)
    assert sorted(k for b in batches for k in b.keys) == shardkit.split_keys(card, "train")
    assert reader.stats.samples == 8


def test_loader_workers_die_with_a_killed_trainer(tmp_path):
    shardkit.make_dataset(tmp_path, {"train": [8, 8]}, seed=4)
    script = textwrap.dedent(
        """
        import json, os, sys, time
        import psutil
        from tagtrain import loader as data
        from tagtrain.models.registry import get_entry

        where = sys.argv[1]
        card = data.load_card(where, {})
        plan = data.plan_input(card, get_entry("short_chunk_cnn").input_spec)
        shards = data.split_shards(card, where, "train")
        cfg = data.LoaderConfig(batch_size=2, workers=2, seed=0, prefetch_factor=4)
        reader = data.EpochReader(data.ShardStream(shards, plan, card["vocabulary"], cfg, 0))
        next(iter(reader))  # the workers now fill their pipes (118 kB batches)
        workers = [p.pid for p in psutil.Process().children()]
        print(json.dumps(workers), flush=True)
        time.sleep(600)
        """
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        workers = json.loads(child.stdout.readline())
        assert len(workers) == 2
        time.sleep(1.0)  # their pipes full
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
        deadline = time.monotonic() + 20
        while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.2)
        left = [pid for pid in workers if alive(pid)]
        for pid in left:  # (the test's own clean-up when it fails)
            os.kill(pid, signal.SIGKILL)
        assert not left, "loader workers outlived their killed trainer"
    finally:
        if child.poll() is None:
            child.kill()


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"  # a zombie is dead
    except FileNotFoundError:
        return False
