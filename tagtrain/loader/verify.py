"""`--verify`: every shard's bytes checked against the sha256 the card lists for it
(`splits[split]["shards"][i]["sha256"]`, with `bytes`), before training reads them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pipelines.core.errors import first_line
from pipelines.core.storage import stream_sha256
from tagtrain.loader.card_reader import ShardInfo
from tagtrain.loader.openers import open_url_at
from tagtrain.loader.retry import RetryingStream
from tagtrain.loader.stats import LoaderError


def shard_digest(shard: ShardInfo, options: Mapping, retries: int = 6) -> tuple[str, int]:
    """(sha256 hex, bytes) of a shard, read once from start to end."""
    stream = RetryingStream(lambda offset: open_url_at(shard.url, options, offset), retries, 0.5)
    with stream:
        return stream_sha256(stream)


def verify_shards(shards: Sequence[ShardInfo], options: Mapping, retries: int = 6) -> int:
    """Check every shard that has a sha256 in the card; LoaderError (one line, naming the
    first few bad shards) when any differs or cannot be read. Returns the shards checked."""
    bad, checked = [], 0
    for shard in shards:
        if not shard.sha256:
            continue
        checked += 1
        try:
            digest, size = shard_digest(shard, options, retries)
        except Exception as exc:  # noqa: BLE001  (unreadable: reported with the others)
            bad.append(f"{shard.name} ({type(exc).__name__}: {first_line(exc, 80)})")
            continue
        if digest != shard.sha256:
            bad.append(f"{shard.name} (sha256 {digest[:12]}..., {size} bytes)")
    if bad:
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise LoaderError(
            f"--verify: {len(bad)} of {checked} shards differ from the card: "
            f"{', '.join(bad[:3])}{more}"
        )
    return checked
