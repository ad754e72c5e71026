"""What the loader and GPU benchmarks share: generated datasets (shards copied under more
names), readers made as a trainer makes them (one card read, loader workers kept across
epochs), and one training step."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from tagtrain import loader as data


def dataset_dir(tracks: int, seconds: float, stored: tuple[str, ...], features=None) -> Path:
    """Where a generated dataset is kept. The name holds the generator's feature settings:
    a dataset written by an older generator (e.g. before the card recorded the mel scale)
    is not reused, since a model would read it another way (its PCM, computing the mel,
    instead of its mel)."""
    import hashlib
    import json

    from pipelines.core.features import FeatureConfig

    settings = json.dumps((features or FeatureConfig()).to_dict(), sort_keys=True)
    tag = hashlib.sha256(settings.encode()).hexdigest()[:8]
    name = f"tagtrain-bench2-{tracks}x{seconds:g}s-{'+'.join(stored)}-{tag}"
    return Path(tempfile.gettempdir()) / name


def generated_dataset(tracks: int, seconds: float, stored: tuple[str, ...], features=None) -> Path:
    """`tracks` samples per epoch: 64 generated tracks in two shards, the shards then
    copied under further names, with their index rows (generating audio is slow; reading
    is what is measured)."""
    import json
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq

    from tagtrain.loader import synthetic

    out = dataset_dir(tracks, seconds, stored, features)
    if (out / "dataset.json").exists():
        return out
    print(f"writing generated {seconds:g} s tracks to {out} ...", flush=True)
    card = synthetic.make_dataset(
        out,
        {"train": [32, 32]},
        seconds=(seconds, seconds + 0.1),
        stored=stored,
        features=features,
        seed=0,
    )
    originals = card["splits"]["train"]["shards"]
    index = pq.read_table(out / "index.parquet")
    shards, tables = [], []
    for i in range(max(1, tracks // 32)):
        source = originals[i % len(originals)]
        name = f"train-{i:06d}.tar"
        if name != source["name"]:
            shutil.copyfile(out / source["name"], out / name)
        shards.append({**source, "name": name})
        rows = index.filter(pa.compute.equal(index["shard"], source["name"]))
        shard_column = rows.schema.get_field_index("shard")
        tables.append(rows.set_column(shard_column, "shard", pa.array([name] * len(rows))))
    pq.write_table(pa.concat_tables(tables), out / "index.parquet")
    card["splits"]["train"] = {
        "samples": sum(s["samples"] for s in shards),
        "seconds": sum(s["seconds"] for s in shards),
        "shards": shards,
    }
    (out / "dataset.json").write_text(json.dumps(card))
    return out


def reader_for(
    url, options, spec, workers, batch_size, epoch, split="train", cache_dir=None,
    s3_client="obstore",
):  # fmt: skip
    card = data.load_card(url, options)
    plan = data.plan_input(card, spec)
    shards = data.split_shards(card, url, split)
    cfg = data.LoaderConfig(
        batch_size=batch_size,
        workers=workers,
        shuffle_buffer=256,
        seed=0,
        storage_options=options,
        cache_dir=cache_dir,
        s3_client=s3_client,
    )
    data.check_enough_shards(shards, cfg, split)
    stream = data.ShardStream(shards, plan, card["vocabulary"], cfg, epoch)
    return data.EpochReader(stream, pin_memory=torch.cuda.is_available()), plan


def pooled_reader(
    pools: dict, url, options, spec, workers, batch_size, epoch, cache_dir=None,
    s3_client="obstore",
):  # fmt: skip
    """What the trainer does: the card is read once, and with loader workers the same
    worker processes read every epoch (a `LoaderPool`, made on the first epoch and kept in
    `pools`; without workers, the first epoch's stream, planned again per epoch)."""
    pool = pools.get(url)
    if isinstance(pool, data.ShardStream):
        return data.EpochReader(pool.for_epoch(epoch), pin_memory=torch.cuda.is_available())
    if pool is not None:
        return data.EpochReader(pool.stream(epoch, None), pool=pool)
    reader, _ = reader_for(
        url, options, spec, workers, batch_size, epoch, cache_dir=cache_dir, s3_client=s3_client
    )
    if not workers:
        pools[url] = reader.stream
        return reader
    pool = pools[url] = data.LoaderPool(reader.stream, pin_memory=torch.cuda.is_available())
    return data.EpochReader(reader.stream, pool=pool)


def close_pools(pools: dict) -> None:
    for pool in pools.values():
        if isinstance(pool, data.LoaderPool):  # (a stream without workers holds nothing)
            pool.close()


def train_step(model, optimiser, to_input, batch, device, dtype) -> None:
    """One step on `batch` (autocast to `dtype` unless None), synchronised on CUDA so that
    the time around it is the step's."""
    with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        logits = model(to_input(batch.x))
    loss = torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), batch.y.to(device))
    optimiser.zero_grad(set_to_none=True)
    loss.backward()
    optimiser.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
