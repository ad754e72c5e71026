"""A run directory in object storage (issue 18, item 6), against a real S3 server
(SeaweedFS), in one test to start the server once: a checkpoint replaced in the store keeps
its predecessor (the fallback of a corrupt last.pt); `train --out s3://...` killed
mid-epoch resumes from the store and sees every sample of the epoch once; nothing but the
run's whole files appears under its prefix; `load_run` and `evaluate` read the run from
the store."""

from __future__ import annotations

import json

import torch

from tagtrain.commands.train import KILL_AT_STEP_ENV
from tagtrain.inference.trained_run import load_run
from tagtrain.run import checkpoint as ckpt
from tagtrain.run.directory import RunDir
from tests import shardkit
from tests.seaweed import CREDENTIALS
from tests.test_evaluate import cli
from tests.test_train import trainer_cli

FLAGS = [
    "--model", "short_chunk_cnn", "--width", "0.125", "--batch-size", "2", "--workers", "0",
    "--shuffle-buffer", "4", "--val-chunks", "1", "--no-progress", "--log-samples",
    "--epochs", "2", "--checkpoint-every", "1",
]  # fmt: skip
RUN_FILES = {
    "config.json", "last.pt", "last.prev.pt", "best.pt", "metrics.csv", "curves.png",
    "summary.json", "samples-rank0.tsv",
}  # fmt: skip


def steps_logged(text: str) -> list[tuple[int, int, list[str]]]:
    rows = [line.split("\t") for line in text.splitlines()]
    return [(int(e), int(s), keys.split(",")) for e, s, keys in rows]


def test_a_run_in_s3_is_killed_resumed_and_evaluated_from_the_store(
    seaweed_s3, tmp_path, monkeypatch
):
    seaweed_s3.make_bucket("runs")
    check_a_replaced_checkpoint_keeps_its_predecessor(seaweed_s3)
    data = tmp_path / "data"
    card = shardkit.make_dataset(data, {"train": [2, 2, 2], "valid": [2]}, seed=5)
    fs = seaweed_s3.filesystem()
    out = "s3://runs/exp/cnn"
    # The endpoint by flag (credentials from the environment, as for any AWS client).
    s3 = {**CREDENTIALS, "AWS_DEFAULT_REGION": "us-east-1"}
    endpoint = ["--s3-endpoint-url", seaweed_s3.endpoint_url]
    killed = trainer_cli(
        "--data", str(data), "--out", out, *FLAGS, *endpoint, env={**s3, KILL_AT_STEP_ENV: "5"}
    )  # fmt: skip
    assert killed.returncode == -9, killed.stderr[-2000:]
    # Steps 1..5 were checkpointed (every step) and their keys uploaded with each one.
    before = steps_logged(fs.cat_file("runs/exp/cnn/samples-rank0.tsv").decode())
    assert [s for _, s, _ in before] == list(range(1, 6))
    state = torch.load(fs.open("runs/exp/cnn/last.pt"), weights_only=True)
    assert state["progress"]["global_step"] == 5
    previous = torch.load(fs.open("runs/exp/cnn/last.prev.pt"), weights_only=True)
    assert previous["progress"]["global_step"] == 4

    resumed = trainer_cli("--out", out, "--resume", "--no-progress", *endpoint, env=s3)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming s3://runs/exp/cnn at epoch 2, step 2" in resumed.stdout
    logged = steps_logged(fs.cat_file("runs/exp/cnn/samples-rank0.tsv").decode())
    assert [s for _, s, _ in logged] == list(range(1, 7))  # nothing replayed or skipped
    epoch2 = [k for e, _, keys in logged if e == 1 for k in keys]
    assert sorted(epoch2) == shardkit.split_keys(card, "train")
    names = {p.removeprefix("runs/exp/cnn/") for p in fs.find("runs/exp/cnn")}
    assert RUN_FILES <= names
    assert any(n.startswith("tb/events.out.tfevents") for n in names)
    assert all(n in RUN_FILES or n.startswith("tb/") for n in names), names  # no temp objects
    metrics = fs.cat_file("runs/exp/cnn/metrics.csv").decode().splitlines()
    assert len(metrics) == 3  # the header and both epochs
    assert json.loads(fs.cat_file("runs/exp/cnn/summary.json"))["epochs_completed"] == 2

    options = {"s3": seaweed_s3.storage_options()}
    run = load_run(out, "best", "cpu", options)
    stored = torch.load(fs.open("runs/exp/cnn/best.pt"), weights_only=True)["model"]
    assert run.name == "cnn" and run.location == out
    assert run.vocabulary == card["vocabulary"]
    for name, tensor in run.model.state_dict().items():
        assert torch.equal(tensor, stored[name]), name

    for name, value in s3.items():
        monkeypatch.setenv(name, value)
    status, _, err = cli(
        "evaluate", "--run", out, "--split", "valid", "--chunks", "1", "--bootstrap", "0",
        "--workers", "0", *endpoint,
    )  # fmt: skip
    assert status == 0, err[-2000:]
    fs.invalidate_cache()
    result = json.loads(fs.cat_file("runs/exp/cnn/metrics-valid.json"))
    assert result["run"] == out and result["tracks"] == 2


def check_a_replaced_checkpoint_keeps_its_predecessor(seaweed_s3):
    """Part of the test above (one server start for both)."""
    fs = seaweed_s3.filesystem()
    run = RunDir("s3://runs/one", {"s3": seaweed_s3.storage_options()})
    run.create()
    for step in (1, 2, 3):
        ckpt.save_checkpoint(run / RunDir.LAST, {"step": step}, keep_previous=True)
        run.publish(RunDir.LAST, keep_previous=True)
    last = torch.load(fs.open("runs/one/last.pt"), weights_only=True)
    previous = torch.load(fs.open("runs/one/last.prev.pt"), weights_only=True)
    assert (last["step"], previous["step"]) == (3, 2)
    assert sorted(fs.ls("runs/one")) == ["runs/one/last.prev.pt", "runs/one/last.pt"]
    # A fresh process resumes from what the store holds, falling back to last.prev.pt.
    fs.pipe_file("runs/one/last.pt", b"truncated")
    again = RunDir("s3://runs/one", {"s3": seaweed_s3.storage_options()})
    assert again.pull(RunDir.LAST, RunDir.LAST_PREVIOUS) == [RunDir.LAST, RunDir.LAST_PREVIOUS]
    warnings = []
    assert ckpt.load_latest(again / RunDir.LAST, warn=warnings.append)["step"] == 2
    assert len(warnings) == 1
