"""Noisy-student training on the demo corpus with half of its train split unlabelled: the
prepare job's unlabeled split, a teacher trained with augmentation, the student's step
(teacher on clean audio, student on augmented audio, targets = teacher outputs), and
short knowledge-expansion / distillation runs that the evaluate command reads."""

from __future__ import annotations

import json
import math
import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from manifests.schema import read_manifest, write_manifest
from pipelines.core.features import FeatureConfig, log_mel
from pipelines.core.shards import load_npy, read_tar
from tagtrain.__main__ import main
from tagtrain.commands.train import KILL_AT_STEP_ENV
from tagtrain.loader import load_card
from tagtrain.models.registry import create_model
from tagtrain.run import checkpoint as ckpt
from tagtrain.run.config import RunConfig
from tagtrain.training.augment_chain import resolve_chain
from tagtrain.training.student import StudentConfig, StudentTrainer, train_students
from tests.conftest import run_cli

TEACHER = "music_tagging_transformer"
ERROR = "python -m tagtrain: error: "
TINY = {
    "width": 0.125,
    "epochs": 1,
    "max_steps_per_epoch": 2,
    "batch_size": 2,
    "workers": 1,
    "val_chunks": 1,
    "progress": False,
}
TINY_FLAGS = [
    "--width", "0.125", "--epochs", "1", "--max-steps-per-epoch", "2", "--batch-size", "2",
    "--workers", "1", "--val-chunks", "1", "--no-progress",
]  # fmt: skip


@pytest.fixture(scope="module")
def half_unlabelled(demo_corpus, tmp_path_factory) -> tuple[str, set[str]]:
    """The demo corpus with every other train clip of each style moved, tags cleared, to
    the unlabeled split, prepared by the real job with the transformer's features."""
    table = read_manifest(demo_corpus / "manifest.parquet")
    rows = table.to_pylist()
    by_style = defaultdict(list)
    for row in rows:
        if row["split"] == "train":
            by_style[json.loads(row["extra"])["style"]].append(row)
    moved = set()
    for group in by_style.values():
        for row in group[1::2]:
            row.update(split="unlabeled", tags=[])
            moved.add(row["key"])
    out = tmp_path_factory.mktemp("half_unlabelled")
    metadata = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
    write_manifest(rows, out / "manifest.parquet", metadata=metadata)
    result = run_cli(
        "beam_runner.py", "prepare", "--manifest", str(out / "manifest.parquet"),
        "--audio-root", str(demo_corpus), "--output", str(out / "data"),
        "--features", "mel,pcm", "--sample-rate", "22050", "--n-fft", "1024", "--hop", "512",
        "--f-max", "11025", "--shard-size-mb", "8", "--direct_num_workers=2",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return str(out / "data"), moved


@pytest.fixture(scope="module")
def teacher(half_unlabelled, tmp_path_factory) -> Path:
    """A tiny teacher trained with the augmentation chain on the labelled half."""
    data, _ = half_unlabelled
    out = tmp_path_factory.mktemp("teacher") / "run"
    result = run_cli(
        "tagtrain", "train", "--data", data, "--model", TEACHER, "--augment", "default",
        "--out", str(out), *TINY_FLAGS,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def test_prepare_writes_the_unlabelled_clips_as_their_own_split(half_unlabelled):
    data, moved = half_unlabelled
    card = load_card(data)
    shards = card["splits"]["unlabeled"]["shards"]
    assert (
        card["splits"]["unlabeled"]["samples"] == len(moved) == card["splits"]["train"]["samples"]
    )
    assert all(s["name"].startswith("unlabeled-") for s in shards)
    seen = set()
    for shard in shards:
        for key, members in read_tar((Path(data) / shard["name"]).read_bytes()).items():
            meta = json.loads(members["json"])
            assert meta["split"] == "unlabeled" and meta["tags"] == [] and meta["labels"] == []
            assert load_npy(members["pcm.npy"]).dtype == np.int16
            seen.add(key)
    assert seen == moved


def test_the_teacher_trains_with_the_whole_chain_recorded(teacher):
    config = json.loads((teacher / "config.json").read_text())
    assert config["augment"] == resolve_chain("default")
    assert (teacher / "best.pt").is_file() and (teacher / "metrics.csv").is_file()


def reference_teacher(run_dir: Path, clean: torch.Tensor) -> torch.Tensor:
    """The teacher's probabilities for clean int16 crops, rebuilt from its checkpoint alone."""
    state = ckpt.load_checkpoint(run_dir / "best.pt")
    model = create_model(
        state["model_name"], len(state["vocabulary"]), seed=None, width=state["width"]
    )
    model.load_state_dict(state["model"])
    model.eval()
    features = FeatureConfig.from_dict(state["input_plan"]["features"])
    mel = log_mel(clean.float() / 32767.0, features)
    # The model's input standardisation, as its paper does (InputSpec.standardize).
    standardize = state["input_plan"].get("standardize", "band")
    if standardize == "band":
        norm = state["normalisation"]
        mean = torch.tensor(norm["mean"])[:, None]
        std = torch.tensor(norm["std"]).clamp_min(1e-5)[:, None]
        mel = (mel - mean) / std
    elif standardize == "global":
        mean, std = state["input_plan"]["global_stats"]
        mel = (mel - mean) / std
    with torch.no_grad():
        return torch.sigmoid(model(mel))


def stored_pcm(data: str, key: str) -> np.ndarray:
    card = load_card(data)
    for shard in card["splits"]["unlabeled"]["shards"]:
        members = read_tar((Path(data) / shard["name"]).read_bytes())
        if key in members:
            return load_npy(members[key]["pcm.npy"])
    raise KeyError(key)


def test_student_targets_are_the_teachers_outputs_on_the_clean_twin(
    half_unlabelled, teacher, tmp_path
):
    data, moved = half_unlabelled
    cfg = RunConfig(
        data=data, model=TEACHER, out=str(tmp_path / "student"), augment="default",
        **{**TINY, "workers": 0, "batch_size": 3},
    )  # fmt: skip
    trainer = StudentTrainer(cfg, StudentConfig(teacher=str(teacher), unlabeled_weight=0.5))
    objective = trainer.objective
    reader = objective.reader(trainer.ctx, 0, None)
    batch = next(iter(reader))
    reader.close()
    unlabelled = batch.unlabelled
    assert set(unlabelled.keys) <= moved and not set(batch.labelled.keys) & moved
    assert len(batch.labelled.keys) == len(unlabelled.keys) == 3  # half and half

    # The teacher's view: the clean crop, a verbatim slice of the stored PCM.
    for key, clean in zip(unlabelled.keys, unlabelled.clean.numpy()):
        pcm = stored_pcm(data, key)
        starts = np.flatnonzero(pcm[: len(pcm) - len(clean) + 1] == clean[0])
        assert any(np.array_equal(pcm[s : s + len(clean)], clean) for s in starts)
    # The student's view: the same crops augmented.
    assert unlabelled.x.dtype == torch.float32 and unlabelled.clean.dtype == torch.int16
    for x, clean in zip(unlabelled.x, unlabelled.clean):
        assert not torch.allclose(x, clean.float(), atol=1.0)

    inputs = objective.step_inputs(trainer.ctx, batch)
    expected = reference_teacher(teacher, unlabelled.clean)
    assert torch.allclose(inputs.pseudo_labels, expected, atol=1e-5)
    assert torch.equal(inputs.labels, batch.labelled.y)

    # What the two networks are actually fed in a training step, and the loss they give.
    seen = {}
    objective.teacher.model.register_forward_pre_hook(
        lambda m, a: seen.__setitem__("teacher", a[0])
    )
    trainer.model.register_forward_pre_hook(lambda m, a: seen.__setitem__("student", a[0]))
    trainer.model.register_forward_hook(lambda m, a, out: seen.__setitem__("logits", out))
    loss = objective.loss(trainer.ctx, batch)
    clean_input = objective.teacher.device_input(unlabelled.clean)
    assert torch.allclose(seen["teacher"], clean_input)
    device_input = trainer.data.device_input
    augmented = device_input(torch.cat([batch.labelled.x, unlabelled.x]))
    assert torch.allclose(seen["student"], augmented)
    assert not torch.allclose(seen["student"][3:], device_input(unlabelled.clean), atol=0.1)
    logits = seen["logits"].detach().float()
    by_hand = F.binary_cross_entropy_with_logits(
        logits[:3], batch.labelled.y
    ) + 0.5 * F.binary_cross_entropy_with_logits(logits[3:], expected)
    assert torch.isclose(loss.detach(), by_hand, atol=1e-5)


def evaluate(run_dir: Path) -> dict:
    assert main(["evaluate", "--run", str(run_dir), "--chunks", "1", "--workers", "0"]) == 0
    return json.loads((run_dir / "metrics.json").read_text())


def assert_evaluable_student(run_dir: Path, teacher_dir: Path, mode: str) -> None:
    for name in ("config.json", "metrics.csv", "best.pt", "last.pt", "summary.json"):
        assert (run_dir / name).is_file(), name
    info = json.loads((run_dir / "student.json").read_text())
    assert info["teacher"] == str(teacher_dir) and info["mode"] == mode
    assert info["unlabeled_split"] == "unlabeled" and info["unlabeled_samples"] > 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["global_step"] == 2 and summary["student"]["mode"] == mode
    metrics = evaluate(run_dir)
    assert math.isfinite(metrics["roc_auc"]) and math.isfinite(metrics["pr_auc"])


@pytest.mark.slow
def test_a_knowledge_expansion_student_from_the_command_line(half_unlabelled, teacher, tmp_path):
    data, _ = half_unlabelled
    out = tmp_path / "ke"
    result = run_cli(
        "tagtrain", "student", "--teacher", str(teacher), "--data", data,
        "--student-model", TEACHER, "--out", str(out), *TINY_FLAGS,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "noisy student (expansion)" in result.stdout
    assert_evaluable_student(out, teacher, "expansion")
    info = json.loads((out / "student.json").read_text())
    assert info["student_parameters"] == info["teacher_parameters"]


@pytest.mark.slow
def test_a_distilled_compact_student_iterated_twice(half_unlabelled, teacher, tmp_path):
    data, _ = half_unlabelled
    out = tmp_path / "kd"
    cfg = RunConfig(
        data=data, model="music_tagging_transformer_small", out=str(out), augment="default",
        **{**TINY, "width": 0.25},
    )  # fmt: skip
    summaries = train_students(cfg, StudentConfig(teacher=str(teacher), iterations=2))
    first = Path(f"{out}-iter1")
    assert [s["run_dir"] for s in summaries] == [str(first), str(out)]
    assert_evaluable_student(first, teacher, "distillation")
    assert_evaluable_student(out, first, "expansion")  # same size as its teacher now
    info = json.loads((first / "student.json").read_text())
    assert info["student_parameters"] < info["teacher_parameters"]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--unlabeled-split", "extra"], "the dataset has no split 'extra'"),
        (["--augment", "none"], "a noisy student needs waveform augmentation"),
        (["--teacher-checkpoint", "last", "--student-model", "fcn"], "needs pcm at 16000 Hz"),
    ],
)
def test_student_misuse_is_one_line(half_unlabelled, teacher, tmp_path, capsys, flags, message):
    data, _ = half_unlabelled
    args = ["student", "--teacher", str(teacher), "--data", data, "--student-model", TEACHER]
    args += ["--out", str(tmp_path / "s"), *TINY_FLAGS, *flags]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(ERROR) and message in err and len(err.splitlines()) == 1


def test_a_missing_teacher_or_bad_iterations_is_one_line(half_unlabelled, tmp_path, capsys):
    data, _ = half_unlabelled
    args = ["student", "--data", data, "--student-model", TEACHER, "--out", str(tmp_path / "s")]
    assert main([*args, "--teacher", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(ERROR) and "nowhere" in err and len(err.splitlines()) == 1
    assert main([*args, "--teacher", str(tmp_path), "--iterations", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--iterations: 0 must be at least 1" in err and len(err.splitlines()) == 1


@pytest.mark.slow
def test_a_killed_student_resumes_to_the_weights_of_an_uninterrupted_run(
    half_unlabelled, teacher, tmp_path
):
    data, _ = half_unlabelled
    own = tmp_path / "teacher"  # this test's copy: its checkpoint is changed below
    shutil.copytree(teacher, own)
    teacher = own
    # The valid split (14 clips, 7 batches) stands in for the unlabelled one: shorter than
    # the labelled epoch (10 steps), so the unlabelled stream starts its second pass at
    # step 8, where the checkpoint before the kill is taken.
    args = [
        "tagtrain", "student", "--teacher", str(teacher), "--data", data,
        "--student-model", TEACHER, "--unlabeled-split", "valid", "--width", "0.125",
        "--epochs", "1", "--batch-size", "2", "--workers", "1", "--val-chunks", "1",
        "--no-progress", "--log-samples",
    ]  # fmt: skip
    run, whole = tmp_path / "run", tmp_path / "whole"
    killed = run_cli(
        *args, "--out", str(run), "--checkpoint-every", "4", env={KILL_AT_STEP_ENV: "9"}
    )
    assert killed.returncode == -9, killed.stderr[-3000:]
    state = ckpt.load_checkpoint(run / ckpt.LAST)
    assert state["progress"]["global_step"] == 8
    assert state["loader"]["positions"][0, -1, 0] == 1  # the unlabelled stream's second pass
    # The teacher trained on in place meanwhile: its pseudo-labels would change mid-run.
    best = (teacher / ckpt.BEST).read_bytes()
    changed = ckpt.load_checkpoint(teacher / ckpt.BEST)
    first = next(iter(changed["model"]))
    changed["model"][first] = changed["model"][first] + 1
    ckpt.save_checkpoint(teacher / ckpt.BEST, changed)
    refused = run_cli(*args, "--out", str(run), "--resume")
    assert refused.returncode == 2 and "the teacher's checkpoint" in refused.stderr, refused.stderr
    assert "has changed since this student started" in refused.stderr
    (teacher / ckpt.BEST).write_bytes(best)
    resumed = run_cli(*args, "--out", str(run), "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert run_cli(*args, "--out", str(whole)).returncode == 0

    def steps(run_dir):
        lines = (run_dir / "samples-rank0.tsv").read_text().splitlines()
        return [line.split("\t") for line in lines]

    logged = steps(run)
    assert [int(s) for _, s, _ in logged] == [*range(1, 10), *range(9, 11)]
    assert logged[:8] + logged[9:] == steps(whole)  # the same pairs of batches, none replayed
    weights = ckpt.load_checkpoint(run / ckpt.LAST)["model"]
    for name, tensor in ckpt.load_checkpoint(whole / ckpt.LAST)["model"].items():
        assert torch.equal(weights[name], tensor), name
    # Resuming a finished run keeps it; resuming nothing, or with another teacher, is refused.
    again = run_cli(*args, "--out", str(run), "--resume")
    assert again.returncode == 0 and "finished already, kept" in again.stdout
    other = [str(whole) if a == str(teacher) else a for a in args]
    refused = run_cli(*other, "--out", str(run), "--resume")
    assert refused.returncode == 2 and f"was taught by {teacher}" in refused.stderr
    nothing = run_cli(*args, "--out", str(tmp_path / "none"), "--resume")
    assert nothing.returncode == 2 and "no student run to resume" in nothing.stderr
