"""S3 member ranges through obstore (issue 18, fourth pass): the same batches and bytes as
local reading and as s3fs, a missing object or a range past the end is a permanent
error (no retries), s3fs options obstore cannot express fall back to s3fs, and loader
workers forked after the parent used obstore still read (through s3fs: obstore's tokio
runtime does not survive a fork)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
import sys

import pytest
import torch

from tagtrain import loader
from tagtrain.loader import s3ranges
from tagtrain.loader.ranged import HEADER, RangeFailure, RangeFetcher
from tagtrain.models.registry import get_entry
from tests import shardkit
from tests.test_loader import read_epoch

SPEC = get_entry("short_chunk_cnn").input_spec
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def on_s3(tmp_path_factory):
    """(local dir, card, s3 URL, storage options): a mel+pcm dataset, so a mel model's
    ranges have gaps (the PCM) that must not be fetched; one SeaweedFS server for the
    module's tests (each start costs seconds)."""
    from tests.seaweed import SeaweedS3

    out = tmp_path_factory.mktemp("s3ranges") / "data"
    card = shardkit.make_dataset(
        out, {"train": [4, 4, 4, 4]}, seconds=(1.0, 1.5), stored=("mel", "pcm"), seed=4
    )
    with SeaweedS3(out.parent / "seaweed") as server:
        url = server.upload_dir(out, "shards/data")
        yield out, card, url, {"s3": server.storage_options()}


def same_batches(a, b) -> bool:
    return [x.keys for x in a] == [x.keys for x in b] and all(
        torch.equal(x.x, y.x) and torch.equal(x.y, y.y) for x, y in zip(a, b)
    )


def test_obstore_reads_the_batches_and_bytes_of_local_disk_and_s3fs(on_s3):
    out, card, url, options = on_s3
    cfg = loader.LoaderConfig(batch_size=2, workers=0, shuffle_buffer=4, seed=5)
    local, _ = read_epoch(out, card, cfg)
    runs = {}
    for client in ("obstore", "s3fs"):
        remote_cfg = dataclasses.replace(cfg, storage_options=options, s3_client=client)
        runs[client] = read_epoch(url, card, remote_cfg)
    for client, (batches, reader) in runs.items():
        assert same_batches(batches, local), client
        assert reader.stats.samples == 16 and reader.stats.shard_errors == 0
    obstore, s3fs = runs["obstore"][1].stats, runs["s3fs"][1].stats
    # The same requests: obstore sends exactly the merged ranges, nothing coalesced.
    assert obstore.range_requests == s3fs.range_requests > 0
    assert obstore.bytes_read == s3fs.bytes_read <= 1.1 * obstore.bytes_used
    assert obstore.obstore_requests == obstore.range_requests and s3fs.obstore_requests == 0


@pytest.mark.parametrize("client", ["obstore", "s3fs"])
def test_a_missing_object_or_a_range_past_its_end_fails_at_once(on_s3, client):
    out, card, url, options = on_s3
    name = card["splits"]["train"]["shards"][0]["name"]
    size = (out / name).stat().st_size
    urls = [f"{url}/{name}", f"{url}/train-999999.tar"]
    fetcher = RangeFetcher(urls, options, retries=3, backoff=0.01, s3_client=client)
    got = fetcher.fetch_many({0: [(0, HEADER), (HEADER, 100)], 1: [(0, HEADER)]})
    assert got[0] == [(out / name).read_bytes()[:HEADER], (out / name).read_bytes()[HEADER:612]]
    assert isinstance(got[1], RangeFailure)
    assert str(got[1]).startswith("FileNotFoundError: ")
    assert fetcher.retried == 0  # permanent: never retried
    assert fetcher.requests == 2  # the first shard's two ranges touch: one request
    assert fetcher.obstore_requests == (2 if client == "obstore" else 0)
    if client == "obstore":  # the message says which object and why
        assert str(got[1]).endswith(f"{urls[1]}: no such object on the S3 server")
        # A range starting past the end: the object is shorter than the index says.
        past = RangeFetcher(urls[:1], options, retries=3, backoff=0.01)
        failure = past.fetch_many({0: [(size + 10, 100)]})[0]
        assert isinstance(failure, RangeFailure) and "OutsideObject" in str(failure)
        assert past.retried == 0


def test_store_settings_follow_the_s3fs_options(tmp_path):
    env = {"HOME": str(tmp_path)}  # no shared AWS files
    keys = {"key": "k", "secret": "s"}
    local = {**keys, "client_kwargs": {"endpoint_url": "http://127.0.0.1:9000"}}
    settings = s3ranges.store_settings("b", {**local, "config_kwargs": {"read_timeout": 60}}, env)
    assert settings == {
        "bucket": "b", "region": "us-east-1", "access_key_id": "k", "secret_access_key": "s",
        "endpoint": "http://127.0.0.1:9000", "virtual_hosted_style_request": False,
        "client_options": {"allow_http": True, "timeout": "60000ms"},
    }  # fmt: skip
    aws = s3ranges.store_settings(
        "b", {"anon": True, "config_kwargs": {"connect_timeout": 10}},
        {**env, "AWS_DEFAULT_REGION": "eu-west-1"},
    )  # fmt: skip
    assert aws["skip_signature"] and aws["region"] == "eu-west-1"
    assert aws["virtual_hosted_style_request"] and "endpoint" not in aws
    assert aws["client_options"] == {"allow_http": False, "connect_timeout": "10000ms"}
    https = s3ranges.store_settings("b", {**keys, "endpoint_url": "https://s3.example"}, env)
    assert https["client_options"]["allow_http"] is False
    # What obstore cannot do as s3fs would falls back to s3fs.
    for kwargs, environment in [
        ({**local, "requester_pays": True}, env),  # an s3fs option it does not map
        ({**local, "client_kwargs": {"verify": False}}, env),
        ({**local, "config_kwargs": {"signature_version": "s3"}}, env),
        ({**keys}, env),  # AWS without a region (botocore follows the redirect)
        ({}, {**env, "AWS_DEFAULT_REGION": "x", "AWS_PROFILE": "p"}),  # profiles
        ({**local}, {**env, "AWS_SESSION_TOKEN": "t"}),  # obstore would add the token
    ]:
        with pytest.raises(s3ranges.Unsupported):
            s3ranges.store_settings("b", kwargs, environment)


def test_an_option_obstore_cannot_express_is_read_by_s3fs(on_s3):
    out, card, url, options = on_s3
    odd = {"s3": {**options["s3"], "requester_pays": False}}
    cfg = loader.LoaderConfig(batch_size=2, workers=0, shuffle_buffer=4, seed=5)
    batches, reader = read_epoch(url, card, dataclasses.replace(cfg, storage_options=odd))
    assert same_batches(batches, read_epoch(out, card, cfg)[0])
    assert reader.stats.obstore_requests == 0 < reader.stats.range_requests


def test_workers_forked_after_obstore_ran_read_through_s3fs(on_s3):
    """This process has used obstore: its forked workers must not (a request on the
    inherited runtime hangs), and still read every batch."""
    out, card, url, options = on_s3
    cfg = loader.LoaderConfig(batch_size=2, workers=2, shuffle_buffer=4, seed=1)
    remote_cfg = dataclasses.replace(cfg, storage_options=options)
    read_epoch(url, card, dataclasses.replace(remote_cfg, workers=0))  # obstore, here
    assert s3ranges._RUNTIME_PID == os.getpid()
    batches, reader = read_epoch(url, card, remote_cfg)
    assert same_batches(batches, read_epoch(out, card, cfg)[0])
    assert reader.stats.obstore_requests == 0 < reader.stats.range_requests


_POOLED = """
import hashlib, json, sys
from tagtrain import loader
from tagtrain.models.registry import get_entry
from tests.test_persist import pooled_epoch
url, options = sys.argv[1], json.loads(sys.argv[2])
card = loader.load_card(url, options)
cfg = loader.LoaderConfig(batch_size=2, workers=2, shuffle_buffer=4, seed=1,
                          storage_options=options)
shards = loader.split_shards(card, url, "train")
plan = loader.plan_input(card, get_entry("short_chunk_cnn").input_spec)
pool = loader.LoaderPool(loader.ShardStream(shards, plan, card["vocabulary"], cfg, 0))
epochs = []
for epoch in (0, 1):
    batches, reader = pooled_epoch(pool, epoch)
    stats = reader.stats
    epochs.append({"batches": [[b.keys, hashlib.sha256(b.x.numpy().tobytes()).hexdigest()]
                               for b in batches],
                   "requests": [stats.range_requests, stats.obstore_requests]})
pool.close()
print(json.dumps(epochs))
"""


def test_persistent_workers_of_a_fresh_process_read_through_obstore(on_s3):
    """Two persistent workers forked by a process that never used obstore read both
    epochs through obstore, batch for batch what local disk gives."""
    out, card, url, options = on_s3
    env = {**os.environ, "PYTHONPATH": ROOT}
    done = subprocess.run(
        [sys.executable, "-c", _POOLED, url, json.dumps(options)],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    epochs = json.loads(done.stdout.strip().splitlines()[-1])
    cfg = loader.LoaderConfig(batch_size=2, workers=2, shuffle_buffer=4, seed=1)
    for epoch, result in enumerate(epochs):
        local, _ = read_epoch(out, card, cfg, epoch)
        expected = [[b.keys, hashlib.sha256(b.x.numpy().tobytes()).hexdigest()] for b in local]
        assert result["batches"] == expected
        requests, by_obstore = result["requests"]
        assert requests > 0 and by_obstore == requests
