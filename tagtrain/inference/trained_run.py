"""A trained run, ready to use: its config and a checkpoint turned back into a model.

Shared by `evaluate`, `robustness`, `tag` and `embed`. The checkpoint carries everything
inference needs (model name and width, vocabulary, the input plan with the model's
feature configuration, the normalisation it trained with, and `model_setup`: the calls
that configure the rebuilt model, e.g. a patchout run's inference patchout), so a run
directory alone is enough to tag audio and nothing here knows one model from another; a
dataset to evaluate on is checked against it here. Nothing here imports the trainers.

Normalisation always comes from the checkpoint: the statistics the model trained with
(the clean training card's mel_stats, or estimated ones), never those of the set being
evaluated, so a deformed copy is normalised exactly like the clean data.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from pipelines.core.card import CardError, card_checksum
from pipelines.core.errors import UserError, first_line
from pipelines.core.flags import add_flags, setting
from pipelines.core.storage import file_sha256
from tagtrain.inference.run_checks import (
    check_parameter_count,
    checked_normalisation,
    checked_plan,
    checked_vocabulary,
)
from tagtrain.loader import (
    DeviceInput,
    InputPlan,
    LoaderConfig,
    LoaderError,
    ShardInfo,
    load_card,
    plan_input,
    split_shards,
)
from tagtrain.loader.openers import OpenerError
from tagtrain.models.registry import InputSpec, create_model
from tagtrain.run import checkpoint as ckpt
from tagtrain.run.config import (
    ConfigError,
    RunConfig,
    apply,
    check_saved_model_settings,
    without_storage,
)
from tagtrain.run.directory import RunDir
from tagtrain.run.runtime import DeviceError, amp_settings, resolve_device

CHECKPOINTS = RunDir.CHECKPOINTS


class RunError(UserError, ValueError):
    """A run directory (or its use) that cannot work; the message is one line."""


# Everything a command may turn into one `error: ...` line.
RUN_ERRORS = (
    RunError,
    ConfigError,
    CardError,
    LoaderError,
    OpenerError,
    ckpt.CheckpointError,
    DeviceError,
    OSError,
)


@dataclass
class TrainedRun:
    dir: Path
    config: RunConfig
    checkpoint: Path
    model: nn.Module  # in eval mode, on `device`
    vocabulary: list[str]
    plan: InputPlan  # how the model was fed in training
    mean: list[float] | None  # per-band normalisation it trained with
    std: list[float] | None
    card_checksum: str
    device: torch.device
    autocast_dtype: torch.dtype | None
    # Where the run lives (None: at `dir`). A remote run's `dir` is a local staging copy:
    # what is written there reaches the store through `publish`.
    store: RunDir | None = None
    # A published model scored on another vocabulary (tagtrain/pretrained/on_shards.py):
    # the columns of the dataset's label vector that `vocabulary` names, and the dataset's
    # tags it cannot predict. None / empty for our runs: the dataset's vocabulary is theirs.
    label_columns: list[int] | None = None
    unscored_tags: list[str] = dataclasses.field(default_factory=list)

    @property
    def name(self) -> str:
        return self.store.name if self.store is not None else self.dir.name

    @functools.cached_property
    def checkpoint_sha256(self) -> str | None:
        """The checkpoint file's sha256 (what evaluate, robustness and a student record),
        hashed once per run object."""
        return file_sha256(self.checkpoint)

    @property
    def location(self) -> str:
        """The run directory as the user names it: a path or an object-store URL."""
        return str(self.store) if self.store is not None else str(self.dir)

    @property
    def checkpoint_location(self) -> str:
        if self.store is None:
            return str(self.checkpoint)
        return self.store.url(self.checkpoint.name)

    def publish(self, *paths: Path) -> None:
        """Upload files or folders written under `dir` (a remote run; locally nothing)."""
        if self.store is not None:
            for path in (p for p in paths if Path(p).exists()):
                self.store.publish(Path(path).relative_to(self.dir).as_posix())

    @property
    def model_name(self) -> str:
        return self.config.model

    @property
    def spec(self) -> InputSpec:
        return self.model.input_spec

    def describe(self) -> str:
        level = "chunk-level" if self.spec.chunk_level else "song-level"
        return (
            f"{self.model_name} (width {self.config.width:g}, {level}, "
            f"{self.spec.samples / self.spec.sample_rate:.2f} s input) from "
            f"{self.checkpoint_location}"
        )


def load_run(
    run_dir: str | Path,
    checkpoint: str = "best",
    device: str = "auto",
    storage_options: dict | None = None,
) -> TrainedRun:
    """The run's model with the chosen checkpoint's weights (torch.load weights_only). The
    run may be a local directory or an object-store prefix (s3://, gs://, https://:
    the checkpoint is downloaded to a staging directory)."""
    store = RunDir(run_dir, storage_options)
    path = _checkpoint_file(store, checkpoint)
    name = path.name
    torch_device = resolve_device(device, 0)
    state = ckpt.load_checkpoint(path)
    source = store.url(name)
    try:
        # A checkpoint is untrusted input: everything it asks for is checked before
        # anything is built (run_checks.py), and it never says how to reach storage.
        saved = json.loads(state["config"])
        if not isinstance(saved, dict):
            raise RunError(f"{source}: its config is not a mapping of settings")
        config = apply(RunConfig(), without_storage(saved), f"{path} config")
        check_saved_model_settings(config, f"{source} config")
        vocabulary = checked_vocabulary(state["vocabulary"], source)
        # Fields added since a checkpoint was written take their defaults.
        plan = InputPlan(**checked_plan(state["input_plan"], _PLAN_FIELDS, source))
        norm = checked_normalisation(state.get("normalisation") or {}, source)
        check_parameter_count(config, len(vocabulary), source)
        ckpt.check_finite(state["model"], source)
        # Seeded (in a forked generator) although the weights are replaced: loading a run,
        # e.g. a student's teacher, must not move the caller's random stream.
        model = create_model(config.model, len(vocabulary), seed=0, width=config.width)
        model.load_state_dict(state["model"])
        for method, kwargs in (state.get("model_setup") or {}).items():
            _setup_method(model, method)(**kwargs)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        if isinstance(exc, UserError):
            raise
        raise RunError(f"{store.url(name)} does not fit its run: {first_line(exc, 200)}") from None
    model.to(torch_device).eval()
    autocast_dtype, _ = amp_settings(config.precision, torch_device)
    return TrainedRun(
        dir=store.path,
        config=config,
        checkpoint=path,
        model=model,
        vocabulary=vocabulary,
        plan=plan,
        mean=norm.get("mean"),
        std=norm.get("std"),
        card_checksum=str(state.get("card_checksum", "")),
        device=torch_device,
        autocast_dtype=autocast_dtype,
        store=store if store.remote else None,
    )


def _checkpoint_file(store: RunDir, checkpoint: str) -> Path:
    """The local file of the run's `checkpoint` (downloaded first from a remote run)."""
    if not store.is_run_directory():
        raise RunError(f"no run directory at {store}")
    if checkpoint not in CHECKPOINTS:
        raise RunError(f"--checkpoint must be one of {', '.join(CHECKPOINTS)}, got {checkpoint}")
    name = CHECKPOINTS[checkpoint]
    if checkpoint == "best" and not store.exists(name) and store.exists(ckpt.LAST):
        raise RunError(f"{store} has no best.pt yet (no validated epoch): use --checkpoint last")
    if store.remote and not store.pull(name):
        raise ckpt.CheckpointError(f"no checkpoint at {store.url(name)}")
    return store / name


def _setup_method(model: nn.Module, name: str):
    """A configuration method the checkpoint names (only `set_*` methods are called)."""
    if not name.startswith("set_") or not callable(getattr(model, name, None)):
        raise RunError(f"the checkpoint asks for {name}(), which the model does not have")
    return getattr(model, name)


_PLAN_FIELDS = tuple(f.name for f in dataclasses.fields(InputPlan))


@dataclass
class EvalSet:
    """One split of one dataset, checked against a run and ready to stream."""

    data: str
    split: str
    card: dict
    shards: list[ShardInfo]
    plan: InputPlan
    device_input: DeviceInput

    @property
    def tracks(self) -> int:
        return sum(s.samples for s in self.shards)

    @functools.cached_property
    def card_sha256(self) -> str:
        return card_checksum(self.card)


def open_split(run: TrainedRun, data: str, split: str, card: dict | None = None) -> EvalSet:
    """Check a dataset split against the run: same vocabulary, features the model can eat."""
    options = run.config.effective_storage_options()
    card = card if card is not None else load_card(data, options)
    if run.label_columns is not None:
        named = [card["vocabulary"][i] for i in run.label_columns]
        if named != run.vocabulary:
            raise RunError(f"{data}: its vocabulary is not the one {run.name} was set up for")
    elif list(card["vocabulary"]) != run.vocabulary:
        raise RunError(
            f"{data}: its vocabulary ({len(card['vocabulary'])} tags) differs from the one "
            f"{run.name} was trained on ({len(run.vocabulary)} tags)"
        )
    plan = plan_input(card, run.spec, source=data)
    # The run's own statistics, not this card's (see the module docs); and its own
    # standardisation where the run chose one over the model's (RunConfig.standardize).
    plan = dataclasses.replace(plan, mean=None, std=None)
    if run.config.standardize:
        plan = dataclasses.replace(
            plan, standardize=run.plan.standardize, global_stats=run.plan.global_stats
        )
    device_input = DeviceInput(plan, run.device, run.mean, run.std)
    shards = split_shards(card, data, split)
    if not shards:
        raise RunError(f"{data}: split {split!r} has no shards")
    return EvalSet(data, split, card, shards, plan, device_input)


def check_whole_split(eval_set: EvalSet, read: int, stats, args) -> None:
    """Scores (or embeddings) of part of a split are not the split's: RunError (one line)
    when tracks could not be read (a shard lost after retries, malformed samples), unless
    --allow-partial, which goes on with what was read (evaluate's metrics.json then shows
    both counts)."""
    if read >= eval_set.tracks or getattr(args, "allow_partial", False):
        return
    first = stats.errors[0] if stats.errors else "no error reported"
    raise RunError(
        f"{eval_set.data} split {eval_set.split}: read {read} of {eval_set.tracks} tracks "
        f"({stats.shard_errors} shard error(s), {stats.bad_samples} bad sample(s); first: "
        f"{first}); --allow-partial scores the tracks read"
    )


def loader_config(run: TrainedRun, eval_set: EvalSet, args) -> LoaderConfig:
    """Evaluation loading: fixed, evenly spaced crops; no more workers than shards."""
    return LoaderConfig(
        batch_size=args.batch_size,
        workers=min(args.workers, len(eval_set.shards)),
        shuffle_buffer=0,
        train=False,
        # Song-level models too: the reference evaluates every model on 16 chunks; a
        # recipe's eval_chunks (won2021: 8) unless --chunks is given.
        eval_chunks=run.config.evaluation_chunks() if args.chunks is None else args.chunks,
        storage_options=run.config.effective_storage_options(),
        s3_client=run.config.s3_client,
    )


def same_data(a: str, b: str) -> bool:
    """Whether two dataset locations are the same (local paths compared resolved)."""
    if "://" in a or "://" in b:
        return a.rstrip("/") == b.rstrip("/")
    return Path(a).resolve() == Path(b).resolve()


# --- shared command-line pieces --------------------------------------------------------
# `args` below: a command's options dataclass (an `EvalOptions` or one with its fields)
# or the argparse namespace of the same flags.


@dataclass
class EvalOptions:
    """How a run is applied to a dataset (evaluate, robustness, embed)."""

    checkpoint: str = setting("best", "checkpoint of the run", choices=tuple(CHECKPOINTS))
    device: str = setting("auto", "auto, cpu, cuda or cuda:N")
    batch_size: int = setting(8, "tracks per batch")
    workers: int = setting(2, "loader processes (0 = main process)")
    chunks: int = setting(16, "evenly spaced chunks averaged per track (chunk-level models)")
    allow_partial: bool = setting(
        False, "score a split of which some tracks could not be read (default: refuse)",
        negatable=False,
    )  # fmt: skip
    s3_endpoint_url: str = setting(
        "", "S3-compatible endpoint for an s3:// run and its data (or AWS_ENDPOINT_URL; "
        "never the run's saved one)"
    )  # fmt: skip


def load_run_from_args(args, run: str | None = None) -> TrainedRun:
    """`load_run` with a command's --checkpoint, --device and --s3-endpoint-url (which
    then also reaches the run's dataset)."""
    endpoint = getattr(args, "s3_endpoint_url", "")
    options = {"s3": {"endpoint_url": endpoint}} if endpoint else None
    trained = load_run(run or args.run, args.checkpoint, args.device, options)
    if endpoint:
        trained.config = dataclasses.replace(trained.config, s3_endpoint_url=endpoint)
    return trained


def add_run_arguments(parser: argparse.ArgumentParser, chunks: bool = True) -> None:
    add_flags(parser, EvalOptions, exclude=() if chunks else ("chunks",), with_defaults=True)


def check_run_arguments(args) -> None:
    if args.batch_size < 1:
        raise RunError("--batch-size must be at least 1")
    if args.workers < 0:
        raise RunError("--workers must not be negative")
    chunks = getattr(args, "chunks", 1)
    if chunks is not None and chunks < 1:
        raise RunError("--chunks must be at least 1")


__all__ = [
    "CHECKPOINTS",
    "RUN_ERRORS",
    "EvalOptions",
    "EvalSet",
    "RunError",
    "TrainedRun",
    "add_run_arguments",
    "check_run_arguments",
    "check_whole_split",
    "load_run",
    "load_run_from_args",
    "loader_config",
    "open_split",
    "same_data",
]
