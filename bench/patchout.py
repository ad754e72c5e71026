"""Inference throughput of the patchout transformer, with and without inference patchout,
against the short-chunk CNN on the same input length, side by side in one run.

    .venv/bin/python bench/patchout.py                          # CPU, 10 s inputs
    .venv/bin/python bench/patchout.py --models patchout,patchout_small --batch 8
    .venv/bin/python bench/patchout.py --device cuda --batch 64 --repeats 20

Each model gets a random log-mel batch of its own bands (96 for the patchout models, 128
for the CNN) and `--seconds` of frames, runs `--warmup` untimed batches, then `--repeats`
rounds in which every configuration times one batch in turn (so load changes reach all
alike), under torch.inference_mode (CUDA synchronised); the figure is samples/s over the
median batch time. Inference patchout drops the model's default time columns (3 per
second: 30 of 61 at 10 s) and `--freq-patchout` rows, evenly spaced. Ratios are to the
short-chunk CNN's rate in the same run, so a loaded machine moves the rates but less the
ratios.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tagtrain.models.patchout import PATCHOUT_MODELS, patchout_input  # noqa: E402
from tagtrain.models.registry import count_parameters, create_model, get_entry  # noqa: E402

BASELINE = "short_chunk_cnn"


def batch_seconds(model, x: torch.Tensor) -> float:
    sync = torch.cuda.synchronize if x.device.type == "cuda" else (lambda: None)
    with torch.inference_mode():
        sync()
        t0 = time.perf_counter()
        model(x)
        sync()
    return time.perf_counter() - t0


def interleaved_rates(cases: list[tuple], warmup: int, repeats: int) -> list[float]:
    """Samples/s of each (model, x) over the median of `repeats` timed batches, timed in
    turn (one batch of each per round) so that load changes reach every case alike."""
    for model, x in cases:
        for _ in range(warmup):
            batch_seconds(model, x)
    times: list[list[float]] = [[] for _ in cases]
    for _ in range(repeats):
        for i, (model, x) in enumerate(cases):
            times[i].append(batch_seconds(model, x))
    return [x.shape[0] / statistics.median(t) for (_, x), t in zip(cases, times)]


def variants(names: list[str], seconds: float, freq_patchout: int):
    """(label, model name, model, n_mels, frames) for each configuration measured."""
    for name in names:
        if name in PATCHOUT_MODELS:
            spec = patchout_input(seconds)
            for inference in (False, True):
                model = create_model(name, 50, seconds=seconds, freq_patchout=freq_patchout)
                model.set_patchout(inference=inference)
                m = model
                kept = (
                    f"{(m.grid[0] - m.freq_patchout) * (m.grid[1] - m.time_patchout)}"
                    if inference
                    else f"{m.grid[0] * m.grid[1]}"
                )
                label = f"{name} ({'patchout' if inference else 'full'}, {kept} patches)"
                yield label, name, model, spec.n_mels, spec.frames
        else:
            spec = get_entry(name).input_spec
            frames = 1 + int(round(seconds * spec.sample_rate)) // spec.hop
            yield name, name, create_model(name, 50), spec.n_mels, frames


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="patchout,patchout_small,patchout_tiny")
    parser.add_argument("--seconds", type=float, default=10.0, help="input length (default 10)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--freq-patchout", type=int, default=0, help="rows dropped at inference")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)
    if args.batch < 1 or args.repeats < 1 or args.warmup < 0:
        parser.error("--batch and --repeats must be at least 1, --warmup not negative")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    names = [n for n in args.models.split(",") if n] + [BASELINE]
    print(
        f"{args.seconds:g} s inputs, batch {args.batch}, {args.repeats} timed rounds, "
        f"device {device}, {torch.get_num_threads()} CPU threads",
        flush=True,
    )
    rows, cases = [], []
    for label, name, model, n_mels, frames in variants(names, args.seconds, args.freq_patchout):
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(args.batch, n_mels, frames, generator=gen).to(device)
        cases.append((model.to(device).eval(), x))
        rows.append({"label": label, "model": name, "params": count_parameters(model)})
    for row, rate in zip(rows, interleaved_rates(cases, args.warmup, args.repeats)):
        row["rate"] = rate
    base = next(r["rate"] for r in rows if r["model"] == BASELINE)
    width = max(len(r["label"]) for r in rows)
    print(f"\n{'model':<{width}}  {'params':>11}  {'samples/s':>10}  {'vs ' + BASELINE:>20}")
    for r in rows:
        r["ratio"] = r["rate"] / base
        print(
            f"{r['label']:<{width}}  {r['params']:>11,}  {r['rate']:>10.2f}  {r['ratio']:>19.3f}x"
        )
    for name in dict.fromkeys(r["model"] for r in rows if r["model"] in PATCHOUT_MODELS):
        full, cut = (r["rate"] for r in rows if r["model"] == name)
        print(f"{name}: inference patchout speed-up {cut / full:.2f}x")
    if args.json:
        settings = {k: v for k, v in vars(args).items() if k != "json"}
        Path(args.json).write_text(json.dumps({"settings": settings, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
