"""Checks that the peers with their own writers (mds, litdata, lhotse-shar) hand out our
loader's training input, and measures them; run in the peers' venv (their packages are not
in .venv):

    .venv-peers/bin/python bench/peers/self_check.py --data DATASET [--sources local,s3]
        [--workers 0,2] [--resume] [--peers mds,litdata,lhotse-shar]

Per peer, source and worker count, over two epochs: every batch is [16, n_mels, frames]
float32 and [16, n_tags] float32 (the last may be short); the keys read are the split's,
each as often as our shards hold it; each label row is the multi-hot of that key's labels in
our shards; each crop is a real slice of that key's stored mel; the two epochs' orders
differ. Then chunks/s and CPU ms per chunk (this process and its reaped loader workers).
`--resume` stops epoch 0 after 3 batches, takes the peer's loader state and resumes on the
same and on another worker count: "exact" where nothing is lost or repeated and the rest is
the uninterrupted epoch's rest.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import tarfile
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

BENCH = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(BENCH))

from peers.base import MODULES, PEERS, Workload, multi_hot, tracks, vocabulary  # noqa: E402

OURS = ("mds", "litdata_peer", "lhotse_shar")


class CheckFailed(AssertionError):
    pass


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


def source_tracks(work: Workload) -> tuple[Counter, dict, dict]:
    """(key multiplicities, key -> float16 mel, key -> multi-hot) from our shards."""
    counts, mels, labels = Counter(), {}, {}
    n_tags = len(vocabulary(work))
    for track in tracks(work):
        counts[track.key] += 1
        mels[track.key] = track.mel
        labels[track.key] = multi_hot(track.labels, n_tags)
    return counts, mels, labels


def is_crop(x: np.ndarray, mel: np.ndarray) -> bool:
    """Whether `x` is `mel[:, s:s+frames]` for some s (or the zero-padded whole track)."""
    frames, total = x.shape[-1], mel.shape[-1]
    if total <= frames:
        return bool(np.array_equal(x[:, :total], mel) and not x[:, total:].any())
    stored = mel.astype(np.float32)
    starts = np.flatnonzero((stored[:, : total - frames + 1] == x[:, :1]).all(axis=0))
    return any(np.array_equal(stored[:, s : s + frames], x) for s in starts)


def check_stored(name: str, local: Path) -> None:
    """What the peer wrote holds no pickle: its own index names each column's encoding."""
    if name == "mds":
        index = json.loads((local / "index.json").read_text())
        encodings = {e for shard in index["shards"] for e in shard["column_encodings"]}
        expect(encodings == {"str", "ndarray:float16", "ndarray:int16"}, f"MDS {encodings}")
    elif name == "litdata":
        formats = json.loads((local / "index.json").read_text())["config"]["data_format"]
        expect(not any("pickle" in f for f in formats), f"litdata serializers {formats}")
    elif name == "lhotse-shar":
        for tar in local.glob("features.*.tar"):
            with tarfile.open(tar) as f:
                names = {Path(m.name).suffix for m in f}
            expect(names <= {".npy", ".json"}, f"Shar members {names}")


def check_epoch(peer, location, options, work, epoch, workers, truth) -> tuple:
    """One checked epoch: (keys in order, chunks, wall and CPU seconds of reading it, the
    checks after it not included)."""
    counts, mels, labels = truth
    n_tags, keys, chunks = len(vocabulary(work)), [], 0
    cpu0, wall0 = _cpu(), time.perf_counter()
    batches = list(peer.keyed_batches(location, options, work, epoch, workers))
    cpu, wall = _cpu() - cpu0, time.perf_counter() - wall0
    for i, (_, batch_keys, x, y) in enumerate(batches):
        last = i == len(batches) - 1
        expect(x.dtype == y.dtype == torch.float32, f"dtypes {x.dtype}, {y.dtype}")
        size = x.shape[0]
        expect(size == work.batch_size or (last and 0 < size < work.batch_size), f"batch {size}")
        expect(tuple(x.shape[1:]) == (work.n_mels, work.frames), f"x {tuple(x.shape)}")
        expect(tuple(y.shape) == (size, n_tags), f"y {tuple(y.shape)}")
        expect(len(batch_keys) == size, "keys per batch")
        for key, xi, yi in zip(batch_keys, x.numpy(), y.numpy()):
            expect(key in mels, f"unknown key {key}")
            expect(np.array_equal(yi, labels[key]), f"labels of {key}")
            expect(is_crop(xi, mels[key]), f"crop of {key} is not a slice of its stored mel")
        keys += batch_keys
        chunks += size
    expect(Counter(keys) == counts, "the epoch's keys are not the split's, once each")
    return keys, chunks, wall, cpu


def _cpu() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def check_resume(peer, location, options, work, workers, other, full) -> str:
    """Stop epoch 0 after 3 batches, resume from the peer's state on `workers` and on
    `other` workers; returns a line per resume."""
    lines = []
    for after in (workers, other):
        gen = peer.keyed_batches(location, options, work, 0, workers)
        before, handle = [], None
        for _ in range(3):
            handle, keys, _, _ = next(gen)
            before += keys
        state = handle.state_dict()
        gen.close()
        peer.forget(location)
        try:
            resumed = peer.keyed_batches(location, options, work, 0, after, state)
            rest = [key for _, keys, _, _ in resumed for key in keys]
        except Exception as error:  # noqa: BLE001 (a peer that cannot resume there)
            lines.append(f"    resume {workers}->{after} workers: fails ({error!r:.100})")
            continue
        finally:
            peer.forget(location)
        whole = Counter(before + rest) == Counter(full)
        same = before + rest == full
        verdict = "exact" if whole and same else "complete, reordered" if whole else "NOT complete"
        lost = sum((Counter(full) - Counter(before + rest)).values())
        extra = sum((Counter(before + rest) - Counter(full)).values())
        lines.append(
            f"    resume {workers}->{after} workers: {verdict} "
            f"(after {len(before)} chunks: {len(rest)} more, {lost} lost, {extra} repeated)"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="our prepared dataset (the source)")
    parser.add_argument("--out", default=None, help="where the peers write (default: a temp dir)")
    parser.add_argument("--peers", default="mds,litdata,lhotse-shar")
    parser.add_argument("--sources", default="local")
    parser.add_argument("--workers", default="0,2")
    parser.add_argument("--frames", type=int, default=231)  # short_chunk_resnet's input
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args(argv)

    wanted = args.peers.split(",")
    for module in OURS:
        if not set(MODULES[module]) & set(wanted):
            continue
        try:
            importlib.import_module(f"peers.{module}")
        except Exception as error:  # noqa: BLE001 (not only ImportError: see below)
            # A package can be there and still fail on import, e.g. streaming, which
            # imports torchvision, whose PyPI build needs CUDA torch.
            print(f"{', '.join(MODULES[module])}: cannot import ({type(error).__name__}: {error})")
    out = Path(args.out or tempfile.mkdtemp(prefix="peers-b-"))
    data = Path(args.data)
    card = json.loads((data / "dataset.json").read_text())
    work = Workload(data, args.frames, int(card["features"]["n_mels"]))
    truth = source_tracks(work)
    worker_counts = [int(w) for w in args.workers.split(",")]
    failures = 0
    for name in wanted:
        if name not in PEERS:
            continue
        peer = PEERS[name]
        start = time.perf_counter()
        local = peer.prepare(work, out)
        size = sum(p.stat().st_size for p in Path(local).iterdir())
        ours = sum(s["bytes"] for s in card["splits"][work.split]["shards"])
        print(f"{name}: prepared {local} in {time.perf_counter() - start:.1f} s, "
              f"{size / 1e6:.1f} MB on disk ({size / ours:.3f}x our shards)")  # fmt: skip
        try:
            check_stored(name, Path(local))
        except CheckFailed as error:
            failures += 1
            print(f"  {name}: FAILED: {error}")
        for source in args.sources.split(","):
            failures += run_source(peer, source, Path(local), work, truth, worker_counts, args)
    print("self-check:", "FAILED" if failures else "passed")
    return 1 if failures else 0


def run_source(peer, source, local, work, truth, worker_counts, args) -> int:
    from local_servers import served

    failures = 0
    with served(source, local) as (location, options):
        for workers in worker_counts:
            try:
                orders = []
                for epoch in (0, 1):
                    keys, chunks, seconds, cpu = check_epoch(
                        peer, location, options, work, epoch, workers, truth
                    )
                    orders.append(keys)
                    print(f"  {peer.name:<12} {source:<6} workers={workers} epoch {epoch}: "
                          f"{chunks} chunks, {chunks / seconds:.0f} chunks/s, "
                          f"{1000 * cpu / chunks:.2f} CPU ms/chunk, checks passed")  # fmt: skip
                expect(orders[0] != orders[1], "the two epochs have the same order")
                if args.resume:
                    other = next((w for w in worker_counts if w != workers), workers + 1)
                    full = orders[0]
                    print(check_resume(peer, location, options, work, workers, other, full))
            except CheckFailed as error:
                failures += 1
                print(f"  {peer.name:<12} {source:<6} workers={workers}: FAILED: {error}")
            except Exception as error:  # noqa: BLE001 (reported, and counted unless known)
                known = type(error).__name__ == "PeerUnsupported"
                failures += not known
                verdict = "unsupported" if known else "ERROR"
                print(f"  {peer.name:<12} {source:<6} workers={workers}: {verdict}: {error!r}")
            peer.forget(location)
    return failures


if __name__ == "__main__":
    sys.exit(main())
