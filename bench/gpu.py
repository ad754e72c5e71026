"""GPU training benchmark (issue 18): step time, the fraction of each step spent waiting
for data, and samples/s, for the short-chunk ResNet and the Music Tagging Transformer at
bf16 with 1..16 loader workers, reading local shards and S3 (a local SeaweedFS server).

    .venv/bin/python bench/gpu.py                       # needs a CUDA GPU
    .venv/bin/python bench/gpu.py --workers 1,4,16 --sources local --steps 100
    .venv/bin/python bench/gpu.py --dry-run             # the same code on CPU, tiny: a check

Goal when run: data wait <= 5% of each step with 16 workers. Each model gets a generated
dataset whose stored mel matches its input (features from its InputSpec); the first
`--warmup` steps (worker start-up, cuDNN autotuning) are not timed.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from loader_common import close_pools, generated_dataset, pooled_reader, train_step  # noqa: E402
from local_servers import served  # noqa: E402

from pipelines.core.features import FeatureConfig  # noqa: E402
from tagtrain import loader as data  # noqa: E402
from tagtrain.models.registry import create_model, get_entry  # noqa: E402


def features_for(spec) -> FeatureConfig:
    names = ("sample_rate", "n_fft", "hop", "n_mels", "f_min", "f_max", "log_scale")
    return FeatureConfig(**{n: getattr(spec, n) for n in names})


def train_steps(url, options, model_name, workers, args, device) -> dict:
    """Time `args.steps` bf16 training steps after `args.warmup`; wait = blocked on the
    loader (the step's host-to-device copy counts as compute)."""
    batch_size, steps, warmup = args.batch_size, args.steps, args.warmup
    spec = get_entry(model_name).input_spec
    card = data.load_card(url, options)
    n_tags = len(card["vocabulary"])
    model = create_model(model_name, n_tags, width=args.width).to(device).train()
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-4)
    epoch, wait, total, done, pools = 0, 0.0, 0.0, -warmup, {}
    # As the trainer: the same loader worker processes for every epoch.
    reader = pooled_reader(pools, url, options, spec, workers, batch_size, epoch)
    to_input, batches = data.DeviceInput(reader.stream.plan, device), iter(reader)
    while done < steps:
        t0 = time.perf_counter()
        batch = next(batches, None)
        if batch is None:
            reader.close()
            epoch += 1
            reader = pooled_reader(pools, url, options, spec, workers, batch_size, epoch)
            batches = iter(reader)
            continue
        t1 = time.perf_counter()
        train_step(model, optimiser, to_input, batch, device, torch.bfloat16)
        if done >= 0:
            wait, total = wait + t1 - t0, total + time.perf_counter() - t0
        done += 1
    reader.close()
    close_pools(pools)
    return {
        "step_ms": 1000 * total / steps,
        "wait": wait / total,
        "samples_s": steps * batch_size / total,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="short_chunk_resnet,music_tagging_transformer")
    parser.add_argument("--workers", default="1,2,4,8,16")
    parser.add_argument("--sources", default="local,s3")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--tracks", type=int, default=2048)
    parser.add_argument("--width", type=float, default=1.0, help="model width multiplier")
    parser.add_argument(
        "--dry-run", action="store_true",
        help="check the benchmark on CPU: tiny models, 2 timed steps, 1 and 2 workers",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.dry_run:
        args.workers, args.batch_size, args.steps, args.warmup = "1,2", 4, 2, 1
        args.tracks, args.width = 64, 0.125
        device = torch.device("cpu")
        name = "CPU dry run (figures mean nothing)"
    elif torch.cuda.is_available():
        device, name = torch.device("cuda"), torch.cuda.get_device_name()
    else:
        print("error: bench/gpu.py needs a CUDA GPU (or --dry-run)", file=sys.stderr)
        return 2
    print(f"{name}; batch {args.batch_size}, bf16, {args.steps} steps after {args.warmup}")
    print(
        f"{'model':>26} {'source':>7} {'workers':>7} {'step ms':>8} {'wait':>6} {'samples/s':>10}"
    )
    for model_name in args.models.split(","):
        spec = get_entry(model_name).input_spec
        directory = generated_dataset(args.tracks, 29.1, ("mel",), features_for(spec))
        for source in args.sources.split(","):
            with served(source, directory) as (url, options):
                for workers in (int(w) for w in args.workers.split(",")):
                    r = train_steps(url, options, model_name, workers, args, device)
                    print(
                        f"{model_name:>26} {source:>7} {workers:>7} {r['step_ms']:8.1f} "
                        f"{100 * r['wait']:5.1f}% {r['samples_s']:10.0f}",
                        flush=True,
                    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
