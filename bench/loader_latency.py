"""The loader's first and cached epochs from S3 behind real round-trip latency, beside
local disk (issue 31, item 3).

    .venv/bin/python bench/loader_latency.py                  # 0, 10, 40 ms; 1, 2, 4 workers
    .venv/bin/python bench/loader_latency.py --rtts 10 --workers 2 --tracks 512

The S3 server is SeaweedFS (`bench/local_servers.py`), reached through
`bench/latency_proxy.py`, which holds every chunk RTT/2 each way (this kernel has no
`netem`). The server and the proxy run on `--server-cpus`, the loader (this process, each
row's fresh process and its workers) on `--loader-cpus`: on a two-core machine, the
nearest thing to a store on other machines. "s3" reads every epoch from S3; "s3-cache"
reads the first through the loader's local cache and the second from it. Each row is
`bench/loader.py`'s (a fresh spawned process, loader workers kept across epochs,
start-up included); "vs local" divides by local disk at the same worker count, "vs 0 ms"
by the same source at no added latency (1.00: the latency is hidden).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from latency_proxy import delayed  # noqa: E402
from loader import loader_rate_fresh  # noqa: E402
from loader_common import generated_dataset  # noqa: E402
from local_servers import SERVER_CPUS, served  # noqa: E402

from tagtrain.models.registry import get_entry  # noqa: E402


def _numbers(kind):
    def parse(text: str) -> list:
        try:
            values = [kind(v) for v in text.split(",") if v.strip()]
        except ValueError:
            values = []
        if not values or min(values) < 0:
            raise argparse.ArgumentTypeError(f"not a list of numbers >= 0: {text!r}")
        return values

    return parse


def _through(options: dict, endpoint: str) -> dict:
    s3 = options["s3"]
    return {"s3": {**s3, "client_kwargs": {**s3["client_kwargs"], "endpoint_url": endpoint}}}


def measure(args, directory: Path) -> list[tuple]:
    """[(source, rtt ms, workers, [chunks/s per epoch])], local rows with rtt None."""
    spec = get_entry(args.model).input_spec
    proxy_cpus = set(args.proxy_cpus or SERVER_CPUS)
    rows = []

    def row(source, rtt, url, options, workers, cache=None):
        rates, *_ = loader_rate_fresh(
            directory, url, options, spec, workers, args.batch_size, args.epochs, cache,
            "obstore",
        )  # fmt: skip
        rows.append((source, rtt, workers, rates))
        shown = " ".join(f"{r:.0f}" for r in rates)
        print(f"  {source:<9} rtt={rtt!s:<5} workers={workers:<2} {shown} chunks/s", flush=True)

    for workers in args.workers:
        row("local", None, str(directory), {}, workers)
    for source in args.sources:
        with served(source, directory) as (url, options):
            endpoint = options["s3"]["client_kwargs"]["endpoint_url"]
            for rtt in args.rtts:
                with delayed(endpoint, rtt, proxy_cpus) as proxied:
                    for workers in args.workers:
                        if source == "s3-cache":
                            with tempfile.TemporaryDirectory(prefix="tagtrain-cache-") as cache:
                                row(source, rtt, url, _through(options, proxied), workers, cache)
                        else:
                            row(source, rtt, url, _through(options, proxied), workers)
    return rows


def print_table(rows, args) -> None:
    local = {w: rates for s, rtt, w, rates in rows if s == "local"}
    at_zero = {(s, w): rates for s, rtt, w, rates in rows if rtt == 0}
    print()
    print(
        f"{args.model} crops, batch {args.batch_size}; chunks/s per epoch, start-up included;"
        f" S3 server on CPUs {args.server_cpus}, proxy on {args.proxy_cpus or args.server_cpus},"
        f" loader on {args.loader_cpus}"
    )
    header = ("source", "RTT ms", "workers", "epoch 1/s", "vs local", "vs 0 ms",
              "epoch 2/s", "vs local", "vs 0 ms")  # fmt: skip
    print("".join(f"{h:>10}" for h in header))
    for source, rtt, workers, rates in rows:
        cells = [source, "-" if rtt is None else f"{rtt:g}", workers]
        for epoch in range(2):
            if epoch >= len(rates):
                cells += ["-", "-", "-"]
                continue
            base = local[workers][min(epoch, len(local[workers]) - 1)]
            zero = at_zero.get((source, workers))
            cells += [
                f"{rates[epoch]:.0f}",
                f"{rates[epoch] / base:.2f}",
                f"{rates[epoch] / zero[epoch]:.2f}" if zero and rtt is not None else "-",
            ]
        print("".join(f"{c:>10}" for c in cells))
    print("vs local: S3 / local disk at the same worker count; vs 0 ms: / the same row at no")
    print("added latency. s3-cache epoch 2 reads the loader's local cache.")
    rtt = 10 if 10 in args.rtts else args.rtts[-1]
    for source, label in (("s3-cache", "cached epoch"), ("s3", "first S3 epoch")):
        index = 1 if source == "s3-cache" else 0
        for s, r, workers, rates in rows:
            if s == source and r == rtt and index < len(rates):
                ratio = rates[index] / local[workers][min(index, len(local[workers]) - 1)]
                print(f"{label} / local at {rtt:g} ms RTT, {workers} workers: {ratio:.2f}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="a prepared dataset (default: generate one)")
    parser.add_argument("--tracks", type=int, default=1024, help="generated samples per epoch")
    parser.add_argument("--seconds", type=float, default=29.1, help="generated track length")
    parser.add_argument("--stored", default="mel", help="generated members: mel, pcm or mel,pcm")
    parser.add_argument("--sources", default="s3,s3-cache", type=lambda t: t.split(","))
    parser.add_argument("--rtts", default="0,10,40", type=_numbers(float), help="RTTs in ms")
    parser.add_argument("--workers", default="1,2,4", type=_numbers(int))
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--model", default="short_chunk_resnet")
    cpus = _numbers(int)
    parser.add_argument("--server-cpus", default="1", type=cpus, help="the S3 server's CPUs")
    parser.add_argument("--proxy-cpus", type=cpus, help="the proxy's (default: the server's)")
    parser.add_argument("--loader-cpus", default="0", type=cpus, help="the loader's CPUs")
    args = parser.parse_args(argv)
    if unknown := set(args.sources) - {"s3", "s3-cache"}:
        parser.error(f"unknown source(s) {', '.join(sorted(unknown))}: s3, s3-cache")
    if 0 not in args.rtts:
        args.rtts = [0.0, *args.rtts]  # the "vs 0 ms" column's reference
    SERVER_CPUS.update(args.server_cpus)
    # Each row's process inherits it: torch's advice on worker counts, on every row.
    os.environ["PYTHONWARNINGS"] = "ignore:This DataLoader will create"
    try:
        os.sched_setaffinity(0, set(args.loader_cpus))
    except OSError as exc:  # e.g. a CPU this machine does not have
        parser.error(f"--loader-cpus {args.loader_cpus}: {exc.strerror}")
    stored = tuple(s for s in args.stored.split(",") if s)
    directory = (
        Path(args.data) if args.data else generated_dataset(args.tracks, args.seconds, stored)
    )
    print_table(measure(args, directory), args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
