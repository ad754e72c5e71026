"""bench/loader.py --peers (bench/loader_peers.py) and the peers that read our shards
(bench/peers/): every peer hands out the same training input as our loader."""

from __future__ import annotations

import importlib.util
import io
import json
import os
import re
import socket
import subprocess
import sys
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import loader_peers  # noqa: E402
from peers.base import PEERS, Workload, register  # noqa: E402

from tagtrain.loader import synthetic  # noqa: E402
from tagtrain.models.registry import get_entry  # noqa: E402

OUR_SHARD_PEERS = ("ours", "wds", "wds-select", "wids", "hf-datasets")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("peers") / "data"
    # Tracks of a few lengths (two shorter than the crop: padded), mel and PCM stored.
    synthetic.make_dataset(
        out, {"train": [6, 6]}, seconds=(2.0, 6.0), stored=("mel", "pcm"), seed=3
    )
    return out


@pytest.fixture(scope="module")
def stored(dataset):
    """{key: (mel float16 [n_mels, T], labels)} as our shards hold them."""
    card = json.loads((dataset / "dataset.json").read_text())
    tracks = {}
    for shard in card["splits"]["train"]["shards"]:
        with tarfile.open(dataset / shard["name"]) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}
        for name, data in members.items():
            if name.endswith(".json"):
                key = name[: -len(".json")]
                mel = np.load(io.BytesIO(members[f"{key}.mel.npy"]), allow_pickle=False)
                tracks[key] = (mel, json.loads(data)["labels"])
    return tracks, len(card["vocabulary"])


def workload(dataset, batch_size=4) -> Workload:
    spec = get_entry("short_chunk_resnet").input_spec
    return Workload(dataset, spec.frames, spec.features.n_mels, batch_size, seed=1)


def source_of(crop: np.ndarray, tracks: dict) -> tuple[str, int]:
    """(key, start) of the stored mel that `crop` is a slice of (padded past its end with
    the track's minimum when the track is shorter)."""
    frames = crop.shape[-1]
    for key, (mel, _) in tracks.items():
        whole = mel.astype(np.float32)
        if whole.shape[-1] < frames:
            pad = np.full((whole.shape[0], frames - whole.shape[-1]), whole.min(), np.float32)
            whole = np.concatenate([whole, pad], axis=1)
        for start in range(whole.shape[-1] - frames + 1):
            if np.array_equal(whole[:, start : start + frames], crop):
                return key, start
    raise AssertionError("a crop that is no slice of any stored mel")


@pytest.mark.parametrize("name", OUR_SHARD_PEERS)
def test_peers_on_our_shards_hand_out_the_same_training_input(dataset, stored, name):
    loader_peers.load_peers()
    tracks, n_tags = stored
    work = workload(dataset)
    peer = PEERS[name]
    assert peer.prepare(work, dataset / "unused") == dataset
    starts = {}
    batches = list(peer.batches(str(dataset), {}, work, 0, 0))
    for i, (x, y) in enumerate(batches):
        last = i == len(batches) - 1
        assert len(x) == work.batch_size or (last and 0 < len(x) < work.batch_size)
        assert tuple(x.shape[1:]) == (work.n_mels, work.frames) and tuple(y.shape) == (
            len(x),
            n_tags,
        )
        assert str(x.dtype) == str(y.dtype) == "torch.float32"
        for crop, labels in zip(x.numpy(), y.numpy()):
            key, start = source_of(crop, tracks)
            expected = np.zeros(n_tags, np.float32)
            expected[tracks[key][1]] = 1
            np.testing.assert_array_equal(labels, expected)
            assert key not in starts, f"{key} read twice in one epoch"
            starts[key] = start
    assert set(starts) == set(tracks)  # every track once (12: whole batches)
    assert min(mel.shape[-1] for mel, _ in tracks.values()) < work.frames  # padding seen
    assert len(set(starts.values())) > 2  # random crops, not one fixed offset


@pytest.mark.parametrize("name", [n for n in OUR_SHARD_PEERS if n != "hf-datasets"])
def test_exact_resume_claims_rest_on_a_replayable_epoch(dataset, name):
    """A peer claiming exact resume replays an epoch batch for batch (so skipping what was
    used resumes it); the next epoch is another order."""
    loader_peers.load_peers()
    peer, work = PEERS[name], workload(dataset)
    if not peer.resume.startswith("exact"):
        pytest.skip(f"{name} claims no exact resume")
    first, again, other = (list(peer.batches(str(dataset), {}, work, e, 0)) for e in (0, 0, 1))
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(first, again, strict=True))
    assert not all(np.array_equal(a[0], b[0]) for a, b in zip(first, other, strict=True))


@pytest.mark.slow  # a SeaweedFS server: about 30 s
def test_s3_gives_the_local_input_and_wids_downloads_each_shard_once(dataset):
    """Through the harness's S3 source (SeaweedFS behind the counting proxy): the same
    batches as from local disk; wids keeps its downloads across epochs, wds reads the
    shards again every epoch."""
    loader_peers.load_peers()
    work = workload(dataset)
    shard_bytes = sum(p.stat().st_size for p in dataset.glob("train-*.tar"))
    with loader_peers.source("s3", dataset, {"wids": dataset, "wds": dataset}) as (
        locations, options, proxy,
    ):  # fmt: skip
        for name, reads in (("wids", 1), ("wds", 2)):
            before = proxy.sent
            for epoch in (0, 1):
                local = list(PEERS[name].batches(str(dataset), {}, work, epoch, 0))
                remote = list(PEERS[name].batches(locations[name], options, work, epoch, 0))
                assert len(local) == len(remote)
                if name == "wids":  # (wds's shuffle buffer is seeded anew every time)
                    for a, b in zip(local, remote, strict=True):
                        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
            fetched = proxy.sent - before
            assert reads * shard_bytes <= fetched < reads * shard_bytes * 1.1, name


def test_a_peer_with_an_unknown_resume_kind_is_refused():
    class Odd:
        name, resume = "odd", "sometimes"

    with pytest.raises(ValueError, match="sometimes"):
        register(Odd())
    assert "odd" not in PEERS


def test_peers_reading_our_shards_are_registered_with_their_resume_kind():
    missing = loader_peers.load_peers()
    for name in OUR_SHARD_PEERS:
        assert name in PEERS and name not in missing
    assert PEERS["ours"].resume == "exact, any workers"


def test_counting_proxy_counts_the_bytes_the_server_sends():
    payload = bytes(range(256)) * 4000
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()

    def serve():
        conn, _ = server.accept()
        conn.recv(16)
        conn.sendall(payload)
        conn.close()

    threading.Thread(target=serve, daemon=True).start()
    proxy = loader_peers.CountingProxy(f"http://127.0.0.1:{server.getsockname()[1]}")
    try:
        port = int(proxy.endpoint.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port)) as client:
            client.sendall(b"GET")
            received = b""
            while chunk := client.recv(1 << 16):
                received += chunk
        assert received == payload
        assert proxy.sent == len(payload)
    finally:
        proxy.close()
        server.close()


def _row(peer, source, cpu_ms, chunks=100):
    epoch = {"chunks": chunks, "wall": 1.0, "cpu": cpu_ms * chunks / 1000, "first": 0.1, "reads": 0}
    return (peer, source, 0, [epoch, epoch], None, "no")


def test_comparison_is_the_worst_source_against_its_best_peer():
    rows = [
        _row("ours", "local", 1.0), _row("wds", "local", 4.0), _row("wids", "local", 2.0),
        _row("ours", "s3", 3.0), _row("wds", "s3", 5.0), ("mds", "s3", 0, "error: x", None, "-"),
    ]  # fmt: skip
    assert loader_peers.comparison(rows) == (pytest.approx(0.6), "wds", "s3")
    assert loader_peers.comparison([_row("ours", "local", 1.0)]) is None
    # Our best way to read a source (through the shard cache) against the peers' best.
    cached = [_row("ours", "s3", 3.0), _row("ours+cache", "s3", 1.0), _row("wids", "s3", 2.0)]
    assert loader_peers.comparison(cached) == (pytest.approx(0.5), "wids", "s3")
    # A peer whose CPU the clock did not see (a tiny run) is no figure to divide by.
    unseen = [_row("ours", "local", 1.0), _row("wids", "local", 0.0), _row("wds", "local", 2.0)]
    assert loader_peers.comparison(unseen) == (pytest.approx(0.5), "wds", "local")


def test_ours_with_the_cache_reads_remote_shards_through_it(tmp_path):
    from peers.base import PEERS

    cached = PEERS["ours+cache"]
    assert cached.remote_only and not PEERS["ours"].remote_only
    assert cached.cache_dir(str(tmp_path)) is None  # local disk: no cache
    where = cached.cache_dir("s3://bucket/data")
    assert Path(where).is_dir() and cached.cache_dir("s3://bucket/data") == where


def test_fetched_per_used_counts_every_epoch_and_marks_uncounted_mmap_reads():
    two = [{"chunks": 10, "wall": 1.0, "cpu": 0.01, "first": 0.1, "reads": r} for r in (3000, 0)]
    # S3: the proxy's count covers the row (both epochs); 3000 bytes for 20 chunks of 100.
    s3 = loader_peers._cells(("mds", "s3", 0, two, 3000, "no"), used=100.0)
    assert s3[6] == "1.50"
    local = loader_peers._cells(("wids", "local", 0, two, None, "no"), used=1000.0)
    assert local[6] == "0.15*"  # fewer bytes read() than used: the rest came through mmap
    assert loader_peers._cells(("x", "local", 0, two, None, "no"), used=100.0)[6] == "1.50"


def test_a_missing_peer_package_is_a_not_installed_row(monkeypatch):
    monkeypatch.setitem(loader_peers.MODULES, "hf", ("hf-datasets",))
    real = importlib.import_module

    def fake(name, *args):
        if name == "peers.hf":
            raise ModuleNotFoundError("No module named 'datasets'", name="datasets")
        return real(name, *args)

    monkeypatch.setattr(loader_peers.importlib, "import_module", fake)
    assert loader_peers.load_peers()["hf-datasets"] == "not installed (make bench-peers)"


def test_peers_rejects_an_unknown_source_in_one_line():
    run = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "loader.py"), "--peers", "--sources", "http"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == ["error: --peers reads from local or s3, not 'http'"]


@pytest.mark.slow
def test_loader_peers_run_ends_with_the_comparison(tmp_path):
    run = subprocess.run(
        [
            sys.executable, str(ROOT / "bench" / "loader.py"), "--peers", "--sources", "local",
            "--tracks", "96", "--seconds", "4", "--epochs", "1",
        ],
        capture_output=True, text=True, timeout=600, env={**os.environ, "TMPDIR": str(tmp_path)},
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    lines = run.stdout.strip().splitlines()
    names = "|".join(re.escape(n) for n in OUR_SHARD_PEERS[1:] + ("mds", "litdata", "lhotse-shar"))
    assert re.fullmatch(rf"ours / best peer, CPU per chunk: \d+\.\d\d \(({names})\)", lines[-1])
    for name in OUR_SHARD_PEERS:
        row = next(line for line in lines if line.startswith(f"{name} "))
        assert re.search(r"local\s+0\s+\d+\.\d\d\s+\d+\.\d\d\s+\d+", row), row
    for name, package in (("mds", "streaming"), ("litdata", "litdata"), ("lhotse-shar", "lhotse")):
        if importlib.util.find_spec(package) is None:
            row = next(line for line in lines if line.startswith(f"{name} "))
            assert row.endswith("not installed (make bench-peers)"), row
