"""Our loader (tagtrain.loader), made as a trainer makes it (bench/loader_common.reader_for):
the same shuffle buffer (256) and crop rule as the peers. "ours+cache" reads remote shards
through the loader's local shard cache (`--cache-dir`), as wids and MDS keep the shards they
download: its later epochs read local disk."""

from __future__ import annotations

import atexit
import shutil
import tempfile

from loader_common import reader_for

from pipelines.core.storage import is_remote
from tagtrain.models.registry import get_entry

from .base import OurShardsPeer, Workload, register


class Ours(OurShardsPeer):
    # A checkpoint's loader state resumes the epoch at the next unread sample, also with
    # another worker count (docs/TRAINER.md; tests/test_resume.py).
    resume = "exact, any workers"

    def __init__(self, cache: bool = False):
        self.name = "ours+cache" if cache else "ours"
        self.cache = self.remote_only = cache  # the harness runs it on S3 only
        self._cache_dir: str | None = None  # one per process, kept across its epochs

    def cache_dir(self, location: str) -> str | None:
        if not (self.cache and is_remote(location)):
            return None
        if self._cache_dir is None:
            self._cache_dir = tempfile.mkdtemp(prefix="ours-cache-")
            atexit.register(shutil.rmtree, self._cache_dir, True)
        return self._cache_dir

    def batches(self, location, storage_options, work: Workload, epoch: int, workers: int):
        spec = get_entry(work.model).input_spec
        reader, plan = reader_for(
            location, storage_options, spec, workers, work.batch_size, epoch,
            split=work.split, cache_dir=self.cache_dir(location),
        )  # fmt: skip
        if plan.length != work.frames or plan.member != "mel.npy":
            raise ValueError(f"ours: the plan reads {plan.member} x {plan.length}, not the mel")
        try:
            for batch in reader:
                yield batch.x.float(), batch.y.float()
        finally:
            reader.close()


register(Ours())
register(Ours(cache=True))
