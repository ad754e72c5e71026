"""Loader benchmark: chunks/s per loader worker from local, HTTP and S3 shards, and the
fraction of each training step spent waiting for data.

    .venv/bin/python bench/loader.py                        # generated 29 s tracks
    .venv/bin/python bench/loader.py --data demo_out/data    # a prepared dataset
    .venv/bin/python bench/loader.py --workers 16 --train-workers 16 --device cuda
    make bench-peers   # --peers: beside webdataset, wids, HF datasets, MDS, LitData, Lhotse
                       # (bench/loader_peers.py; in .venv-peers, bench/requirements-peers.txt)

HTTP is a local `http.server` process and S3 a local SeaweedFS server (`weed server -s3`,
a real S3 implementation, in its own process); "s3-cache" reads S3 through the loader's
local shard cache, so its second epoch reads local disk. Throughput is measured over `--epochs` whole epochs
(worker start-up and shuffle-buffer fill included, so it is a lower bound); "per worker" divides by the worker count (the
main process counts as one worker when --workers is 0). `--s3-clients obstore,s3fs` measures
the S3 sources once per client of the loader's range requests (rows "s3", "s3:s3fs"), on
the same server. Each row runs in a fresh process (spawned, as a trainer starts): obstore's
runtime does not survive a fork, so a process that read S3 through obstore itself would
leave its later loader workers on s3fs.

`--server-cpus 1 --loader-cpus 0` pins the server and the loader (this process, its rows'
processes and their workers) to disjoint CPUs: on a small machine, the nearest thing to a
server on another machine, since the server then takes no CPU from the loader.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from loader_common import close_pools, generated_dataset, pooled_reader, reader_for, train_step  # noqa: E402
from local_servers import SERVER_CPUS, SERVERS, served  # noqa: E402

from pipelines.core.errors import OneLineParser, run_cli  # noqa: E402
from tagtrain import loader as data  # noqa: E402
from tagtrain.commands.train import amp_settings, resolve_device  # noqa: E402
from tagtrain.loader.openers import open_url  # noqa: E402
from tagtrain.models.registry import create_model, get_entry  # noqa: E402


def stream_rate(url, options) -> tuple[float, float]:
    """(MB/s, chunks/s) of reading one epoch's shard bytes through the opener alone: the
    most the source allows, before any tar parsing or decoding."""
    card = data.load_card(url, options)
    shards = data.split_shards(card, url, "train")
    total, start = 0, time.perf_counter()
    for shard in shards:
        with open_url(shard.url, options) as f:
            while block := f.read(1 << 20):
                total += len(block)
    seconds = time.perf_counter() - start
    return total / 1e6 / seconds, sum(s.samples for s in shards) / seconds


def client_server_cpu(url) -> tuple[float, float]:
    """(CPU seconds of this process and its loader workers, of the server process). Live
    workers (a pool's persistent ones) are counted by psutil, reaped ones by os.times."""
    import psutil

    t = os.times()
    client = t.user + t.system + t.children_user + t.children_system
    servers = set(SERVERS.values())
    for child in psutil.Process().children(recursive=True):
        if child.pid not in servers:
            with contextlib.suppress(psutil.NoSuchProcess):
                client += sum(child.cpu_times()[:2])
    pid = SERVERS.get(url)
    server = sum(psutil.Process(pid).cpu_times()[:2]) if pid else 0.0
    return client, server


def loader_rate(
    url, options, spec, workers, batch_size, epochs, cache_dir=None, s3_client="obstore"
):
    """([chunks/s of each epoch], chunks per epoch, bytes fetched / bytes used, [(client,
    server) CPU ms per chunk of each epoch], [range requests per chunk of each epoch],
    [of which obstore's, per chunk]), start-up included in every epoch. On a
    shared machine the CPU cost per chunk is the steadier figure: wall time there depends
    on what else runs."""
    rates, chunks, fetched, used, cpu, pools, gets, by_obstore = [], 0, 0, 0, [], {}, [], []
    try:
        for epoch in range(epochs):
            start, cpu_start = time.perf_counter(), client_server_cpu(url)
            reader = pooled_reader(
                pools, url, options, spec, workers, batch_size, epoch, cache_dir, s3_client
            )
            chunks = sum(len(batch.keys) for batch in reader)
            reader.close()
            rates.append(chunks / (time.perf_counter() - start))
            cpu_end = client_server_cpu(url)
            cpu.append(tuple(1000 * (b - a) / max(1, chunks) for a, b in zip(cpu_start, cpu_end)))
            gets.append(reader.stats.range_requests / max(1, chunks))
            by_obstore.append(reader.stats.obstore_requests / max(1, chunks))
            if epoch == 0:
                fetched, used = reader.stats.bytes_read, reader.stats.bytes_used
    finally:
        close_pools(pools)
    return rates, chunks, fetched / max(1, used), cpu, gets, by_obstore


def _row_in_child(results, servers, local_dir, args) -> None:
    SERVERS.update(servers)
    # A spawned process spawns its own children by default; loader workers are forked
    # in a trainer.
    multiprocessing.set_start_method("fork", force=True)
    # Before the clock starts, what a trainer has done before it reads (and what the
    # rows before this one did when all ran in one process): the imports, one batch read
    # from local disk in this process, the card's filesystem. obstore is imported, its
    # runtime not started.
    import obstore  # noqa: F401

    url, options, spec, _, batch_size, *_ = args
    reader, _ = reader_for(local_dir, {}, spec, 0, batch_size, 0)
    next(iter(reader))
    reader.close()
    data.load_card(url, options)
    results.put(loader_rate(*args))


def loader_rate_fresh(
    local_dir, url, options, spec, workers, batch_size, epochs, cache_dir, s3_client
):
    """`loader_rate` in a fresh spawned process (see the module docs); `local_dir`: the
    dataset on local disk, to warm the process up."""
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    args = (url, options, spec, workers, batch_size, epochs, cache_dir, s3_client)
    child = context.Process(
        target=_row_in_child, args=(results, dict(SERVERS), str(local_dir), args)
    )
    child.start()
    try:
        return results.get()
    finally:
        child.join()


def step_wait(url, options, args, device) -> dict:
    """Train `--train-steps` steps; time blocked on the loader vs the whole step."""
    entry = get_entry(args.model)
    reader, plan = reader_for(
        url, options, entry.input_spec, args.train_workers, args.batch_size, 0
    )
    model = create_model(
        args.model, len(data.load_card(url, options)["vocabulary"]), width=args.width
    )
    model.to(device).train()
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-4)
    to_input = data.DeviceInput(plan, device)
    dtype, _ = amp_settings("bf16" if device.type == "cuda" else "fp32", device)
    waits, totals, steps = 0.0, 0.0, 0
    batches = iter(reader)
    next(batches)  # worker start-up is not a step
    while steps < args.train_steps:
        t0 = time.perf_counter()
        batch = next(batches, None)
        if batch is None:
            reader, _ = reader_for(
                url, options, entry.input_spec, args.train_workers, args.batch_size, steps + 1
            )
            batches = iter(reader)
            continue
        t1 = time.perf_counter()
        train_step(model, optimiser, to_input, batch, device, dtype)
        t2 = time.perf_counter()
        waits += t1 - t0
        totals += t2 - t0
        steps += 1
    return {
        "steps_per_s": steps / totals,
        "chunks_per_s": steps * args.batch_size / totals,
        "wait_fraction": waits / totals,
    }


def print_table(rows, ceilings, spec, directory, args) -> None:
    local = {w: rates for s, w, _, rates, *_ in rows if s == "local"}
    print()
    plan = data.plan_input(data.load_card(str(directory)), spec)
    read = plan.member if plan.device_feature is None else f"{plan.member} (mel on device)"
    print(f"loader: {spec.kind} crops of {spec.frames} frames, reading {read}, from {directory}")
    where = "one shared machine"
    if args.server_cpus or args.loader_cpus:
        where += (
            f" (servers on CPUs {args.server_cpus or 'all'}, loader on {args.loader_cpus or 'all'})"
        )
    print(f"batch {args.batch_size}; chunks/s per epoch, start-up included; {where}")
    header = ("source", "workers", "chunks", "epoch 1/s", "vs local", "epoch 2/s", "vs local",
              "fetch/use", "source max")  # fmt: skip
    print("".join(f"{h:>11}" for h in header))
    for source, workers, chunks, rates, ratio, *_ in rows:
        base = local.get(workers, [float("nan")] * len(rates))
        ceiling = ceilings[source.split(":")[0]]
        second = rates[1] if len(rates) > 1 else float("nan")
        cells = (
            source, workers, chunks, f"{rates[0]:.0f}", f"{rates[0] / base[0]:.2f}",
            f"{second:.0f}", f"{second / base[min(1, len(base) - 1)]:.2f}",
            f"{ratio:.2f}", f"{ceiling[1]:.0f}/s",
        )  # fmt: skip
        print("".join(f"{c:>11}" for c in cells))
    print("vs local: per-worker ratio to local disk at the same worker count; fetch/use:")
    print("shard bytes read or downloaded / member bytes decoded (first epoch)")
    print_cpu(rows)


def print_cpu(rows) -> None:
    """CPU ms per chunk, loader (this process and its workers) and server, per epoch; the
    ratio local / (loader + server) is the throughput ratio when CPU is what limits."""
    local = {w: cpu for s, w, _, _, _, cpu, *_ in rows if s == "local"}
    print()
    header = ("source", "workers", "e1 loader", "e1 server", "e1 ratio", "e2 loader",
              "e2 server", "e2 ratio", "e1 GETs", "e2 GETs", "obstore")  # fmt: skip
    print("".join(f"{h:>11}" for h in header))
    for source, workers, _, _, _, cpu, gets, by_obstore in rows:
        cells = [source, workers]
        for epoch, (client, server) in enumerate(cpu[:2]):
            base = local.get(workers, cpu)[min(epoch, len(local.get(workers, cpu)) - 1)][0]
            cells += [f"{client:.2f}", f"{server:.2f}", f"{base / max(1e-9, client + server):.2f}"]
        cells += [f"{g:.3f}" for g in gets[:2]]
        cells.append(f"{sum(by_obstore) / sum(gets):.2f}" if sum(gets) else "-")
        print("".join(f"{c:>11}" for c in cells))
    print("CPU ms per chunk, start-up included; ratio: local loader CPU / (loader + server);")
    print("GETs: remote range requests per chunk (after merging neighbouring ranges);")
    print("obstore: the fraction of those GETs that obstore sent (the rest: s3fs)")


def main(argv=None) -> int:
    parser = OneLineParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="a prepared dataset (default: generate one)")
    parser.add_argument("--tracks", type=int, default=1024, help="generated samples per epoch")
    parser.add_argument("--seconds", type=float, default=29.1, help="generated track length")
    parser.add_argument(
        "--stored", help="generated members: mel, pcm or mel,pcm (default mel; --peers mel,pcm)"
    )
    parser.add_argument("--sources", help="default local,s3,s3-cache; --peers: local or s3")
    parser.add_argument(
        "--s3-clients", default="obstore", help="clients of S3 range requests: obstore,s3fs"
    )
    parser.add_argument("--workers", help="loader worker counts (default 0,1; --peers 0)")
    parser.add_argument("--batch-size", type=int, help="default 32; --peers 16")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--model", default="short_chunk_resnet")
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--train-steps", type=int, default=20)
    parser.add_argument("--train-workers", type=int, default=1)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--server-cpus", default="", help="pin local servers to these CPUs")
    parser.add_argument("--loader-cpus", default="", help="pin the loader to these CPUs")
    parser.add_argument(
        "--peers", action="store_true", help="our loader beside its peers (bench/loader_peers.py)"
    )
    args = parser.parse_args(argv)
    SERVER_CPUS.update(int(c) for c in args.server_cpus.split(",") if c)
    if args.loader_cpus:
        os.sched_setaffinity(0, {int(c) for c in args.loader_cpus.split(",")})
    if args.peers:
        import loader_peers

        return loader_peers.main(args)
    args.stored = args.stored or "mel"
    args.sources = args.sources or "local,s3,s3-cache"
    args.workers = args.workers or "0,1"
    args.batch_size = args.batch_size or 32

    stored = tuple(s for s in args.stored.split(",") if s)
    directory = (
        Path(args.data) if args.data else generated_dataset(args.tracks, args.seconds, stored)
    )
    spec = get_entry(args.model).input_spec
    device = resolve_device(args.device, 0)
    worker_counts = [int(w) for w in args.workers.split(",")]
    rows, ceilings, training = [], {}, None
    for source in args.sources.split(","):
        with served(source, directory) as (url, options):
            ceilings[source] = stream_rate(url, options)
            print(f"  {source:<8} raw stream {ceilings[source][0]:6.0f} MB/s", flush=True)
            clients = args.s3_clients.split(",") if source.startswith("s3") else ["obstore"]
            for workers, client in [(w, c) for c in clients for w in worker_counts]:
                name = source if client == "obstore" else f"{source}:{client}"
                with tempfile.TemporaryDirectory(prefix="tagtrain-cache-") as cache:
                    rates, chunks, ratio, cpu, gets, by_obstore = loader_rate_fresh(
                        directory, url, options, spec, workers, args.batch_size, args.epochs,
                        cache if source.endswith("-cache") else None, client,
                    )  # fmt: skip
                rows.append((name, workers, chunks, rates, ratio, cpu, gets, by_obstore))
                shown = " ".join(f"{r:.0f}" for r in rates)
                print(f"  {name:<11} workers={workers:<3} {shown} chunks/s", flush=True)
            if source == "local" and args.train_steps:
                training = step_wait(url, options, args, device)
    print_table(rows, ceilings, spec, directory, args)
    if training:
        print()
        print(
            f"training {args.model} (width {args.width:g}) on {device}, "
            f"{args.train_workers} loader worker(s): {training['steps_per_s']:.2f} steps/s, "
            f"{training['chunks_per_s']:.0f} chunks/s, waiting for data "
            f"{100 * training['wait_fraction']:.1f}% of each step"
        )
    return 0


if __name__ == "__main__":
    sys.exit(run_cli("loader.py", main))
