"""Our loader (tagtrain.loader), made as a trainer makes it (bench/loader_common.reader_for):
the same shuffle buffer (256) and crop rule as the peers."""

from __future__ import annotations

from pathlib import Path

from loader_common import reader_for

from tagtrain.models.registry import get_entry

from .base import Workload, register


class Ours:
    name = "ours"
    # A checkpoint's loader state resumes the epoch at the next unread sample, also with
    # another worker count (docs/TRAINER.md; tests/test_resume.py).
    resume = "exact, any workers"

    def prepare(self, work: Workload, out: Path) -> Path:
        return Path(work.dataset)

    def batches(self, location, storage_options, work: Workload, epoch: int, workers: int):
        spec = get_entry(work.model).input_spec
        reader, plan = reader_for(
            location, storage_options, spec, workers, work.batch_size, epoch, split=work.split
        )
        if plan.length != work.frames or plan.member != "mel.npy":
            raise ValueError(f"ours: the plan reads {plan.member} x {plan.length}, not the mel")
        try:
            for batch in reader:
                yield batch.x.float(), batch.y.float()
        finally:
            reader.close()


register(Ours())
