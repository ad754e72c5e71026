"""`bench/loader.py --peers`: our loader beside its peers on the same tracks (issue 31).

Each peer (bench/peers/) writes the tracks with its own writer, or reads our shards as they
are, and hands out the same training input: random mel crops of the model's length and
multi-hot labels, in batches. For each source (local disk, or the SeaweedFS S3 server of
bench/local_servers.py holding each peer's written files) and worker count, each peer runs
`--epochs` epochs in a fresh spawned process, as a trainer starts. Columns:

- CPU ms per chunk of this process and its loader workers (not the server's): the first
  epoch's, and the last epoch's, the steady figure on a shared machine;
- chunks/s per worker (last epoch; the main process counts as one worker without workers);
- bytes fetched per byte used, over all the row's epochs: used = the JSON and mel member
  bytes of the chunks read; fetched = from S3, the bytes the server sent (counted by a proxy
  in front of it, whatever the client); locally, the bytes the row's processes got from
  read() calls (/proc's rchar), so reads through mmap are not counted (marked *);
- time to the first batch of the first epoch, in the fresh process (imports excluded);
- resume: what the peer's docs and API offer for resuming mid-epoch (bench/peers/base.py).

The last line compares our steady CPU per chunk with the best peer's, for the source where
the ratio is worst: `ours / best peer, CPU per chunk: R (peer name)`.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import multiprocessing
import os
import tempfile
import threading
import time
import traceback
from pathlib import Path
from urllib.parse import urlparse

from loader_common import generated_dataset
from local_servers import served
from peers.base import MODULES, PEERS, Workload, s3_environment

from tagtrain.models.registry import get_entry

NOT_INSTALLED = "not installed (make bench-peers)"


def load_peers() -> dict[str, str]:
    """Import every peer module (registering its peers); {peer name: why not} for those
    whose package is missing."""
    missing = {}
    for module, names in MODULES.items():
        try:
            importlib.import_module(f"peers.{module}")
        except ModuleNotFoundError as exc:
            if (exc.name or "").startswith("peers"):  # our module, not its package
                raise
            missing.update(dict.fromkeys(names, NOT_INSTALLED))
        except Exception as exc:  # noqa: BLE001 -- e.g. a package built for another torch
            why = f"error: importing it: {type(exc).__name__}: {str(exc).splitlines()[0][:80]}"
            missing.update(dict.fromkeys(names, why))
    return missing


class CountingProxy:
    """A TCP proxy to an S3 server, in a thread, counting the bytes the server sends: the
    bytes a peer fetched, whichever client library (or subprocess) it uses."""

    def __init__(self, endpoint: str):
        target = urlparse(endpoint)
        self.host, self.port = target.hostname, target.port
        self.sent = 0
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        threading.Thread(target=self._run, args=(ready,), daemon=True).start()
        ready.wait()
        self.endpoint = f"http://127.0.0.1:{self.listen_port}"

    def _run(self, ready) -> None:
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.listen_port = server.sockets[0].getsockname()[1]
        ready.set()
        self.loop.run_forever()

    async def _pump(self, reader, writer, count: bool) -> None:
        try:
            while data := await reader.read(1 << 20):
                if count:
                    self.sent += len(data)
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    async def _handle(self, client_r, client_w) -> None:
        server_r, server_w = await asyncio.open_connection(self.host, self.port)
        await asyncio.gather(
            self._pump(client_r, server_w, False), self._pump(server_r, client_w, True)
        )

    def close(self) -> None:
        async def stop():
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self.loop.stop()

        asyncio.run_coroutine_threadsafe(stop(), self.loop)


def _upload(options: dict, local: Path, remote: str) -> None:
    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True, **options["s3"])
    for path in sorted(local.rglob("*")):
        if path.is_file():
            fs.pipe_file(f"{remote}/{path.relative_to(local).as_posix()}", path.read_bytes())


@contextlib.contextmanager
def source(name: str, dataset: Path, prepared: dict[str, Path]):
    """({peer: location}, storage options, byte counter or None) of one source."""
    if name == "local":
        yield {peer: str(path) for peer, path in prepared.items()}, {}, None
        return
    if name != "s3":
        raise SystemExit(f"error: --peers reads from local or s3, not {name!r}")
    with served("s3", dataset) as (url, options):
        for peer, path in prepared.items():
            if path != dataset:
                _upload(options, path, f"bench/peers/{peer}")
        proxy = CountingProxy(options["s3"]["client_kwargs"]["endpoint_url"])
        try:
            counted = {**options["s3"], "client_kwargs": {"endpoint_url": proxy.endpoint}}
            locations = {
                peer: url if path == dataset else f"s3://bench/peers/{peer}"
                for peer, path in prepared.items()
            }
            yield locations, {"s3": counted}, proxy
        finally:
            proxy.close()


class _Usage:
    """CPU seconds and read() bytes of this process and its loader workers: live ones
    through psutil, reaped ones through os.times (CPU). With workers, read bytes are sampled
    per batch, since a worker's count goes with it; without, only this process's are read
    (finding children scans every process on the machine, CPU the row would be charged)."""

    def __init__(self, workers: int):
        import psutil

        self.me = psutil.Process()
        self.workers = workers
        self.read = {}

    def cpu(self) -> float:
        t = os.times()
        total = t.user + t.system + t.children_user + t.children_system
        for child in self.me.children(recursive=True):
            with contextlib.suppress(Exception):
                total += sum(child.cpu_times()[:2])
        return total

    def sample_reads(self) -> None:
        for proc in [self.me, *(self.me.children(recursive=True) if self.workers else ())]:
            with contextlib.suppress(Exception):
                self.read[proc.pid] = proc.io_counters().read_chars

    def reads(self) -> int:
        self.sample_reads()
        return sum(self.read.values())


def _measure(peer, location, options, work: Workload, epochs: int, workers: int, n_tags):
    usage, epochs_out = _Usage(workers), []
    for epoch in range(epochs):
        reads0, cpu0, start = usage.reads(), usage.cpu(), time.perf_counter()
        first, chunks = None, 0
        for x, y in peer.batches(location, options, work, epoch, workers):
            if first is None:
                first = time.perf_counter() - start
            n = len(x)
            if tuple(x.shape) != (n, work.n_mels, work.frames) or tuple(y.shape) != (n, n_tags):
                raise ValueError(f"batch of {tuple(x.shape)}, {tuple(y.shape)}")
            if str(x.dtype) != "torch.float32" or str(y.dtype) != "torch.float32":
                raise ValueError(f"batch of {x.dtype}, {y.dtype}")
            chunks += n
            if workers:
                usage.sample_reads()
        wall = time.perf_counter() - start
        cpu = usage.cpu() - cpu0
        epochs_out.append(
            {
                "chunks": chunks,
                "wall": wall,
                "cpu": cpu,
                "first": first,
                "reads": usage.reads() - reads0,
            }
        )
    return epochs_out


def _row_in_child(results, name, location, options, work, epochs, workers, n_tags) -> None:
    # Loader workers are forked in a trainer (this process was spawned).
    multiprocessing.set_start_method("fork", force=True)
    # A loader process runs no intra-op parallel kernels (DataLoader workers are set to one
    # thread too); with more, a batch's float conversion spins on the other core, and on a
    # loaded machine that was charged as most of a peer's CPU per chunk.
    import torch

    torch.set_num_threads(1)
    try:
        load_peers()
        s3_environment(options)
        results.put(_measure(PEERS[name], location, options, work, epochs, workers, n_tags))
    except Exception as exc:  # noqa: BLE001 -- one peer's failure is its row, not the run's
        traceback.print_exc()
        results.put(f"error: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}")


def run_row(name, location, options, work, epochs, workers, n_tags):
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    args = (results, name, location, options, work, epochs, workers, n_tags)
    child = context.Process(target=_row_in_child, args=args)
    child.start()
    try:
        return results.get()
    finally:
        child.join()


def used_bytes_per_chunk(work: Workload) -> float:
    """Mean bytes of the JSON and mel members of the workload's samples."""
    import pyarrow.parquet as pq

    index = pq.read_table(Path(work.dataset) / "index.parquet").to_pylist()
    sizes = [
        sum(m["size"] for m in row["members"] if m["name"].endswith((".json", ".mel.npy")))
        for row in index
        if row["split"] == work.split
    ]
    return sum(sizes) / max(1, len(sizes))


def _cells(row, used: float) -> list[str]:
    peer, src, workers, result, counted, resume = row
    if isinstance(result, str):
        return [peer, src, str(workers), result]
    first, last = result[0], result[-1]
    # Over all the row's epochs (the proxy counts the whole row): a peer that keeps what
    # it downloaded fetches less per epoch than one that reads the store every epoch.
    fetched = counted if counted is not None else sum(e["reads"] for e in result)
    ratio = fetched / max(1.0, sum(e["chunks"] for e in result) * used)
    return [
        peer, src, str(workers),
        f"{1000 * first['cpu'] / max(1, first['chunks']):.2f}",
        f"{1000 * last['cpu'] / max(1, last['chunks']):.2f}",
        f"{last['chunks'] / last['wall'] / max(1, workers):.0f}",
        f"{ratio:.2f}" + ("*" if ratio < 0.99 and counted is None else ""),
        f"{first['first']:.2f}" if first["first"] is not None else "-",
        resume,
    ]  # fmt: skip


OURS = MODULES["ours"]


def steady_cpu(result) -> float | None:
    """CPU ms per chunk of the last epoch; None when nothing was read or the CPU clock
    (10 ms ticks for reaped workers) saw none: a tiny run is no figure to divide by."""
    if isinstance(result, str) or not result[-1]["chunks"] or result[-1]["cpu"] <= 0:
        return None
    return 1000 * result[-1]["cpu"] / result[-1]["chunks"]


def comparison(rows) -> tuple[float, str, str] | None:
    """(ours / best peer, best peer, source) at the first worker count, for the source
    where the ratio is worst; None when ours or no peer ran."""
    worst = None
    for src in dict.fromkeys(r[1] for r in rows):
        at = [r for r in rows if r[1] == src and r[2] == rows[0][2]]
        # Our best way to read this source against the peers' best (each peer reads the
        # way its docs recommend: wids and MDS keep what they download, as ours+cache).
        ours = [steady_cpu(r[3]) for r in at if r[0] in OURS]
        ours = min((c for c in ours if c is not None), default=None)
        peers = [(steady_cpu(r[3]), r[0]) for r in at if r[0] not in OURS]
        peers = [p for p in peers if p[0] is not None]
        if ours is None or not peers:
            continue
        best, name = min(peers)
        if worst is None or ours / best > worst[0]:
            worst = (ours / best, name, src)
    return worst


def main(args) -> int:
    sources = [s for s in (args.sources or "local").split(",") if s]
    for s in sources:
        if s not in ("local", "s3"):
            raise SystemExit(f"error: --peers reads from local or s3, not {s!r}")
    stored = tuple(s for s in (args.stored or "mel,pcm").split(",") if s)
    dataset = Path(args.data) if args.data else generated_dataset(args.tracks, args.seconds, stored)
    spec = get_entry(args.model).input_spec
    work = Workload(
        dataset, spec.frames, spec.features.n_mels, args.batch_size or 16, 0, model=args.model
    )
    n_tags = len(json.loads((dataset / "dataset.json").read_text())["vocabulary"])
    missing = load_peers()
    cache = Path(tempfile.gettempdir()) / "tagtrain-bench-peers" / dataset.name
    prepared = {}
    for name, peer in PEERS.items():
        print(f"  prepare {name} ...", flush=True)
        prepared[name] = Path(peer.prepare(work, cache / name))
    workers = [int(w) for w in (args.workers or "0").split(",")]
    rows = []
    for src in sources:
        with source(src, dataset, prepared) as (locations, options, counter):
            for name, count in [(n, w) for w in workers for n in PEERS]:
                if src == "local" and getattr(PEERS[name], "remote_only", False):
                    continue
                before = counter.sent if counter else 0
                result = run_row(name, locations[name], options, work, args.epochs, count, n_tags)
                counted = counter.sent - before if counter else None
                rows.append((name, src, count, result, counted, PEERS[name].resume))
                print(f"  {name:<12} {src:<6} workers={count}: done", flush=True)
        rows += [(name, src, "-", why, None, "-") for name, why in missing.items()]
    print_table(rows, work, dataset)
    return 0


def print_table(rows, work: Workload, dataset: Path) -> None:
    used = used_bytes_per_chunk(work)
    print()
    print(
        f"{dataset.name}: crops of {work.frames} frames x {work.n_mels} mels, batch "
        f"{work.batch_size} ({work.model} input); used bytes per chunk {used / 1e3:.0f} kB"
    )
    header = ("peer", "source", "workers", "e1 CPU ms", "CPU ms", "chunks/s/w", "fetch/use",
              "1st batch s", "resume")  # fmt: skip
    widths = (13, 7, 8, 10, 8, 11, 10, 12, 0)
    print("".join(f"{h:<{w}}" for h, w in zip(header, widths)))
    for row in rows:
        print("".join(f"{c:<{w}}" for c, w in zip(_cells(row, used), widths)).rstrip())
    print("CPU ms: per chunk, this process and its workers (last epoch; e1: the first, start-up")
    print("included); fetch/use: bytes fetched (S3: sent by the server; local: read() calls,")
    print("* = reads through mmap uncounted) per JSON+mel byte used, over all epochs")
    for src in dict.fromkeys(r[1] for r in rows):
        found = comparison([r for r in rows if r[1] == src])
        if found and len({r[1] for r in rows}) > 1:
            print(f"{src}: ours / best peer, CPU per chunk: {found[0]:.2f} ({found[1]})")
    found = comparison(rows)
    if found is None:
        print("ours / best peer, CPU per chunk: - (no peer ran)")
    else:
        print(f"ours / best peer, CPU per chunk: {found[0]:.2f} ({found[1]})")
