"""`RunDir`: the name of every file of a run directory, in one place.

config.json        the whole RunConfig (tagtrain.config)
last.pt            the latest checkpoint (tagtrain.checkpoint); last.prev.pt the one before
best.pt            the weights selected on the validation split
metrics.csv, tb/   one row per epoch; TensorBoard events
curves.png         loss and AUC curves
summary.json       how the run ended
samples-rankR.tsv  the keys of every training step (--log-samples)
student.json, patchout.json   the recipe's settings (noisy student, patchout)
metrics[-X].json, per_tag[-X].csv, predictions[-X].parquet   evaluations
robustness/        robustness tables and figure
imported.json      where imported weights came from (import-weights: source, path, sha256)
"""

from __future__ import annotations

from pathlib import Path

from pipelines.core.errors import UserError


class RunDirError(UserError, ValueError):
    """A run directory that cannot be used; the message is one line."""


class RunDir:
    CONFIG = "config.json"
    LAST = "last.pt"
    LAST_PREVIOUS = "last.prev.pt"
    BEST = "best.pt"
    METRICS = "metrics.csv"
    TENSORBOARD = "tb"
    CURVES = "curves.png"
    SUMMARY = "summary.json"
    STUDENT = "student.json"
    PATCHOUT = "patchout.json"
    ROBUSTNESS = "robustness"
    IMPORTED = "imported.json"
    CHECKPOINTS = {"best": BEST, "last": LAST}

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def __str__(self) -> str:
        return str(self.path)

    @property
    def name(self) -> str:
        return self.path.name

    def checkpoint(self, which: str) -> Path:
        return self.path / self.CHECKPOINTS[which]

    def samples(self, rank: int) -> Path:
        return self.path / f"samples-rank{rank}.tsv"

    def evaluation(self, suffix: str) -> tuple[Path, Path, Path]:
        """(metrics JSON, per-tag CSV, per-track predictions Parquet) of one evaluation."""
        return (
            self.path / f"metrics{suffix}.json",
            self.path / f"per_tag{suffix}.csv",
            self.path / f"predictions{suffix}.parquet",
        )

    def has_run(self) -> bool:
        return (self.path / self.LAST).exists() or (self.path / self.LAST_PREVIOUS).exists()

    def create(self) -> None:
        """Make the directory; a path that is a file is a one-line error."""
        if self.path.exists() and not self.path.is_dir():
            raise RunDirError(f"--out {self.path} is a file, not a run directory")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RunDirError(f"cannot create run directory {self.path}: {exc.strerror}") from None
