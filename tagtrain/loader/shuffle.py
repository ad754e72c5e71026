"""Seeded choices without random state: every choice is a hash of what it is about."""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterable

import numpy as np


def stable_int(*parts) -> int:
    """A 64-bit hash of the parts (never Python's salted hash)."""
    text = "\x1f".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "big")


def stable_ints(head: tuple, lasts: Iterable) -> np.ndarray:
    """`stable_int(*head, last)` for each of `lasts`, as uint64: the same numbers at a
    fraction of the cost (a million keys are hashed per epoch)."""
    items = iter(lasts)
    chunks = iter(lambda: [str(v).encode() for v in itertools.islice(items, 1 << 16)], [])
    return stable_ints_of_chunks(head, chunks)


def stable_ints_of_chunks(head: tuple, chunks: Iterable[list[bytes]]) -> np.ndarray:
    """`stable_ints` of lists of UTF-8 texts: a chunk of digests at a time, no list of
    every text at once."""
    prefix = "".join(f"{p}\x1f" for p in head).encode()
    blake2b, parts = hashlib.blake2b, []
    for chunk in chunks:
        digests = b"".join([blake2b(prefix + v, digest_size=8).digest() for v in chunk])
        parts.append(np.frombuffer(digests, dtype=">u8").astype(np.uint64))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint64)


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
