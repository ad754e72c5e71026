"""Seeded choices without random state: every choice is a hash of what it is about."""

from __future__ import annotations

import hashlib


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
