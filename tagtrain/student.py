"""`python -m tagtrain student`: noisy-student training (Xie et al. 2020; Won et al. 2021).

A frozen teacher (a finished run) labels the unlabelled split on the fly; a student learns
from half-labelled, half-unlabelled steps:

    loss = BCE(student(aug(x_l)), y_l) + w * BCE(student(aug(x_u)), sigmoid(teacher(x_u)))

Each step draws `batch_size` labelled and `batch_size` unlabelled crops. The student sees
every crop through the waveform augmentation chain (tagtrain.augment) and with its
dropout on; the teacher sees the clean twin of each unlabelled crop (same track, same
offset) in eval mode, so its soft pseudo-labels describe exactly the audio the student was
given, before the noise. Pseudo-labels are computed here rather than stored in the shards
(see docs/STUDENT.md): one teacher forward per unlabelled crop, no extra job, and they
always match the random crop of this epoch.

Knowledge expansion: a student as large as the teacher (or larger); knowledge
distillation: a smaller one (e.g. music_tagging_transformer_small, 64-d). With
`--iterations N` each student becomes the next iteration's teacher.

The run directory has the layout of `train` runs (config.json, metrics.csv, best.pt,
last.pt, summary.json, ...) plus student.json (the teacher and the student settings), so
every command that reads a run reads it. Validation and model selection are those of
`train`: the student's loss and AUCs on the labelled validation split.

`--resume` (the same command again, plus --resume) continues where the last checkpoint
left off: finished iterations are kept, the interrupted one resumes mid-epoch from both
streams' saved positions (the labelled rows, then the unlabelled rows and its pass number).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from pipelines.core.argtypes import non_negative_float, positive_int
from pipelines.core.errors import first_line
from tagtrain import checkpoint as ckpt
from tagtrain.augment import resolve_chain
from tagtrain.config import ConfigError, RunConfig, build_config
from tagtrain.data import (
    Batch,
    DeviceInput,
    EpochReader,
    LoaderError,
    LoaderStats,
    ShardStream,
    assign_shards,
    check_enough_shards,
    decode_positions,
    plan_input,
    planned_steps,
    split_shards,
    stable_int,
)
from tagtrain.registry import count_parameters, get_entry
from tagtrain.runs import CHECKPOINTS, RUN_ERRORS, RunError, TrainedRun, load_run
from tagtrain.train import Trainer, add_config_flags, add_run_flags, config_overrides

COMMAND = "student"
HELP = "noisy-student training: a teacher run labels the unlabelled split for a student"
STUDENT_FILE = "student.json"


@dataclass(frozen=True)
class StudentConfig:
    teacher: str  # run directory of the teacher
    teacher_checkpoint: str = "best"  # best or last
    unlabeled_split: str = "unlabeled"
    unlabeled_weight: float = 1.0  # w: weight of the pseudo-label loss
    iterations: int = 1  # >1: each student teaches the next

    def validate(self) -> StudentConfig:
        if self.teacher_checkpoint not in CHECKPOINTS:
            raise ConfigError(
                f"teacher checkpoint must be best or last, not {self.teacher_checkpoint!r}"
            )
        if self.unlabeled_weight < 0:
            raise ConfigError(f"unlabeled weight must not be negative, got {self.unlabeled_weight}")
        if self.iterations < 1:
            raise ConfigError(f"iterations must be at least 1, got {self.iterations}")
        return self


# --- the teacher --------------------------------------------------------------------------


@dataclass
class Teacher:
    run: TrainedRun  # model in eval mode, frozen
    device_input: DeviceInput  # PCM crop -> the teacher's normalised input

    @property
    def model(self) -> torch.nn.Module:
        return self.run.model

    @property
    def parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())  # frozen: none trainable


def load_teacher(run_dir, which: str, card: dict, source: str, device) -> Teacher:
    """The frozen teacher of a finished run, fed from the card's PCM with the normalisation
    it trained with. RunError/ConfigError (one line) when it cannot teach on `card`."""
    run = load_run(run_dir, which, str(device))
    if run.vocabulary != list(card["vocabulary"]):
        raise RunError(
            f"the teacher {run_dir} was trained on other tags than the dataset at {source}"
        )
    run.model.requires_grad_(False)
    plan = plan_input(card, run.spec, source=source, from_pcm=True)
    device_input = DeviceInput(plan, run.device)
    device_input.set_stats(run.mean, run.std)
    return Teacher(run, device_input)


# --- paired labelled / unlabelled batches ---------------------------------------------------


@dataclass
class PairedBatch:
    labelled: Batch
    unlabelled: Batch  # x augmented, clean the teacher's view

    @property
    def keys(self) -> list[str]:
        return self.labelled.keys + self.unlabelled.keys


class PairedReader:
    """The labelled epoch reader, each batch paired with the next unlabelled batch.

    The labelled split sets the epoch's length; the unlabelled stream restarts with a fresh
    shuffle and fresh crops when it runs out (pass 1, 2, ...), and an epoch that ends first
    simply leaves the rest of it unread. A checkpoint stores both streams' positions and
    the unlabelled pass (see `encoded_positions`)."""

    def __init__(
        self,
        labelled: EpochReader,
        open_unlabelled: Callable[[int, torch.Tensor | None], EpochReader],
        resume: torch.Tensor | None = None,
    ):
        self.labelled = labelled
        self.stream = labelled.stream
        self._open_unlabelled = open_unlabelled
        self._unlabelled: EpochReader | None = None
        self._finished_stats = LoaderStats()
        self._slots = labelled.stream.cfg.slots
        self._resume = None if resume is None else resume[self._slots : 2 * self._slots]
        self.passes = 0 if resume is None else int(resume[2 * self._slots, 0])

    def _next_pass(self) -> Iterator[Batch]:
        if self._unlabelled is not None:
            self._finished_stats = self._finished_stats.add(self._unlabelled.stats)
            self._unlabelled.close()
        self._unlabelled = self._open_unlabelled(self.passes, self._resume)
        self._resume = None
        return iter(self._unlabelled)

    def __iter__(self) -> Iterator[PairedBatch]:
        unlabelled = self._next_pass()
        for batch in self.labelled:
            other = next(unlabelled, None)
            if other is None:
                self.passes += 1
                unlabelled = self._next_pass()
                other = next(unlabelled, None)
                if other is None:
                    first = self.stats.errors[0] if self.stats.errors else "no samples"
                    raise LoaderError(f"no unlabelled batch could be read: {first}")
            yield PairedBatch(batch, other)

    def commit(self, batch: PairedBatch) -> None:
        self.labelled.commit(batch.labelled)
        self._unlabelled.commit(batch.unlabelled)  # the pass that made it: batches are pairs

    def close(self) -> None:
        self.labelled.close()
        if self._unlabelled is not None:
            self._unlabelled.close()

    @property
    def stats(self) -> LoaderStats:
        total = self.labelled.stats.add(self._finished_stats)
        return total.add(self._unlabelled.stats) if self._unlabelled is not None else total

    def encoded_positions(self) -> torch.Tensor:
        """[2 * workers + 1, width]: the labelled rows, the unlabelled rows, the pass."""
        labelled = self.labelled.encoded_positions()
        unlabelled = self._unlabelled.encoded_positions()
        passes = torch.full_like(labelled[:1], -1)
        passes[0, 0] = self.passes
        return torch.cat([labelled, unlabelled, passes])


# --- the student trainer ------------------------------------------------------------------


@dataclass
class StepInputs:
    x: torch.Tensor  # the student's input: augmented labelled crops, then augmented unlabelled
    labels: torch.Tensor  # [n_labelled, C]
    pseudo_labels: torch.Tensor  # [n_unlabelled, C]: the teacher's probabilities, clean audio


class StudentTrainer(Trainer):
    def __init__(self, cfg: RunConfig, student: StudentConfig, resume: bool = False):
        if resolve_chain(cfg.augment) is None:
            raise ConfigError("a noisy student needs waveform augmentation: --augment default|FILE")
        super().__init__(cfg, resume)
        self.student = student.validate()
        self.teacher = load_teacher(
            student.teacher, student.teacher_checkpoint, self.card, cfg.data, self.device
        )
        teacher_plan = self.teacher.device_input.plan
        if teacher_plan.length != self.plan.length or (
            teacher_plan.features["sample_rate"] != self.plan.features["sample_rate"]
        ):
            raise ConfigError(
                f"teacher {self.teacher.run.model_name} and student {cfg.model} need the same "
                f"crops: {teacher_plan.length} vs {self.plan.length} samples"
            )
        split = student.unlabeled_split
        self.unlabelled_shards = split_shards(self.card, cfg.data, split)
        loader = self.train_loader_cfg
        check_enough_shards(self.unlabelled_shards, loader, split)
        layout = assign_shards(
            self.unlabelled_shards, loader.world, loader.slots, cfg.seed, 0, True
        )
        if planned_steps(layout, loader.batch_size) == 0:
            raise LoaderError(
                f"split {split!r} has too few samples for batches of {loader.batch_size} "
                f"from {loader.slots} loader worker(s) per rank"
            )
        self.mode = (
            "expansion"
            if count_parameters(self.model) >= self.teacher.parameters
            else "distillation"
        )

    # -- what a step trains on

    def pseudo_labels(self, clean: torch.Tensor) -> torch.Tensor:
        """The frozen teacher's probabilities for clean PCM crops."""
        dtype = self.autocast_dtype
        with (
            torch.no_grad(),
            torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None),
        ):
            logits = self.teacher.model(self.teacher.device_input(clean))
        return torch.sigmoid(logits.float())

    def step_inputs(self, batch: PairedBatch) -> StepInputs:
        x = torch.cat([batch.labelled.x, batch.unlabelled.x])
        return StepInputs(
            x=self.device_input(x),
            labels=batch.labelled.y.to(self.device, non_blocking=True),
            pseudo_labels=self.pseudo_labels(batch.unlabelled.clean),
        )

    def _loss(self, batch: PairedBatch) -> torch.Tensor:
        inputs = self.step_inputs(batch)
        dtype = self.autocast_dtype
        with torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None):
            logits = self.net(inputs.x).float()  # one forward: batch norm sees both halves
        n = inputs.labels.shape[0]
        supervised = F.binary_cross_entropy_with_logits(logits[:n], inputs.labels)
        distilled = F.binary_cross_entropy_with_logits(logits[n:], inputs.pseudo_labels)
        return supervised + self.student.unlabeled_weight * distilled

    # -- streams

    def _train_reader(self, epoch: int, resume: torch.Tensor | None) -> PairedReader:
        slots = self.train_loader_cfg.slots
        if resume is not None and resume.shape[0] != 2 * slots + 1:
            raise ConfigError(f"{self.run_dir}/last.pt was not written by a student run")
        labelled = None if resume is None else resume[:slots]
        return PairedReader(
            super()._train_reader(epoch, labelled),
            lambda n, at: self._unlabelled_reader(epoch, n, at),
            resume,
        )

    def _unlabelled_reader(self, epoch: int, n: int, resume: torch.Tensor | None) -> EpochReader:
        # Pass n of the unlabelled split within this epoch: its own shuffle, crops, noise.
        stream_epoch = epoch if n == 0 else stable_int("unlabelled pass", epoch, n) % 2**62
        stream = ShardStream(
            self.unlabelled_shards,
            self.plan,
            self.vocabulary,
            self.train_loader_cfg,
            stream_epoch,
            None if resume is None else decode_positions(resume),
            augment=self.augment,
            keep_clean=True,
        )
        return EpochReader(stream, pin_memory=self.device.type == "cuda")

    # -- the run directory

    def describe(self) -> dict:
        return {
            "teacher": str(self.teacher.run.dir),
            "teacher_checkpoint": str(self.teacher.run.checkpoint),
            "teacher_model": self.teacher.run.model_name,
            "teacher_width": self.teacher.run.config.width,
            "teacher_parameters": self.teacher.parameters,
            "student_model": self.cfg.model,
            "student_width": self.cfg.width,
            "student_parameters": count_parameters(self.model),
            "mode": self.mode,
            "unlabeled_split": self.student.unlabeled_split,
            "unlabeled_samples": sum(s.samples for s in self.unlabelled_shards),
            "unlabeled_weight": self.student.unlabeled_weight,
            "pseudo_labels": "soft, on the fly (teacher on the clean crop)",
        }

    def _print_header(self) -> None:
        super()._print_header()
        d = self.describe()
        print(
            f"noisy student ({d['mode']}): teacher {d['teacher_model']} "
            f"({d['teacher_parameters']:,} parameters) from {d['teacher_checkpoint']}; "
            f"{d['unlabeled_samples']} unlabelled samples in {len(self.unlabelled_shards)} "
            f"shards, weight {d['unlabeled_weight']:g}",
            flush=True,
        )

    def run(self) -> dict:
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            info = {**self.describe(), **dataclasses.asdict(self.student)}
            (self.run_dir / STUDENT_FILE).write_text(json.dumps(info, indent=2) + "\n")
        summary = super().run()
        summary["student"] = self.describe()
        if self.dist.is_main:
            (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        return summary


def iteration_dirs(out: str, iterations: int) -> list[str]:
    """Run directories of the iterations: OUT-iter1 .. OUT-iter{N-1}, then OUT itself."""
    return [f"{out}-iter{i}" for i in range(1, iterations)] + [out]


def finished_summary(run_cfg: RunConfig) -> dict | None:
    """The summary of an iteration that needs no more training, else None."""
    path = run_cfg.run_dir() / "summary.json"
    if not path.is_file():
        return None
    summary = json.loads(path.read_text())
    done = summary["epochs_completed"] >= run_cfg.total_epochs()
    return summary if done or summary["stopped"].startswith("early stopping") else None


def train_students(cfg: RunConfig, student: StudentConfig, resume: bool = False) -> list[dict]:
    """Run every iteration (each student teaches the next); their summaries. With
    `resume`, finished iterations are kept and the interrupted one continues."""
    student.validate()
    dirs = iteration_dirs(str(cfg.run_dir()), student.iterations)
    if resume and not (Path(dirs[0]) / ckpt.LAST).is_file():
        raise ConfigError(f"--resume: no student run to resume at {dirs[0]}")
    summaries, teacher = [], student.teacher
    for i, out in enumerate(dirs):
        run_cfg = dataclasses.replace(cfg, out=out, seed=cfg.seed + i)
        started = resume and (Path(out) / ckpt.LAST).is_file()
        if started:
            was = json.loads((Path(out) / STUDENT_FILE).read_text())["teacher"]
            if was != str(Path(teacher)):
                raise ConfigError(f"{out} was taught by {was}, not {teacher}")
        summary = finished_summary(run_cfg) if started else None
        if summary is None:
            trainer = StudentTrainer(
                run_cfg, dataclasses.replace(student, teacher=teacher), started
            )
            summary = trainer.run()
        else:
            print(f"{out}: finished already, kept", flush=True)
        summaries.append(summary)
        teacher = out
    return summaries


# --- command line ---------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--teacher", required=True, help="run directory of the teacher")
    parser.add_argument(
        "--student-model",
        required=True,
        help="registered model of the student (as large as the teacher: knowledge expansion; "
        "smaller, e.g. music_tagging_transformer_small: distillation)",
    )
    parser.add_argument(
        "--teacher-checkpoint", choices=tuple(CHECKPOINTS), default="best", help="(best)"
    )
    parser.add_argument(
        "--unlabeled-split", default="unlabeled", help="split the teacher labels (unlabeled)"
    )
    parser.add_argument(
        "--unlabeled-weight",
        type=non_negative_float,
        default=1.0,
        help="weight of the pseudo-label loss (1.0)",
    )
    parser.add_argument(
        "--iterations",
        type=positive_int,
        default=1,
        help="student generations; each teaches the next (1)",
    )
    add_config_flags(parser, exclude=("model",))
    add_run_flags(parser, "continue the run in --out (give the same command again)")


def configs_from_args(args: argparse.Namespace) -> tuple[RunConfig, StudentConfig]:
    overrides = {**config_overrides(args), "model": args.student_model}
    # Noise is what makes the student noisy: the recipe unless the config or a flag says.
    cfg = build_config(args.config, overrides, base={"augment": "default"})
    if not cfg.out:
        cfg = dataclasses.replace(cfg, out=f"runs/{cfg.model}-student")
    student = StudentConfig(
        teacher=args.teacher,
        teacher_checkpoint=args.teacher_checkpoint,
        unlabeled_split=args.unlabeled_split,
        unlabeled_weight=args.unlabeled_weight,
        iterations=args.iterations,
    )
    return cfg, student.validate()


def run(args: argparse.Namespace) -> int:
    try:
        cfg, student = configs_from_args(args)
        get_entry(cfg.model)
        train_students(cfg, student, resume=args.resume)
    except KeyError as exc:  # unknown model
        print(f"error: {exc.args[0] if exc.args else exc}", file=sys.stderr)
        return 2
    except RUN_ERRORS as exc:  # includes ConfigError, CardError, LoaderError, checkpoints
        print(f"error: {first_line(exc)}", file=sys.stderr)
        return 2
    return 0
