"""Noisy-student training (`python -m tagtrain student`) (Xie et al. 2020; Won et al. 2021).

A frozen teacher (a finished run) labels the unlabelled split on the fly; a student learns
from half-labelled, half-unlabelled steps:

    loss = BCE(student(aug(x_l)), y_l) + w * BCE(student(aug(x_u)), sigmoid(teacher(x_u)))

Each step draws `batch_size` labelled and `batch_size` unlabelled crops. The student sees
every crop through the training augmentation chain (tagtrain.training.augment_chain) and with its
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

import dataclasses
import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import ClassVar

import torch
import torch.nn.functional as F

from pipelines.core.flags import setting
from tagtrain.inference.predict import batch_probabilities
from tagtrain.inference.trained_run import CHECKPOINTS, RunError, TrainedRun, load_run
from tagtrain.loader import (
    Batch,
    DeviceInput,
    EpochReader,
    LoaderError,
    LoaderStats,
    check_enough_shards,
    plan_input,
    split_shards,
    stable_int,
)
from tagtrain.models.registry import count_parameters
from tagtrain.run.config import ConfigError, ObjectiveSettings, RunConfig
from tagtrain.run.directory import RunDir
from tagtrain.training.context import TrainingContext
from tagtrain.training.data import check_batches
from tagtrain.training.loop import Trainer
from tagtrain.training.objectives import Supervised

STUDENT_FILE = RunDir.STUDENT


@dataclass(frozen=True)
class StudentConfig(ObjectiveSettings):
    teacher: str = setting("", "run directory of the teacher (required)")
    teacher_checkpoint: str = setting("best", "teacher checkpoint", choices=tuple(CHECKPOINTS))
    unlabeled_split: str = setting("unlabeled", "split the teacher labels")
    unlabeled_weight: float = setting(1.0, "weight w of the pseudo-label loss")
    iterations: int = setting(1, "student generations; each teaches the next")

    # The run config (tagtrain.run.config.build_run_config): noise is what makes the student
    # noisy (augmentation on unless the recipe, the config or a flag says otherwise), and
    # --resume is the same command again (no saved config.json: each iteration has its own).
    base_settings: ClassVar[Mapping] = MappingProxyType({"augment": "default"})
    reads_saved_config: ClassVar[bool] = False

    def fixed_settings(self, cfg: RunConfig, resume: bool) -> dict:
        return {} if cfg.out else {"out": f"runs/{cfg.model}-student"}

    def validate(self) -> StudentConfig:
        if not self.teacher:
            raise ConfigError("no teacher: give --teacher RUN_DIR")
        if self.teacher_checkpoint not in CHECKPOINTS:
            raise ConfigError(
                f"teacher checkpoint must be best or last, not {self.teacher_checkpoint!r}"
            )
        if self.unlabeled_weight < 0:
            raise ConfigError(f"unlabeled weight must not be negative, got {self.unlabeled_weight}")
        if self.iterations < 1:
            raise ConfigError(f"--iterations: {self.iterations} must be at least 1")
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


def load_teacher(
    run_dir, which: str, card: dict, source: str, device, storage_options=None
) -> Teacher:
    """The frozen teacher of a finished run, fed from the card's PCM with the normalisation
    it trained with. RunError/ConfigError (one line) when it cannot teach on `card`."""
    run = load_run(run_dir, which, str(device), storage_options)
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


# --- the objective -------------------------------------------------------------------------


@dataclass
class StepInputs:
    x: torch.Tensor  # the student's input: augmented labelled crops, then augmented unlabelled
    labels: torch.Tensor  # [n_labelled, C]
    pseudo_labels: torch.Tensor  # [n_unlabelled, C]: the teacher's probabilities, clean audio


class StudentObjective(Supervised):
    """Batches: labelled and unlabelled crops in pairs; loss: BCE on the labels plus w x
    BCE on the frozen teacher's probabilities for the clean twins of the unlabelled crops."""

    name = "noisy_student"
    settings_file = RunDir.STUDENT
    elastic_resume = False  # the positions hold two streams and the unlabelled pass

    def __init__(self, student: StudentConfig):
        self.student = student.validate()
        teacher = RunDir(student.teacher)
        if not teacher.remote and not teacher.path.is_dir():  # before the data: cheaper
            raise RunError(f"no run directory at {student.teacher} (the --teacher)")
        self.teacher: Teacher | None = None

    def augment_chain(self, cfg: RunConfig):
        chain = super().augment_chain(cfg)
        if chain is None:
            raise ConfigError("a noisy student needs waveform augmentation: --augment default|FILE")
        return chain

    def setup(self, ctx: TrainingContext) -> None:
        cfg, data = ctx.cfg, ctx.data
        student = self.student
        self.teacher = load_teacher(
            student.teacher, student.teacher_checkpoint, data.card, data.source, ctx.rt.device,
            cfg.effective_storage_options(),
        )  # fmt: skip
        teacher_plan = self.teacher.device_input.plan
        if teacher_plan.length != data.plan.length or (
            teacher_plan.features["sample_rate"] != data.plan.features["sample_rate"]
        ):
            raise ConfigError(
                f"teacher {self.teacher.run.model_name} and student {cfg.model} need the same "
                f"crops: {teacher_plan.length} vs {data.plan.length} samples"
            )
        split = student.unlabeled_split
        self.unlabelled_shards = split_shards(data.card, data.source, split)
        check_enough_shards(self.unlabelled_shards, data.train_loader, split)
        check_batches(self.unlabelled_shards, data.train_loader, split)
        self.mode = (
            "expansion"
            if count_parameters(ctx.model) >= self.teacher.parameters
            else "distillation"
        )
        self.info = self._describe(ctx)
        if ctx.files.has_run():  # resuming: a fresh start on a run was refused
            self._check_same_teacher(ctx.files.read(RunDir.STUDENT))
        info = {**self.info, **dataclasses.asdict(student)}
        ctx.files.write(RunDir.STUDENT, json.dumps(info, indent=2) + "\n")

    # -- what a step trains on

    def pseudo_labels(self, ctx: TrainingContext, clean: torch.Tensor) -> torch.Tensor:
        """The frozen teacher's probabilities for clean PCM crops (the one teacher forward of
        the inference path, under the run's autocast)."""
        x = self.teacher.device_input(clean)
        return batch_probabilities(self.teacher.model, x, ctx.rt.autocast_dtype)

    def step_inputs(self, ctx: TrainingContext, batch: PairedBatch) -> StepInputs:
        x = torch.cat([batch.labelled.x, batch.unlabelled.x])
        return StepInputs(
            x=ctx.data.device_input(x),
            labels=batch.labelled.y.to(ctx.rt.device, non_blocking=True),
            pseudo_labels=self.pseudo_labels(ctx, batch.unlabelled.clean),
        )

    def loss(self, ctx: TrainingContext, batch: PairedBatch) -> torch.Tensor:
        inputs = self.step_inputs(ctx, batch)
        with ctx.rt.autocast():
            logits = ctx.net(inputs.x).float()  # one forward: batch norm sees both halves
        n = inputs.labels.shape[0]
        supervised = F.binary_cross_entropy_with_logits(logits[:n], inputs.labels)
        distilled = F.binary_cross_entropy_with_logits(logits[n:], inputs.pseudo_labels)
        return supervised + self.student.unlabeled_weight * distilled

    # -- streams

    def reader(self, ctx: TrainingContext, epoch: int, resume: torch.Tensor | None) -> PairedReader:
        slots = ctx.data.train_loader.slots
        if resume is not None and resume.shape[0] != 2 * slots + 1:
            raise ConfigError(f"{ctx.files}/last.pt was not written by a student run")
        labelled = None if resume is None else resume[:slots]
        return PairedReader(
            super().reader(ctx, epoch, labelled),
            lambda n, at: self._unlabelled_reader(ctx, epoch, n, at),
            resume,
        )

    def _unlabelled_reader(self, ctx: TrainingContext, epoch: int, n: int, resume) -> EpochReader:
        # Pass n of the unlabelled split within this epoch: its own shuffle, crops, noise.
        stream_epoch = epoch if n == 0 else stable_int("unlabelled pass", epoch, n) % 2**62
        return ctx.data.reader(self.unlabelled_shards, stream_epoch, resume, keep_clean=True)

    # -- the run directory

    def _check_same_teacher(self, saved: str) -> None:
        """A student resumes only from the teacher bytes it started with (`saved`: its
        student.json): a teacher trained on in place since would give other pseudo-labels
        from the resumed step on."""
        recorded = json.loads(saved).get("teacher_checkpoint_sha256")
        current = self.info["teacher_checkpoint_sha256"]
        if recorded and current and recorded != current:
            raise ConfigError(
                f"the teacher's checkpoint {self.info['teacher_checkpoint']} has changed since "
                f"this student started (sha256 {recorded[:12]}..., now {current[:12]}...): "
                "start a new student instead of --resume"
            )

    def _describe(self, ctx: TrainingContext) -> dict:
        teacher = self.teacher
        return {
            "teacher": teacher.run.location,
            "teacher_checkpoint": teacher.run.checkpoint_location,
            "teacher_checkpoint_sha256": teacher.run.checkpoint_sha256,
            "teacher_model": teacher.run.model_name,
            "teacher_width": teacher.run.config.width,
            "teacher_parameters": teacher.parameters,
            "student_model": ctx.cfg.model,
            "student_width": ctx.cfg.width,
            "student_parameters": count_parameters(ctx.model),
            "mode": self.mode,
            "unlabeled_split": self.student.unlabeled_split,
            "unlabeled_samples": sum(s.samples for s in self.unlabelled_shards),
            "unlabeled_weight": self.student.unlabeled_weight,
            "pseudo_labels": "soft, on the fly (teacher on the clean crop)",
        }

    def settings(self) -> dict:
        return dataclasses.asdict(self.student)

    def describe(self, ctx: TrainingContext) -> list[str]:
        d = self.info
        return [
            f"noisy student ({d['mode']}): teacher {d['teacher_model']} "
            f"({d['teacher_parameters']:,} parameters) from {d['teacher_checkpoint']}; "
            f"{d['unlabeled_samples']} unlabelled samples in {len(self.unlabelled_shards)} "
            f"shards, weight {d['unlabeled_weight']:g}"
        ]

    def summary(self, ctx: TrainingContext) -> dict:
        return {"student": self.info}


def StudentTrainer(
    cfg: RunConfig, student: StudentConfig, resume: bool = False, init_weights=None
) -> Trainer:
    """The loop with the noisy-student objective."""
    return Trainer(cfg, StudentObjective(student), resume, init_weights)


def iteration_dirs(out: str, iterations: int) -> list[str]:
    """Run directories of the iterations: OUT-iter1 .. OUT-iter{N-1}, then OUT itself."""
    return [f"{out}-iter{i}" for i in range(1, iterations)] + [out]


def finished_summary(run_cfg: RunConfig) -> dict | None:
    """The summary of an iteration that needs no more training, else None."""
    run_dir = RunDir(run_cfg.run_dir(), run_cfg.effective_storage_options())
    if not run_dir.exists(RunDir.SUMMARY):
        return None
    summary = json.loads(run_dir.read_text(RunDir.SUMMARY))
    done = summary["epochs_completed"] >= run_cfg.total_epochs()
    return summary if done or summary["stopped"].startswith("early stopping") else None


def train_students(
    cfg: RunConfig, student: StudentConfig, resume: bool = False, init_weights=None
) -> list[dict]:
    """Run every iteration (each student teaches the next); their summaries. With
    `resume`, finished iterations are kept and the interrupted one continues."""
    student.validate()
    dirs = iteration_dirs(str(cfg.run_dir()), student.iterations)
    options = cfg.effective_storage_options()
    if resume and not RunDir(dirs[0], options).has_run():
        raise ConfigError(f"--resume: no student run to resume at {dirs[0]}")
    summaries, teacher = [], student.teacher
    for i, out in enumerate(dirs):
        run_cfg = dataclasses.replace(cfg, out=out, seed=cfg.seed + i)
        started = resume and RunDir(out, options).has_run()
        if started:
            was = json.loads(RunDir(out, options).read_text(STUDENT_FILE))["teacher"]
            if was != str(RunDir(teacher)):
                raise ConfigError(f"{out} was taught by {was}, not {teacher}")
        summary = finished_summary(run_cfg) if started else None
        if summary is None:
            trainer = StudentTrainer(
                run_cfg, dataclasses.replace(student, teacher=teacher), started, init_weights
            )
            summary = trainer.fit()
        else:
            print(f"{out}: finished already, kept", flush=True)
        summaries.append(summary)
        teacher = out
    return summaries
