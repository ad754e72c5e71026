"""What a loader counts while it reads, and the loader's one-line error."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from pipelines.core.errors import UserError

_MAX_ERRORS_KEPT = 5
_COUNTERS = (
    "shards_opened",
    "shard_errors",
    "samples",
    "bad_samples",
    "foreign_members",
    "duplicate_keys",
    "bytes_read",
    "bytes_used",
    "range_requests",
    "obstore_requests",
)


class LoaderError(UserError, ValueError):
    """A loader set-up that cannot work (e.g. too few shards); the message is one line."""


def _one_note_per_shard(notes: list[str], failed_shards: list[str]) -> list[str]:
    """The notes without repeats, and one note per failed shard (several workers may
    each have noted the same shard's failure)."""
    kept, noted = [], set()
    for note in dict.fromkeys(notes):
        shard = note.split(": ", 1)[0]
        if shard in failed_shards:
            if shard in noted:
                continue
            noted.add(shard)
        kept.append(note)
    return kept[:_MAX_ERRORS_KEPT]


@dataclass
class LoaderStats:
    shards_opened: int = 0
    shard_errors: int = 0
    samples: int = 0  # samples decoded
    bad_samples: int = 0  # samples skipped for any reason (see bad_by_reason)
    foreign_members: int = 0  # members that are neither .json nor .npy: skipped unread
    duplicate_keys: int = 0  # samples whose key was already read from the same shard
    bytes_read: int = 0  # shard bytes read or downloaded (whole shards, or member ranges)
    bytes_used: int = 0  # bytes of the members decoded (json + the model's member)
    range_requests: int = 0  # remote range requests sent (sample-level reading, merged)
    obstore_requests: int = 0  # of which obstore sent (s3://, `LoaderConfig.s3_client`)
    bad_by_reason: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    # Names of the shards that failed: with sample-level partitioning several workers
    # read one shard, so summed counts would count one bad shard once per worker.
    failed_shards: list[str] = field(default_factory=list)

    def add(self, other: LoaderStats) -> LoaderStats:
        out = LoaderStats()
        for name in _COUNTERS:
            setattr(out, name, getattr(self, name) + getattr(other, name))
        reasons = dict(self.bad_by_reason)
        for reason, count in other.bad_by_reason.items():
            reasons[reason] = reasons.get(reason, 0) + count
        out.bad_by_reason = reasons
        out.failed_shards = sorted(set(self.failed_shards) | set(other.failed_shards))
        if out.failed_shards:
            out.shard_errors = len(out.failed_shards)
        out.errors = _one_note_per_shard(self.errors + other.errors, out.failed_shards)
        return out

    def note(self, message: str) -> None:
        if len(self.errors) < _MAX_ERRORS_KEPT:
            self.errors.append(message[:300])

    def shard_failed(self, name: str, message: str) -> None:
        if name not in self.failed_shards:
            self.failed_shards.append(name)
            self.shard_errors = len(self.failed_shards)
            self.note(f"{name}: {message}")

    def reject(self, key: str, reason: str, detail: str, note: bool = True) -> None:
        """Count one skipped sample under `reason` (a short fixed word)."""
        self.bad_samples += 1
        self.bad_by_reason[reason] = self.bad_by_reason.get(reason, 0) + 1
        if note:
            self.note(f"{key}: {reason}: {detail}")

    @property
    def bad_fraction(self) -> float:
        seen = self.samples + self.bad_samples
        return self.bad_samples / seen if seen else 0.0

    def snapshot(self) -> LoaderStats:
        """A copy that later counting does not change: what a batch carries (an object,
        not a dict, so the DataLoader passes it whole instead of walking it)."""
        return dataclasses.replace(
            self,
            bad_by_reason=dict(self.bad_by_reason),
            errors=list(self.errors),
            failed_shards=list(self.failed_shards),
        )
