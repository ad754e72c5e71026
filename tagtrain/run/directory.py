"""`RunDir`: the name of every file of a run directory, in one place, and where it lives.

config.json        the whole RunConfig (tagtrain.run.config)
last.pt            the latest checkpoint (tagtrain.run.checkpoint); last.prev.pt the one before
best.pt            the weights selected on the validation split
metrics.csv, tb/   one row per epoch; TensorBoard events
curves.png         loss and AUC curves
summary.json       how the run ended
samples-rankR.tsv  the keys of every training step (--log-samples)
student.json, patchout.json   the recipe's settings (noisy student, patchout)
metrics[-X].json, per_tag[-X].csv, predictions[-X].parquet   evaluations
robustness/        robustness tables and figure
imported.json      where imported weights came from (import-weights: source, path, sha256)
.lock              held by the process training in a local run directory (`lock`)

A run directory is a local path or an object-store prefix (s3://bucket/run, gs://...). A
remote run is written to a local staging directory (`path`, a temporary directory) and
each file is uploaded whole when it is written (`publish`): one PUT of the complete bytes
(or a multipart upload, completed at once), so an object never shows partial contents
under its final name. `last.pt` keeps its predecessor as `last.prev.pt` by a server-side
copy made before the new one is uploaded. A resumed or loaded remote run first downloads
the files it needs (`pull`). Appended files (metrics.csv, the samples logs, TensorBoard
events) are uploaded again whole after each append batch (epoch or checkpoint).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import weakref
from collections.abc import Mapping
from pathlib import Path

from pipelines.core.errors import UserError, first_line
from pipelines.core.locks import Held, hold
from tagtrain.loader.openers import (
    LOCAL_SCHEMES,
    check_supported,
    filesystem,
    local_path,
    scheme_of,
)

WRITABLE_SCHEMES = ("s3", "gs", "gcs")
_UPLOAD_ATTEMPTS = 4  # an upload that fails transiently is retried, then fails the job


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
    LOCK = ".lock"
    CHECKPOINTS = {"best": BEST, "last": LAST}

    def __init__(self, location: str | Path, storage_options: Mapping | None = None):
        location = str(location)
        self.remote = check_supported(location) not in LOCAL_SCHEMES
        self.location = location.rstrip("/") if self.remote else location
        self.options = dict(storage_options or {})
        self._path = None if self.remote else Path(local_path(location))

    @property
    def path(self) -> Path:
        """The local directory: the run itself, or a remote run's staging copy."""
        if self._path is None:
            self._path = Path(tempfile.mkdtemp(prefix="tagkit-run-"))
            # Removed at exit by the process that made it (not by forked loader workers).
            weakref.finalize(self, _remove_staging, self._path, os.getpid())
        return self._path

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def __str__(self) -> str:
        return self.location if self.remote else str(self._path)

    @property
    def name(self) -> str:
        return self.location.rstrip("/").rsplit("/", 1)[-1] if self.remote else self.path.name

    def url(self, name: str) -> str:
        """Where file `name` lives: its local path, or its object URL."""
        return f"{self.location}/{name}" if self.remote else str(self.path / name)

    def checkpoint(self, which: str) -> Path:
        return self.path / self.CHECKPOINTS[which]

    @staticmethod
    def samples_name(rank: int) -> str:
        return f"samples-rank{rank}.tsv"

    def samples(self, rank: int) -> Path:
        return self.path / self.samples_name(rank)

    def evaluation(self, suffix: str) -> tuple[Path, Path, Path]:
        """(metrics JSON, per-tag CSV, per-track predictions Parquet) of one evaluation."""
        return (
            self.path / f"metrics{suffix}.json",
            self.path / f"per_tag{suffix}.csv",
            self.path / f"predictions{suffix}.parquet",
        )

    # -- what exists

    def exists(self, name: str) -> bool:
        if not self.remote:
            return (self.path / name).exists()
        url = self.url(name)

        def look(fs) -> bool:
            fs.invalidate_cache(url)  # another process (a killed run, evaluate) may have written
            return fs.exists(url)

        return self._remote(look, f"look for {name}")

    def is_run_directory(self) -> bool:
        """Whether anything says a run lives here (a local directory, or any run file)."""
        if not self.remote:
            return self.path.is_dir()
        return any(self.exists(n) for n in (self.CONFIG, self.LAST, self.BEST))

    def has_run(self) -> bool:
        return self.exists(self.LAST) or self.exists(self.LAST_PREVIOUS)

    def read_text(self, name: str) -> str:
        if not self.remote:
            return (self.path / name).read_text()
        data = self._remote(lambda fs: fs.cat_file(self.url(name)), f"read {name}")
        return data.decode()

    def create(self) -> None:
        """Make the directory (locally: a path that is a file is a one-line error; remote:
        the bucket must exist, and the scheme must be writable)."""
        if self.remote:
            scheme = scheme_of(self.location)
            if scheme not in WRITABLE_SCHEMES:
                raise RunDirError(
                    f"--out {self.location}: {scheme}:// is read-only; use s3:// or gs://"
                )
            bucket = self.location.split("://", 1)[1].split("/", 1)[0]
            if not self._remote(lambda fs: fs.exists(bucket), f"check bucket {bucket}"):
                raise RunDirError(f"--out {self.location}: no bucket {bucket!r}")
            self.path.mkdir(parents=True, exist_ok=True)
            return
        if self.path.exists() and not self.path.is_dir():
            raise RunDirError(f"--out {self.path} is a file, not a run directory")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RunDirError(f"cannot create run directory {self.path}: {exc.strerror}") from None

    def lock(self):
        """Make the directory (`create`) and hold it for this process until `unlock`
        (or its exit): a second trainer started on it gets one line, instead of
        interleaving its checkpoints with this one's. Returns the open lock file; None for
        a remote run (an object store has no locks)."""
        self.create()
        if self.remote:
            return None
        try:
            return hold(str(self.path / self.LOCK), "train")
        except Held as other:
            raise RunDirError(
                f"{self.path} is in use by another training process{other.describe()}: "
                "wait for it to end or choose another --out"
            ) from None

    @staticmethod
    def unlock(handle) -> None:
        if handle is not None:
            handle.close()  # closing the file releases its lock

    # -- remote copies

    def write_text(self, name: str, text: str) -> Path:
        """Write file `name` (and upload it when the run is remote)."""
        path = self.path / name
        path.write_text(text)
        self.publish(name)
        return path

    def publish(self, name: str, keep_previous: bool = False) -> None:
        """Upload the staged file or folder `name` whole (remote runs; locally nothing).
        With `keep_previous` the object it replaces is first copied to NAME.prev.pt on the
        server, so a kill between the two leaves both a usable last and previous."""
        if not self.remote:
            return
        local = self.path / name
        if local.is_dir():
            for file in sorted(p for p in local.rglob("*") if p.is_file()):
                self.publish(file.relative_to(self.path).as_posix())
            return
        target = self.url(name)
        if keep_previous and self.exists(name):
            previous = self.url(name.removesuffix(".pt") + ".prev.pt")
            self._remote(lambda fs: fs.copy(target, previous), f"keep the previous {name}")
        self._remote(lambda fs: fs.put_file(str(local), target), f"upload {name}")

    def pull(self, *names: str) -> list[str]:
        """Download the named files that exist remotely into the staging directory; the
        names found."""
        if not self.remote:
            return [n for n in names if (self.path / n).exists()]
        found = []
        for name in names:
            if not self.exists(name):
                continue
            local = self.path / name
            local.parent.mkdir(parents=True, exist_ok=True)
            source, target = self.url(name), str(local)
            self._remote(lambda fs, s=source, t=target: fs.get_file(s, t), f"get {name}")
            found.append(name)
        return found

    def _remote(self, action, what: str):
        """`action(fs)` against the object store; transient failures retried with backoff,
        then one line. A missing bucket or object is an answer, not an error."""
        fs = filesystem(self.location, self.options)
        for attempt in range(_UPLOAD_ATTEMPTS):
            try:
                return action(fs)
            except (FileNotFoundError, PermissionError) as exc:
                raise RunDirError(
                    f"{self.location}: cannot {what}: {first_line(exc, 200)}"
                ) from None
            except Exception as exc:  # noqa: BLE001  (network/storage: transient, retried)
                if attempt == _UPLOAD_ATTEMPTS - 1:
                    raise RunDirError(
                        f"{self.location}: cannot {what}: {type(exc).__name__}: "
                        f"{first_line(exc, 200)}"
                    ) from None
                time.sleep(0.5 * 2**attempt)
        return None


def _remove_staging(path: Path, owner: int) -> None:
    if os.getpid() == owner:
        shutil.rmtree(path, ignore_errors=True)
