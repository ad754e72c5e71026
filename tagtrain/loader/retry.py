"""A sequential read stream that survives transient failures: on an error it reopens the
object at the failed offset (`open_at(offset)`) after a doubling backoff, up to `retries`
times; a missing or refused file fails at once. Used for whole-shard reading."""

from __future__ import annotations

import io
import time
from collections.abc import Callable

from tagtrain.loader.openers import OpenerError

PERMANENT = (FileNotFoundError, PermissionError, IsADirectoryError, OpenerError)


class RetryingStream(io.RawIOBase):
    def __init__(self, open_at: Callable[[int], object], retries: int, backoff: float):
        super().__init__()
        self._open_at = open_at
        self._retries = retries
        self._backoff = backoff
        self._position = 0
        self.retried = 0
        self._inner = None
        self._attempt(self._inner_or_reopen)

    def _attempt(self, action):
        attempt = 0
        while True:
            try:
                return action()
            except PERMANENT:
                raise
            except Exception:  # noqa: BLE001  (network/storage: transient, retried)
                if attempt >= self._retries:
                    raise
                self._drop_inner()
                time.sleep(self._backoff * 2**attempt)
                attempt += 1
                self.retried += 1

    def _drop_inner(self) -> None:
        old, self._inner = self._inner, None
        if old is not None:
            try:
                old.close()
            except Exception:  # noqa: BLE001,S110  (a broken stream may fail to close)
                pass

    def _inner_or_reopen(self):
        """The open stream, reopened at the current offset after a failure."""
        if self._inner is None:
            self._inner = self._open_at(self._position)
        return self._inner

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def read(self, size: int = -1) -> bytes:
        data = self._attempt(lambda: self._inner_or_reopen().read(size))
        self._position += len(data)
        return data

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_CUR:
            offset += self._position
        elif whence != io.SEEK_SET:
            raise OSError("a shard stream cannot seek from its end")
        self._attempt(lambda: self._inner_or_reopen().seek(offset))
        self._position = offset
        return offset

    def close(self) -> None:
        if not self.closed and self._inner is not None:
            self._inner.close()
        super().close()
