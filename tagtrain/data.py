"""Streaming loader over prepared shards (WebDataset tars) from a directory or URL prefix.

The dataset card (`dataset.json`, next to the shards) is the contract: it lists the shards
of each split with their sample counts, the feature configuration, the vocabulary and the
mel statistics. `plan_input` checks the card against the model's `InputSpec` and decides
how the model's input is made: a crop of the stored mel (or harmonic tensor, or PCM), or a
crop of the stored PCM turned into the model's mel on the training device.

Reading uses WebDataset's `url_opener` (with the fsspec openers of `tagtrain.openers`
registered in its `gopen` table) and `group_by_keys`, with a tar walker of our own that
reads each member in one call and seeks over unneeded ones. Only `.json` and `.npy` members are ever read (npy with
allow_pickle=False); any other member is skipped at the tar level, unread, and counted:
no WebDataset decoder ever sees a shard's bytes. Unreadable, truncated or missing shards and undecodable samples are counted and
skipped, never fatal.

Determinism and resumption. Everything random is a pure function of (seed, epoch, ...):
- shards are shuffled per epoch and dealt to ranks, then to each rank's loader workers
  (greedy by sample count, so ranks get near-equal shares);
- each worker reads its shards in order and feeds a shuffle buffer whose choices are a
  hash of (seed, epoch, rank, worker, number emitted so far);
- a training crop's offset is a hash of (seed, epoch, key), and so is the seed of its
  waveform augmentation, if any (`augment`).
So a worker's sample stream is fixed given (seed, epoch, rank, worker). Each batch carries
its worker's position after it (next shard and sample to read, the positions held in the
shuffle buffer, the count emitted); the trainer keeps the position of the last batch it
consumed from each worker and stores it in checkpoints. On resume a worker rebuilds its
buffer from those positions, skips everything before its frontier without decoding it
(whole shards without buffered samples are not even opened) and continues: the resumed
epoch sees exactly the samples the interrupted one had not consumed, each once (batches
still in the loader's prefetch queue at the kill are simply produced again). If a shard
became unreadable in between, only its buffered samples are lost: at most one shuffle
buffer.

Equal batches per rank (DDP): training drops each worker's last partial batch and every
rank runs `planned_steps` batches per epoch: the smallest rank's batch count, computed
from the card's shard sample counts; the trainer also stops all ranks together if one
runs dry early (corrupt shards).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from pipelines.core.card import (
    CARD_NAME,
    CardError,
    card_checksum,
    check_features,
    parse_card,
    stored_features,
)
from pipelines.core.errors import first_line
from pipelines.core.features import FeatureConfig, harmonic_tensor, log_mel
from pipelines.core.shards import load_npy
from tagtrain.openers import join_url, read_bytes, register_with_webdataset
from tagtrain.registry import InputSpec

_NPY_SUFFIX = "npy"  # with "json", the only member types a shard may hold
_MAX_ERRORS_KEPT = 5


class LoaderError(ValueError):
    """A loader set-up that cannot work (e.g. too few shards); the message is one line."""


# --- the card -------------------------------------------------------------------------


def load_card(data: str, options: Mapping | None = None) -> dict:
    """The dataset card at `data/dataset.json` (a directory or a URL prefix)."""
    url = join_url(data, CARD_NAME)
    try:
        text = read_bytes(url, options)
    except Exception as exc:  # noqa: BLE001  (any storage failure: one line, e.g. no credentials)
        raise CardError(f"cannot read the dataset card {url}: {first_line(exc, 200)}") from None
    return parse_card(text, url)


@dataclass(frozen=True)
class ShardInfo:
    name: str
    url: str
    samples: int


def split_shards(card: Mapping, data: str, split: str) -> list[ShardInfo]:
    if split not in card["splits"]:
        have = ", ".join(sorted(card["splits"])) or "none"
        raise CardError(f"the dataset has no split {split!r} (it has: {have})")
    return [
        ShardInfo(s["name"], join_url(data, s["name"]), int(s["samples"]))
        for s in card["splits"][split]["shards"]
    ]


# --- what the model eats and how it is made ------------------------------------------


@dataclass(frozen=True)
class InputPlan:
    """How the model input is made from the shards.

    member: the shard member read ("mel.npy", "harm.npy" or "pcm.npy").
    length: crop length along the member's last (time) axis: frames, or samples.
    device_feature: None, or "mel"/"harm" to compute from the PCM crop on the device.
    features: the model's feature configuration (for device computation).
    mean/std: per-band normalisation (card mel_stats), or None.
    """

    kind: str
    member: str
    length: int
    chunk_level: bool
    device_feature: str | None
    features: dict
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None

    @property
    def feature_config(self) -> FeatureConfig:
        return FeatureConfig.from_dict(self.features)


def _model_features(card: Mapping, spec: InputSpec) -> FeatureConfig:
    base = {k: v for k, v in card["features"].items() if k != "stored"}
    fields = {f.name for f in dataclasses.fields(FeatureConfig)}
    wanted = {k: v for k, v in spec.to_dict().items() if k in fields}
    return FeatureConfig.from_dict({**base, **wanted})


def plan_input(
    card: Mapping, spec: InputSpec, source: str = "dataset", from_pcm: bool = False
) -> InputPlan:
    """Check the card against the model's input and decide how to feed it.

    from_pcm: always read PCM (computing a mel/harmonic input on the device), e.g. for
    waveform augmentation, even when the card stores the model's feature.
    Raises CardError (one line) when the shards cannot feed the model: a stored feature
    with other settings and no PCM at the model's sample rate to recompute it from."""
    stored = stored_features(card)
    needs = spec.card_requirements()
    features = _model_features(card, spec).to_dict()
    if spec.kind == "pcm":
        if "pcm" not in stored:
            raise CardError(f"{source} stores {list(stored)}, the model needs pcm")
        check_features(card, needs, source)
        return InputPlan(
            "pcm", "pcm.npy", spec.samples, spec.chunk_level, None, features, None, None
        )

    mismatch = None
    if spec.kind in stored and not from_pcm:
        try:
            check_features(card, needs, source)
        except CardError as exc:
            mismatch = exc
        else:
            mean, std = _card_stats(card, spec)
            member = f"{spec.kind}.npy"
            return InputPlan(
                spec.kind, member, spec.frames, spec.chunk_level, None, features, mean, std
            )
    if "pcm" in stored and card["features"].get("sample_rate") == spec.sample_rate:
        # Recompute the model's feature from PCM with the pipeline's own function. The
        # card's statistics describe the card's mel: they apply only if that matches.
        mean, std = _card_stats(card, spec) if _matches(card, needs) else (None, None)
        return InputPlan(
            spec.kind, "pcm.npy", spec.samples, spec.chunk_level, spec.kind, features, mean, std
        )
    if mismatch is not None:
        raise mismatch
    if from_pcm:
        raise CardError(
            f"{source} stores {list(stored)}; waveform input needs pcm at {spec.sample_rate} Hz"
        )
    raise CardError(
        f"{source} stores {list(stored)}; the model needs {spec.kind} "
        f"(or pcm at {spec.sample_rate} Hz to compute it)"
    )


def _matches(card: Mapping, needs: Mapping) -> bool:
    try:
        check_features(card, needs)
    except CardError:
        return False
    return True


def _card_stats(card: Mapping, spec: InputSpec):
    stats = card.get("mel_stats")
    if spec.kind != "mel" or not stats:
        return None, None
    mean, std = stats.get("mean"), stats.get("std")
    if not mean or not std or len(mean) != spec.n_mels or len(std) != spec.n_mels:
        return None, None
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


# --- positions, stats and the shuffle buffer ----------------------------------------


@dataclass
class WorkerPosition:
    """Where one worker's deterministic stream stands within an epoch."""

    next_shard: int = 0  # ordinal of the next shard to read, in the worker's shard list
    next_index: int = 0  # index of the next sample to read inside that shard
    emitted: int = 0  # samples the shuffle buffer has emitted so far
    buffer: list[tuple[int, int]] = field(default_factory=list)  # (shard, index) per slot

    def to_row(self, width: int) -> list[int]:
        row = [self.next_shard, self.next_index, self.emitted, len(self.buffer)]
        row += [v for pos in self.buffer for v in pos]
        if len(row) > width:
            raise ValueError("position does not fit the encoding width")
        return row + [-1] * (width - len(row))

    @classmethod
    def from_row(cls, row) -> WorkerPosition:
        row = row.tolist() if hasattr(row, "tolist") else [int(v) for v in row]
        n = row[3]
        flat = row[4 : 4 + 2 * n]
        return cls(row[0], row[1], row[2], [(flat[i], flat[i + 1]) for i in range(0, 2 * n, 2)])


def position_width(shuffle_buffer: int) -> int:
    return 4 + 2 * max(0, shuffle_buffer)


def encode_positions(positions: Mapping[int, WorkerPosition], workers: int, width: int):
    """[workers, width] int64 tensor (checkpoint-safe) of a rank's worker positions."""
    rows = [positions.get(w, WorkerPosition()).to_row(width) for w in range(workers)]
    return torch.tensor(rows, dtype=torch.int64).reshape(workers, width)


def decode_positions(table: torch.Tensor) -> dict[int, WorkerPosition]:
    return {w: WorkerPosition.from_row(row.tolist()) for w, row in enumerate(table)}


@dataclass
class LoaderStats:
    shards_opened: int = 0
    shard_errors: int = 0
    samples: int = 0  # samples decoded
    bad_samples: int = 0  # undecodable or incomplete samples
    foreign_members: int = 0  # members that are neither .json nor .npy: skipped unread
    errors: list[str] = field(default_factory=list)

    def add(self, other: LoaderStats) -> LoaderStats:
        out = LoaderStats()
        for f in ("shards_opened", "shard_errors", "samples", "bad_samples", "foreign_members"):
            setattr(out, f, getattr(self, f) + getattr(other, f))
        out.errors = (self.errors + other.errors)[:_MAX_ERRORS_KEPT]
        return out

    def note(self, message: str) -> None:
        if len(self.errors) < _MAX_ERRORS_KEPT:
            self.errors.append(message[:300])

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def stable_int(*parts) -> int:
    """A 64-bit hash of the parts (never Python's salted hash)."""
    text = "\x1f".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "big")


class ShuffleBuffer:
    """A reservoir-style shuffle buffer whose choices are a hash of (stream, emitted)."""

    def __init__(self, size: int, stream_id: str, emitted: int = 0, entries=None):
        self.size = size
        self.stream_id = stream_id
        self.emitted = emitted
        self.entries = list(entries or [])

    def _pick(self, n: int) -> int:
        return stable_int(self.stream_id, self.emitted) % n

    def add(self, entry):
        """Take an entry; return the entry it pushes out, or None while filling."""
        if len(self.entries) < self.size:
            self.entries.append(entry)
            return None
        j = self._pick(len(self.entries))
        out, self.entries[j] = self.entries[j], entry
        self.emitted += 1
        return out

    def drain(self):
        while self.entries:
            out = self.entries.pop(self._pick(len(self.entries)))
            self.emitted += 1
            yield out


# --- shard assignment -----------------------------------------------------------------


@dataclass(frozen=True)
class LoaderConfig:
    batch_size: int
    workers: int = 0  # DataLoader worker processes; 0 reads in the main process
    shuffle_buffer: int = 256
    seed: int = 0
    rank: int = 0
    world: int = 1
    train: bool = True  # shuffle, random crops, drop partial batches; else fixed crops
    eval_chunks: int = 1  # evenly spaced chunks per track when not training
    storage_options: dict = field(default_factory=dict)
    prefetch_factor: int = 4

    @property
    def slots(self) -> int:
        return max(1, self.workers)


def assign_shards(
    shards: Sequence[ShardInfo], world: int, workers: int, seed: int, epoch: int, shuffle: bool
) -> list[list[list[ShardInfo]]]:
    """[rank][worker] -> shards, in reading order. Shards are shuffled per epoch, then
    each goes to the rank (then the worker) with the fewest samples so far."""
    order = list(range(len(shards)))
    if shuffle:
        order.sort(key=lambda i: stable_int("shards", seed, epoch, shards[i].name))
    per_rank: list[list[ShardInfo]] = [[] for _ in range(world)]
    rank_load = [0] * world
    for i in order:
        r = min(range(world), key=lambda k: (rank_load[k], k))
        per_rank[r].append(shards[i])
        rank_load[r] += shards[i].samples
    out = []
    for rank_shards in per_rank:
        slots: list[list[ShardInfo]] = [[] for _ in range(workers)]
        load = [0] * workers
        for shard in rank_shards:
            w = min(range(workers), key=lambda k: (load[k], k))
            slots[w].append(shard)
            load[w] += shard.samples
        out.append(slots)
    return out


def check_enough_shards(shards: Sequence[ShardInfo], cfg: LoaderConfig, split: str) -> None:
    needed = cfg.world * cfg.slots
    if len(shards) < needed:
        raise LoaderError(
            f"split {split!r} has {len(shards)} shard(s), fewer than ranks x loader workers = "
            f"{cfg.world} x {cfg.slots} = {needed}: lower --workers or write more shards"
        )


def planned_steps(assignment, batch_size: int) -> int:
    """Batches every rank runs in a training epoch: the smallest rank's count of full
    per-worker batches."""
    return min(
        sum(sum(s.samples for s in slot) // batch_size for slot in slots) for slots in assignment
    )


# --- the per-worker stream -------------------------------------------------------------


def tar_members(stream, select) -> Iterator[dict]:
    """{"fname", "data"} for each regular member that `select(name)` accepts.

    tarfile's random-access mode reads each member's data in one call and seeks over
    the members not selected (remote streams allow forward seeks: tagtrain.openers)."""
    import tarfile

    tar = tarfile.open(fileobj=stream, mode="r:")
    while (info := tar.next()) is not None:
        tar.members = []  # the index of seen members would grow with every sample
        if not info.isreg() or not select(info.name):
            continue
        yield {"fname": info.name, "data": tar.extractfile(info).read()}


class ShardStream(torch.utils.data.IterableDataset):
    """One rank's stream of batches for one epoch of one split (see the module docs).

    Yields dicts: {"x": tensor, "y": tensor, "keys": [str], "worker": int, "position":
    WorkerPosition as a row, "stats": dict}; each worker ends with {"final": True, ...}.

    augment: None, or a callable (PCM crop, seed) -> crop (e.g. tagtrain.augment's
    WaveformAugment) applied to training crops in the worker as batches are made; the seed
    is a hash of (seed, epoch, key), so it is reproducible and survives resumption. The
    shuffle buffer holds clean crops. keep_clean: batches also carry the un-augmented crops
    as "clean" (what a noisy-student teacher sees).
    """

    def __init__(
        self,
        shards: Sequence[ShardInfo],
        plan: InputPlan,
        vocabulary: Sequence[str],
        cfg: LoaderConfig,
        epoch: int = 0,
        resume: Mapping[int, WorkerPosition] | None = None,
        augment: Callable[[np.ndarray, int], np.ndarray] | None = None,
        keep_clean: bool = False,
    ):
        super().__init__()
        if (augment is not None or keep_clean) and plan.member != "pcm.npy":
            raise LoaderError(
                f"waveform augmentation needs PCM input, the plan reads {plan.member}"
            )
        self.augment = augment if cfg.train else None
        self.keep_clean = keep_clean
        self.plan = plan
        self.vocabulary = list(vocabulary)
        self.tag_index = {t: i for i, t in enumerate(self.vocabulary)}
        self.cfg = cfg
        self.epoch = epoch
        self.resume = dict(resume or {})
        self.assignment = assign_shards(
            shards, cfg.world, cfg.slots, cfg.seed, epoch, shuffle=cfg.train
        )
        self.width = position_width(cfg.shuffle_buffer if cfg.train else 0)

    # -- reading

    def _read_shard(self, shard: ShardInfo, stats: LoaderStats) -> Iterator[dict]:
        import webdataset as wds

        register_with_webdataset(self.cfg.storage_options)
        failed = []

        def record(exc: BaseException) -> bool:
            if not failed:
                stats.shard_errors += 1
                stats.note(f"{shard.name}: {type(exc).__name__}: {first_line(exc, 200)}")
            failed.append(exc)
            return True  # keep going: a bad shard is skipped, not fatal

        needed = {"json", self.plan.member}

        def select(fname: str) -> bool:
            ext = fname.rsplit("/", 1)[-1].partition(".")[2].lower()
            if ext in needed:
                return True
            if ext != "json" and ext.rpartition(".")[2] != _NPY_SUFFIX:
                stats.foreign_members += 1  # e.g. .pyd/.pth/.pickle: never read
            return False

        stats.shards_opened += 1
        opened = []

        def members(sources):
            for source in sources:
                opened.append(source["stream"])
                for member in tar_members(source["stream"], select):
                    yield {**member, "__url__": source["url"]}

        streams = wds.tariterators.url_opener([{"url": shard.url}], handler=record)
        try:
            yield from wds.tariterators.group_by_keys(members(streams), handler=record)
        except Exception as exc:  # noqa: BLE001  (truncated or corrupt tar: counted, skipped)
            record(exc)
        finally:
            for stream in opened:
                stream.close()

    def _decode(self, raw: dict, stats: LoaderStats):
        """(x, y) for a raw sample, or None (counted) when it cannot be used."""
        key = raw.get("__key__", "?")
        try:
            meta = json.loads(raw["json"])
            array = load_npy(raw[self.plan.member])
            y = np.zeros(len(self.vocabulary), dtype=np.float32)
            labels = meta.get("labels")
            if labels is None:
                labels = [self.tag_index[t] for t in meta.get("tags", []) if t in self.tag_index]
            y[np.asarray(labels, dtype=np.int64)] = 1.0
            x = self._crops(array, key)
        except (KeyError, ValueError, IndexError, TypeError) as exc:
            stats.bad_samples += 1
            stats.note(f"{key}: {type(exc).__name__}: {first_line(exc, 200)}")
            return None
        stats.samples += 1
        return x, y

    def _crops(self, array: np.ndarray, key: str) -> np.ndarray:
        expected_ndim = {"mel.npy": 2, "harm.npy": 3, "pcm.npy": 1}[self.plan.member]
        if array.ndim != expected_ndim or array.shape[-1] == 0:
            raise ValueError(f"{self.plan.member} has shape {array.shape}")
        if array.dtype.kind not in "fi":
            raise ValueError(f"{self.plan.member} has dtype {array.dtype}")
        length, total = self.plan.length, array.shape[-1]
        if total < length:
            pad = [(0, 0)] * (array.ndim - 1) + [(0, length - total)]
            fill = 0 if self.plan.member == "pcm.npy" else array.min()
            array = np.pad(array, pad, constant_values=fill)
            total = length
        span = total - length
        if self.cfg.train:
            offset = stable_int("crop", self.cfg.seed, self.epoch, key) % (span + 1)
            offsets = [offset if self.plan.chunk_level else 0]
        elif self.plan.chunk_level and self.cfg.eval_chunks > 1:
            offsets = np.linspace(0, span, self.cfg.eval_chunks).round().astype(int).tolist()
        else:
            offsets = [span // 2 if self.plan.chunk_level else 0]
        chunks = [array[..., o : o + length] for o in offsets]
        return np.ascontiguousarray(chunks[0] if self.cfg.train else np.stack(chunks))

    def _augmented(self, crop: np.ndarray, key: str) -> np.ndarray:
        return self.augment(crop, stable_int("augment", self.cfg.seed, self.epoch, key))

    # -- the stream

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker = info.id if info is not None else 0
        if (info.num_workers if info is not None else 1) != self.cfg.slots:
            raise LoaderError("the DataLoader's worker count differs from the loader config")
        if info is not None:
            torch.set_num_threads(1)  # workers parse and crop; torch threads would contend
        yield from self._worker_stream(worker, self.assignment[self.cfg.rank][worker])

    def _worker_stream(self, worker: int, shards: Sequence[ShardInfo]):
        cfg, stats = self.cfg, LoaderStats()
        start = self.resume.get(worker, WorkerPosition())
        frontier = (start.next_shard, start.next_index)
        if frontier[0] < len(shards) and frontier[1] >= shards[frontier[0]].samples:
            frontier = (frontier[0] + 1, 0)
        size = cfg.shuffle_buffer if cfg.train else 0
        shuffle = ShuffleBuffer(size, f"{cfg.seed}/{self.epoch}/{cfg.rank}/{worker}", start.emitted)
        # Slots of the saved buffer, refilled from their shards before anything new is read.
        wanted = {pos: slot for slot, pos in enumerate(start.buffer)}
        wanted_shards = {pos[0] for pos in wanted}
        restored: list = [None] * len(start.buffer)
        position = WorkerPosition(*frontier, start.emitted, [])
        pending: list = []
        buffer_ready = not wanted

        def make_batch(entries, final=False):
            position.emitted = shuffle.emitted
            position.buffer = [e[0] for e in shuffle.entries]
            out = {
                "worker": worker,
                # A tensor: the DataLoader passes it through whole (a list of ints it
                # would walk element by element).
                "position": torch.tensor(position.to_row(self.width), dtype=torch.int64),
                "stats": stats.as_dict(),
            }
            if final:
                return {**out, "final": True}
            crops = [e[1][0] for e in entries]
            xs = crops
            if self.augment is not None:
                xs = [self._augmented(crop, e[2]) for crop, e in zip(crops, entries)]
            out["x"] = torch.from_numpy(np.stack(xs))
            out["y"] = torch.from_numpy(np.stack([e[1][1] for e in entries]))
            if self.keep_clean:
                out["clean"] = torch.from_numpy(np.stack(crops))
            return {**out, "keys": [e[2] for e in entries]}

        def take(entry):
            if entry is not None:
                pending.append(entry)
                if len(pending) == cfg.batch_size:
                    batch = make_batch(pending)
                    pending.clear()
                    return batch
            return None

        for ordinal, shard in enumerate(shards):
            if ordinal < frontier[0] and ordinal not in wanted_shards:
                continue  # finished before the checkpoint, nothing of it buffered
            last_wanted = max((i for o, i in wanted if o == ordinal), default=-1)
            for index, raw in enumerate(self._read_shard(shard, stats)):
                pos = (ordinal, index)
                if ordinal < frontier[0] and index > last_wanted:
                    break  # re-read only for its buffered samples: they are all back
                if pos < frontier:
                    slot = wanted.get(pos)
                    if slot is not None:
                        item = self._decode(raw, stats)
                        if item is not None:
                            restored[slot] = (pos, item, raw["__key__"])
                    continue
                if not buffer_ready:
                    shuffle.entries = [e for e in restored if e is not None]
                    buffer_ready = True
                item = self._decode(raw, stats)
                position.next_shard, position.next_index = ordinal, index + 1
                if position.next_index >= shard.samples:
                    position.next_shard, position.next_index = ordinal + 1, 0
                if item is None:
                    continue
                entry = (pos, item, raw["__key__"])
                batch = take(shuffle.add(entry) if size else entry)
                if batch is not None:
                    yield batch
            if ordinal >= frontier[0]:
                position.next_shard, position.next_index = ordinal + 1, 0
        if not buffer_ready:
            shuffle.entries = [e for e in restored if e is not None]
        for entry in shuffle.drain():
            batch = take(entry)
            if batch is not None:
                yield batch
        if pending and not cfg.train:
            yield make_batch(pending)
        yield make_batch([], final=True)


def make_loader(stream: ShardStream, pin_memory: bool = False) -> torch.utils.data.DataLoader:
    cfg = stream.cfg
    return torch.utils.data.DataLoader(
        stream,
        batch_size=None,  # batches are made in the workers (they carry positions)
        num_workers=cfg.workers,
        pin_memory=pin_memory,
        prefetch_factor=cfg.prefetch_factor if cfg.workers else None,
        persistent_workers=False,
        # Starting an iterator draws a base seed; from the global generator it would shift
        # the trainer's dropout stream on --resume. The workers' randomness is all hashed.
        generator=torch.Generator().manual_seed(cfg.seed),
    )


@dataclass
class Batch:
    x: torch.Tensor
    y: torch.Tensor
    keys: list[str]
    worker: int
    position: WorkerPosition  # the worker's position right after this batch
    clean: torch.Tensor | None = None  # un-augmented crops (streams with keep_clean)


class EpochReader:
    """Iterates a rank's loader for one epoch. `commit(batch)` records that a batch was
    used (trained on): `positions` then holds, per worker, the position after the last
    committed batch, which is what a checkpoint stores."""

    def __init__(self, stream: ShardStream, pin_memory: bool = False):
        self.stream = stream
        self.loader = make_loader(stream, pin_memory)
        self.positions: dict[int, WorkerPosition] = {
            w: stream.resume.get(w, WorkerPosition()) for w in range(stream.cfg.slots)
        }
        self.worker_stats: dict[int, LoaderStats] = {}
        self._iterator = None

    def __iter__(self) -> Iterator[Batch]:
        self._iterator = iter(self.loader)
        for item in self._iterator:
            w = item["worker"]
            self.worker_stats[w] = LoaderStats(**item["stats"])
            if item.get("final"):
                continue
            position = WorkerPosition.from_row(item["position"])
            yield Batch(item["x"], item["y"], item["keys"], w, position, item.get("clean"))

    def commit(self, batch: Batch) -> None:
        self.positions[batch.worker] = batch.position

    def close(self) -> None:
        """Stop the worker processes (an epoch may end before the loader is exhausted)."""
        iterator, self._iterator = self._iterator, None
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()

    @property
    def stats(self) -> LoaderStats:
        total = LoaderStats()
        for s in self.worker_stats.values():
            total = total.add(s)
        return total

    def encoded_positions(self) -> torch.Tensor:
        return encode_positions(self.positions, self.stream.cfg.slots, self.stream.width)


# --- on the device --------------------------------------------------------------------


class DeviceInput:
    """Turns a loader batch into the model's input on the device: PCM to float (and to
    the model's mel/harmonic tensor when the plan says so), then per-band normalisation.
    Evaluation batches [B, chunks, ...] are flattened to [B * chunks, ...]."""

    def __init__(self, plan: InputPlan, device: torch.device, mean=None, std=None):
        self.plan = plan
        self.device = device
        self.features = plan.feature_config
        mean = mean if mean is not None else plan.mean
        std = std if std is not None else plan.std
        self.set_stats(mean, std)

    def set_stats(self, mean, std) -> None:
        if mean is None or std is None:
            self.mean = self.std = None
            return
        self.mean = torch.as_tensor(mean, dtype=torch.float32, device=self.device)[:, None]
        self.std = torch.as_tensor(std, dtype=torch.float32, device=self.device).clamp_min(1e-5)[
            :, None
        ]

    def raw(self, x: torch.Tensor) -> torch.Tensor:
        """Un-normalised model input (float32 on the device)."""
        x = x.to(self.device, non_blocking=True)
        if self.plan.member == "pcm.npy":
            x = x.float() / 32767.0
            if self.plan.device_feature == "mel":
                x = log_mel(x, self.features)
            elif self.plan.device_feature == "harm":
                x = harmonic_tensor(x, self.features)
            return x
        return x.float()

    def __call__(self, x: torch.Tensor, chunked: bool = False) -> torch.Tensor:
        if chunked:
            x = x.reshape(-1, *x.shape[2:])
        x = self.raw(x)
        if self.mean is not None and self.plan.kind == "mel":
            x = (x - self.mean) / self.std
        return x


def estimate_mel_stats(reader_batches, device_input: DeviceInput, max_batches: int = 8):
    """Per-band mean/std from a few batches, for cards without usable mel_stats."""
    total, total_sq, count = None, None, 0
    for i, batch in enumerate(reader_batches):
        if i >= max_batches:
            break
        mel = device_input.raw(batch.x).double()  # [B, n_mels, frames]
        s, sq = mel.sum(dim=(0, 2)), mel.square().sum(dim=(0, 2))
        total = s if total is None else total + s
        total_sq = sq if total_sq is None else total_sq + sq
        count += mel.shape[0] * mel.shape[2]
    if not count:
        return None, None
    mean = total / count
    std = (total_sq / count - mean.square()).clamp_min(0).sqrt()
    return mean.float().tolist(), std.float().tolist()


__all__ = [
    "Batch",
    "CardError",
    "DeviceInput",
    "EpochReader",
    "InputPlan",
    "LoaderConfig",
    "LoaderError",
    "LoaderStats",
    "ShardInfo",
    "ShardStream",
    "ShuffleBuffer",
    "WorkerPosition",
    "assign_shards",
    "card_checksum",
    "check_enough_shards",
    "decode_positions",
    "encode_positions",
    "estimate_mel_stats",
    "load_card",
    "plan_input",
    "planned_steps",
    "split_shards",
]
