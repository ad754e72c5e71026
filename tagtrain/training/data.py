"""What a run trains and validates on: the card, the input plan, the splits' shards, the
loader settings of both, and the input on the device with its normalisation.

Run settings decided here: `split_variant` (the card's must match), `standardize` (over
the model's own), and `epoch_samples`/`balance` (each training epoch a sample of tracks
drawn without replacement, weighted by inverse tag frequency as MAEST's balanced sample:
`epoch_sample`; the loader draws it, tagtrain.loader.partition).

Everything the trainer asks of the loader goes through here (tagtrain.loader's public API).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from pipelines.core.card import card_checksum, card_split_variant
from tagtrain.loader import (
    DeviceInput,
    EpochReader,
    InputPlan,
    LoaderConfig,
    LoaderError,
    LoaderPool,
    ShardInfo,
    ShardStream,
    check_enough_shards,
    decode_positions,
    estimate_mel_stats,
    load_card,
    plan_input,
    planned_steps,
    split_shards,
    stable_int,
    verify_shards,
)
from tagtrain.loader.index import load_sample_refs, read_index
from tagtrain.loader.input_plan import with_standardize
from tagtrain.loader.partition import EpochSample
from tagtrain.models.registry import InputSpec
from tagtrain.run.config import ConfigError, RunConfig
from tagtrain.run.runtime import Runtime
from tagtrain.training.augment_chain import TrainingAugmentChain
from tagtrain.training.callbacks import TagBalance


@dataclass
class TrainingData:
    card: dict
    checksum: str
    vocabulary: list[str]
    plan: InputPlan
    augment: TrainingAugmentChain | None
    train_shards: list[ShardInfo]
    val_shards: list[ShardInfo]
    train_loader: LoaderConfig
    val_loader: LoaderConfig
    device_input: DeviceInput
    norm_source: str  # card, estimated or none
    # (shard URLs, stream options) -> the persistent loader workers reading them
    pools: dict = dataclasses.field(default_factory=dict)

    @classmethod
    def open(cls, cfg: RunConfig, spec: InputSpec, chain, rt: Runtime) -> TrainingData:
        options = cfg.effective_storage_options()
        card = load_card(cfg.data, options)
        check_split_variant(card, cfg)
        plan = plan_input(card, spec, source=cfg.data, from_pcm=chain is not None)
        if cfg.standardize:
            plan = with_standardize(plan, cfg.standardize)
        augment = TrainingAugmentChain(chain, plan.features["sample_rate"]) if chain else None
        train_shards = subset(split_shards(card, cfg.data, cfg.train_split), cfg)
        val_shards = split_shards(card, cfg.data, cfg.val_split)
        train_loader = LoaderConfig(
            batch_size=cfg.batch_size, workers=cfg.workers, shuffle_buffer=cfg.shuffle_buffer,
            seed=cfg.seed, rank=rt.dist.rank, world=rt.dist.world, train=True,
            storage_options=options, max_bad_fraction=cfg.max_bad_fraction,
            cache_dir=cfg.cache_dir or None, cache_limit=int(cfg.cache_limit * 2**30),
            s3_client=cfg.s3_client,
        )  # fmt: skip
        if cfg.epoch_samples:
            sample = epoch_sample(cfg, card, train_shards, options)
            train_loader = dataclasses.replace(train_loader, epoch_sample=sample)
        if cfg.verify:
            verify_shards([*train_shards, *val_shards], options)
        check_enough_shards(train_shards, train_loader, cfg.train_split)
        check_batches(train_shards, train_loader, cfg.train_split)
        if not val_shards:
            raise LoaderError(f"split {cfg.val_split!r} has no samples to validate on")
        val_workers = min(cfg.workers, len(val_shards) // rt.dist.world)
        val_loader = dataclasses.replace(
            train_loader, train=False, workers=val_workers, eval_chunks=cfg.val_chunks,
            epoch_sample=None,  # validation reads every track (and need not carry weights)
        )  # fmt: skip
        return cls(
            card, card_checksum(card), list(card["vocabulary"]), plan, augment, train_shards,
            val_shards, train_loader, val_loader, DeviceInput(plan, rt.device),
            "card" if plan.mean is not None else "none",
        )  # fmt: skip

    def reader(self, shards, epoch: int, resume: torch.Tensor | None, **stream) -> EpochReader:
        """An epoch's training batches from `shards`, from the opaque positions `resume`.
        With loader workers, the same worker processes serve every epoch of these shards
        (a `LoaderPool`, kept until `close`)."""
        positions = None if resume is None else decode_positions(resume)
        pin = self.device_input.device.type == "cuda"
        key = (tuple(s.url for s in shards), tuple(sorted(stream.items())))
        pool = self.pools.get(key)
        if pool is not None:
            return EpochReader(pool.stream(epoch, positions), pin, pool)
        stream_ = ShardStream(
            shards, self.plan, self.vocabulary, self.train_loader, epoch, positions,
            augment=self.augment, **stream,
        )  # fmt: skip
        if not self.train_loader.workers:
            return EpochReader(stream_, pin)
        pool = self.pools[key] = LoaderPool(stream_, pin)
        return EpochReader(stream_, pin, pool)

    def val_reader(self) -> EpochReader:
        """The validation split's batches (fixed crops, the same every epoch); with loader
        workers, through worker processes kept for every validation of the run."""
        pin = self.device_input.device.type == "cuda"
        stream = ShardStream(self.val_shards, self.plan, self.vocabulary, self.val_loader)
        if not self.val_loader.workers:
            return EpochReader(stream, pin)
        pool = self.pools.get("validation")
        if pool is None:
            pool = self.pools["validation"] = LoaderPool(stream, pin)
        return EpochReader(stream, pin, pool)

    def close(self) -> None:
        """Stop the persistent loader workers."""
        pools, self.pools = self.pools, {}
        for pool in pools.values():
            pool.close()

    def steps(self, reader, done: int = 0) -> int:
        """Steps of the epoch; `done` already run before a resume (a sample-level epoch
        resumed with another world size continues with what its samples still give)."""
        assignment = reader.stream.assignment
        if done and hasattr(assignment, "remaining_steps"):
            return done + assignment.remaining_steps()
        return planned_steps(assignment, self.train_loader.batch_size)

    def geometry(self) -> dict:
        """The loader settings a mid-epoch resume must keep."""
        c = self.train_loader
        keys = ("world", "slots", "shuffle_buffer", "batch_size", "seed")
        values = {k: getattr(c, k) for k in keys}
        values["workers"] = values.pop("slots")
        sample = c.epoch_sample
        values["epoch_samples"] = sample.size if sample is not None else 0
        values["balance"] = (
            "none" if sample is None or sample.weights is None else "inverse_frequency"
        )
        return values

    def estimate_stats(self) -> None:
        """No usable card statistics (e.g. mel computed from PCM at other settings): take
        them from the first training shards, identically on every rank."""
        cfg = dataclasses.replace(
            self.val_loader, rank=0, world=1, workers=0, eval_chunks=1, batch_size=8
        )
        stream = ShardStream(self.train_shards[:2], self.plan, self.vocabulary, cfg)
        flat = (
            dataclasses.replace(b, x=b.x.reshape(-1, *b.x.shape[2:])) for b in EpochReader(stream)
        )
        mean, std = estimate_mel_stats(flat, self.device_input)
        self.device_input.set_stats(mean, std)
        self.norm_source = "estimated"

    def norm_state(self) -> dict:
        di = self.device_input
        if di.mean is None:
            return {"mean": None, "std": None, "source": self.norm_source}
        return {
            "mean": di.mean[:, 0].cpu().tolist(),
            "std": di.std[:, 0].cpu().tolist(),
            "source": self.norm_source,
        }

    def load_norm(self, state: dict) -> None:
        self.device_input.set_stats(state["mean"], state["std"])
        self.norm_source = state["source"]


def subset(shards: list[ShardInfo], cfg: RunConfig) -> list[ShardInfo]:
    """`--train-fraction`: whole shards in a seeded order until the fraction of samples."""
    if cfg.train_fraction >= 1:
        return shards
    order = sorted(shards, key=lambda s: stable_int("fraction", cfg.seed, s.name))
    wanted = cfg.train_fraction * sum(s.samples for s in shards)
    kept, total = [], 0
    for shard in order:
        if total >= wanted:
            break
        kept.append(shard)
        total += shard.samples
    return sorted(kept, key=lambda s: s.name)


def check_batches(shards: list[ShardInfo], loader: LoaderConfig, split: str) -> None:
    """A split that gives no full batch is a one-line error, not a run of 0 steps."""
    from tagtrain.loader import assign_shards

    layout = assign_shards(shards, loader.world, loader.slots, loader.seed, 0, True)
    if planned_steps(layout, loader.batch_size) == 0:
        samples = sum(s.samples for s in shards)
        raise LoaderError(
            f"split {split!r} ({samples} samples) gives no full batch of {loader.batch_size} "
            f"from {loader.world} rank(s) x {loader.slots} loader worker(s): lower "
            "--batch-size or --workers"
        )


def check_batch_norm(model: torch.nn.Module, batch_size: int) -> None:
    """BatchNorm cannot train on one sample per batch: a one-line error, not a traceback."""
    norms = (torch.nn.modules.batchnorm._BatchNorm,)
    if batch_size < 2 and any(isinstance(m, norms) for m in model.modules()):
        raise ConfigError(
            "--batch-size 1 cannot train a model with batch normalisation: use 2 or more"
        )


def check_split_variant(card: dict, cfg: RunConfig) -> None:
    """`split_variant`: a recipe that needs one split of a dataset (Pons on MTT: the
    original ~26k clips, `full`) refuses a dataset prepared from another (one line)."""
    if not cfg.split_variant:
        return
    have = card_split_variant(card)
    if have != cfg.split_variant:
        raise ConfigError(
            f"{cfg.data} was prepared from the {have or 'unrecorded'} split variant; this run "
            f"needs split_variant {cfg.split_variant} (prepare it from a manifest built "
            f"with --split-variant {cfg.split_variant})"
        )


def epoch_sample(cfg: RunConfig, card: dict, shards: list[ShardInfo], options) -> EpochSample:
    """`--epoch-samples N` (with `--balance inverse_frequency`: MAEST's weights, a track's
    weight the sum over its tags of 1 / train tracks with the tag, `TagBalance`), over the
    tracks of the training shards."""
    refs = load_sample_refs(shards, options)
    if refs is None:
        raise ConfigError(
            "--epoch-samples draws tracks by key: the dataset's index.parquet needs member "
            "byte ranges (prepare it again)"
        )
    if cfg.balance == "none":
        return EpochSample(cfg.epoch_samples)
    keys = set(refs.key_list())
    index = read_index(cfg.data, options).select(["key", "tags"]).to_pylist()
    tags = {row["key"]: row["tags"] or [] for row in index if row["key"] in keys}
    balance = TagBalance.from_tags(list(tags.values()), card["vocabulary"])
    position = {t: i for i, t in enumerate(card["vocabulary"])}
    weights = {}
    for key, track_tags in tags.items():
        known = {position[t] for t in track_tags if t in position}
        weights[key] = sum(balance.tag_weights[i] for i in known) if known else balance.untagged
    return EpochSample(cfg.epoch_samples, weights)
