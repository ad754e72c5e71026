"""Streaming loader over prepared shards (WebDataset tars) from a directory or URL prefix.

Modules, one job each:
    card       the dataset card: fetched, schema-checked, its shards listed
    plan       what the model eats and how it is made (InputPlan, plan_input)
    assign     which shards each rank and loader worker reads; batches per rank
    tar        raw samples of one shard (tar walk, group by key, duplicates counted)
    samples    one sample to (crop, labels), validated; rejects counted by reason
    shuffle    hashed choices (stable_int) and the deterministic shuffle buffer
    positions  a worker's position in its stream, as checkpoint rows
    stream     ShardStream: one rank's batches for one epoch, per worker role
    reader     the DataLoader over it and EpochReader (commit, positions, stats)
    worker_item WorkerItem: a batch as it crosses from a worker (numpy arrays, by value)
    persist    LoaderPool: loader worker processes kept for every epoch of a run
    device     DeviceInput: the batch to the model's input on the device
    stats      LoaderStats and LoaderError
    index      the index's member byte ranges (SplitIndex: a split's samples as columns)
    partition  sample-level partitioning: one global order, equal batches, elastic resume
    sampled    a worker's batches under sample-level partitioning (ranged reads)
    ranged     member byte ranges: local files mapped, remote by cat_ranges, with retries
    mapped     a local shard as a memory map, guarded against truncation in place
    s3ranges   the s3:// range requests through obstore (less CPU per GET than s3fs)
    retry      a sequential shard stream that reopens at the failed offset
    cache      a local shard cache (cache_dir, cache_limit) shared by workers and ranks
    rangecache the same cache holding only the member ranges read (sample-level reading)
    verify     --verify: shard sha256 against the card
    openers    local/HTTP/S3/GCS streams (fsspec), never a shell pipe

The dataset card (`dataset.json`, next to the shards) is the contract: it lists the shards
of each split with their sample counts, the feature configuration, the vocabulary and the
mel statistics. `plan_input` checks the card against the model's `InputSpec` and decides
how the model's input is made: a crop of the stored mel (or harmonic tensor, or PCM), or a
crop of the stored PCM turned into the model's mel on the training device.

Reading opens each shard with `openers.open_url` (regular local files, fsspec for remote
URLs) and uses WebDataset's `group_by_keys`, with a tar walker of our own that
reads each member in one call and seeks over unneeded ones. Only `.json` and `.npy` members are ever read (npy with
allow_pickle=False); any other member is skipped at the tar level, unread, and counted:
no WebDataset decoder ever sees a shard's bytes. Unreadable, truncated or missing shards
and invalid samples (see `samples`) are counted by reason and skipped, never fatal unless
their fraction passes `LoaderConfig.max_bad_fraction`.

Two ways to read a training epoch. When the index (`index.parquet`) gives each tar
member's byte range (its `members` column), training uses sample-level partitioning
(`partition`, `sampled`): one global sample order per epoch, cut into equal batches for
any world size, worker count and batch size, each worker fetching only the members the
model needs by byte range; the resume state is the number of samples of that order
consumed, so a run may resume with another world size or worker count. Without the
column (older datasets), and always for evaluation, shards are read whole, in order, as
described next (`LoaderConfig.partition` forces either).

Determinism and resumption (whole-shard reading). Everything random is a pure function of
(seed, epoch, ...):
- shards are shuffled per epoch and dealt to ranks, then to each rank's loader workers
  (greedy by sample count, so ranks get near-equal shares);
- each worker reads its shards in order and feeds a shuffle buffer whose choices are a
  hash of (seed, epoch, rank, worker, number emitted so far);
- a training crop's offset is a hash of (seed, epoch, key), and so is the seed of its
  waveform augmentation, if any (`augment`).
So a worker's sample stream is fixed given (seed, epoch, rank, worker). Each batch
carries its worker's position after it (next shard and sample to read, the positions
held in the shuffle buffer, the count emitted); the trainer keeps the position of the
last batch it consumed from each worker, and the turn at which it did, and stores them
in checkpoints. On resume the role after the last consumed one goes first (the
DataLoader's turn-taking restarts at its worker 0), and a worker rebuilds its buffer
from those positions, skips everything before its frontier without decoding it (whole
shards without buffered samples are not even opened) and continues: the resumed epoch
sees exactly the samples the interrupted one had not consumed, each once (batches still
in the loader's prefetch queue at the kill are simply produced again). If a shard became
unreadable in between, only its buffered samples are lost: at most one shuffle buffer.

Equal batches per rank (DDP, whole-shard reading): training drops each worker's last
partial batch and every rank runs `planned_steps` batches per epoch: the smallest rank's
batch count, computed from the card's shard sample counts; the trainer also stops all
ranks together if one runs dry early (corrupt shards)."""

from pipelines.core.card import CardError, card_checksum
from tagtrain.loader.assign import (
    LoaderConfig,
    assign_shards,
    check_enough_shards,
    planned_steps,
)
from tagtrain.loader.card_reader import ShardInfo, check_card, load_card, split_shards
from tagtrain.loader.device import DeviceInput, estimate_mel_stats
from tagtrain.loader.input_plan import InputPlan, plan_input
from tagtrain.loader.persist import LoaderPool
from tagtrain.loader.positions import (
    WorkerPosition,
    decode_positions,
    encode_positions,
    position_width,
)
from tagtrain.loader.reader import Batch, EpochReader, make_loader
from tagtrain.loader.sampled import is_sample_state, resume_rows
from tagtrain.loader.shuffle import ShuffleBuffer, stable_int
from tagtrain.loader.stats import LoaderError, LoaderStats
from tagtrain.loader.stream import ShardStream
from tagtrain.loader.tar import tar_members
from tagtrain.loader.verify import verify_shards

__all__ = [
    "Batch",
    "CardError",
    "DeviceInput",
    "EpochReader",
    "InputPlan",
    "LoaderConfig",
    "LoaderError",
    "LoaderPool",
    "LoaderStats",
    "ShardInfo",
    "ShardStream",
    "ShuffleBuffer",
    "WorkerPosition",
    "assign_shards",
    "card_checksum",
    "check_card",
    "check_enough_shards",
    "decode_positions",
    "encode_positions",
    "estimate_mel_stats",
    "is_sample_state",
    "load_card",
    "make_loader",
    "plan_input",
    "planned_steps",
    "position_width",
    "resume_rows",
    "split_shards",
    "stable_int",
    "tar_members",
    "verify_shards",
]
