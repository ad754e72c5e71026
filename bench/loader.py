"""Loader benchmark: chunks/s per loader worker from local, HTTP and S3 shards, and the
fraction of each training step spent waiting for data.

    .venv/bin/python bench/loader.py                        # generated 29 s tracks
    .venv/bin/python bench/loader.py --data demo_out/data    # a prepared dataset
    .venv/bin/python bench/loader.py --workers 16 --train-workers 16 --device cuda

HTTP is a local `http.server` and S3 a local moto server (both Python, in this process):
stand-ins that exercise the same code path as a real bucket; their figures are bounded by
those servers, not by the loader. Throughput is measured over `--epochs` whole epochs
(worker start-up and shuffle-buffer fill included, so it is a lower bound); "per worker" divides by the worker count (the
main process counts as one worker when --workers is 0).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tagtrain import data  # noqa: E402
from tagtrain.openers import open_url  # noqa: E402
from tagtrain.registry import create_model, get_entry  # noqa: E402
from tagtrain.train import amp_settings, resolve_device  # noqa: E402


def generated_dataset(tracks: int, seconds: float, stored: tuple[str, ...]) -> Path:
    """`tracks` samples per epoch: 64 generated tracks in two shards, the shards then
    copied under further names (generating audio is slow; reading is what is measured)."""
    import json
    import shutil

    from tests import shardkit

    out = Path(tempfile.gettempdir()) / f"tagtrain-bench-{tracks}x{seconds:g}s-{'+'.join(stored)}"
    if (out / "dataset.json").exists():
        return out
    print(f"writing generated {seconds:g} s tracks to {out} ...", flush=True)
    card = shardkit.make_dataset(
        out, {"train": [32, 32]}, seconds=(seconds, seconds + 0.1), stored=stored, seed=0
    )
    originals = card["splits"]["train"]["shards"]
    shards = []
    for i in range(max(1, tracks // 32)):
        source = originals[i % len(originals)]
        name = f"train-{i:06d}.tar"
        if name != source["name"]:
            shutil.copyfile(out / source["name"], out / name)
        shards.append({**source, "name": name})
    card["splits"]["train"] = {
        "samples": sum(s["samples"] for s in shards),
        "seconds": sum(s["seconds"] for s in shards),
        "shards": shards,
    }
    (out / "dataset.json").write_text(json.dumps(card))
    return out


def _wait_for_port(port: int, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise SystemExit(f"error: local server on port {port} did not start")


@contextlib.contextmanager
def served(source: str, directory: Path):
    """(data URL, storage options) for a source over `directory`. The HTTP and S3
    servers run in their own processes, so they do not share the loader's interpreter."""
    from tests import shardkit

    if source == "local":
        yield str(directory), {}
        return
    if source not in ("http", "s3"):
        raise SystemExit(f"error: unknown source {source!r}")
    port = shardkit.free_port()
    if source == "http":
        cmd = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"]
        cmd += ["--directory", str(directory)]
    else:
        cmd = [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)]
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for_port(port)
        endpoint = f"http://127.0.0.1:{port}"
        if source == "http":
            yield endpoint, {}
            return
        import boto3

        os.environ.update(shardkit.S3_CREDENTIALS, AWS_DEFAULT_REGION="us-east-1")
        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        client.create_bucket(Bucket="bench")
        for path in sorted(directory.iterdir()):
            if path.is_file():
                client.upload_file(str(path), "bench", f"data/{path.name}")
        yield "s3://bench/data", {"s3": {"endpoint_url": endpoint}}
    finally:
        server.kill()
        server.wait()


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


def reader_for(url, options, spec, workers, batch_size, epoch, split="train"):
    card = data.load_card(url, options)
    plan = data.plan_input(card, spec)
    shards = data.split_shards(card, url, split)
    cfg = data.LoaderConfig(
        batch_size=batch_size,
        workers=workers,
        shuffle_buffer=256,
        seed=0,
        storage_options=options,
    )
    data.check_enough_shards(shards, cfg, split)
    stream = data.ShardStream(shards, plan, card["vocabulary"], cfg, epoch)
    return data.EpochReader(stream, pin_memory=torch.cuda.is_available()), plan


def loader_rate(url, options, spec, workers, batch_size, epochs) -> tuple[float, int]:
    """Chunks/s over `epochs` whole epochs (start-up and shuffle-buffer fill included)."""
    chunks, start = 0, time.perf_counter()
    for epoch in range(epochs):
        reader, _ = reader_for(url, options, spec, workers, batch_size, epoch)
        chunks += sum(len(batch.keys) for batch in reader)
    return chunks / (time.perf_counter() - start), chunks


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
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            logits = model(to_input(batch.x))
        loss = torch.nn.functional.binary_cross_entropy_with_logits(
            logits.float(), batch.y.to(device)
        )
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        t2 = time.perf_counter()
        waits += t1 - t0
        totals += t2 - t0
        steps += 1
    return {
        "steps_per_s": steps / totals,
        "chunks_per_s": steps * args.batch_size / totals,
        "wait_fraction": waits / totals,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="a prepared dataset (default: generate one)")
    parser.add_argument("--tracks", type=int, default=1024, help="generated samples per epoch")
    parser.add_argument("--seconds", type=float, default=29.1, help="generated track length")
    parser.add_argument("--stored", default="mel", help="generated members: mel, pcm or mel,pcm")
    parser.add_argument("--sources", default="local,http,s3")
    parser.add_argument("--workers", default="0,1", help="loader worker counts to measure")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--model", default="short_chunk_resnet")
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--train-steps", type=int, default=20)
    parser.add_argument("--train-workers", type=int, default=1)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)

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
            print(f"  {source:<6} raw stream {ceilings[source][0]:6.0f} MB/s", flush=True)
            for workers in worker_counts:
                rate, chunks = loader_rate(
                    url, options, spec, workers, args.batch_size, args.epochs
                )
                rows.append((source, workers, chunks, rate, rate / max(1, workers)))
                print(f"  {source:<6} workers={workers:<3} {rate:8.0f} chunks/s", flush=True)
            if source == "local" and args.train_steps:
                training = step_wait(url, options, args, device)

    local = {w: r for s, w, _, _, r in rows if s == "local"}
    print()
    print(f"loader: {spec.kind} crops of {spec.frames} frames from {directory}")
    print(f"batch {args.batch_size}, {args.epochs} epoch(s) per figure, start-up included")
    header = ("source", "workers", "chunks", "chunks/s", "per worker", "vs local", "source max")
    print("".join(f"{h:>11}" for h in header))
    for source, workers, chunks, rate, per_worker in rows:
        ratio = per_worker / local[workers] if local.get(workers) else float("nan")
        ceiling = f"{ceilings[source][1]:.0f}/s"
        cells = (
            source,
            workers,
            chunks,
            f"{rate:.0f}",
            f"{per_worker:.0f}",
            f"{ratio:.2f}",
            ceiling,
        )
        print("".join(f"{c:>11}" for c in cells))
    print("source max: chunks/s at which the raw shard bytes alone arrive from that source")
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
    sys.exit(main())
