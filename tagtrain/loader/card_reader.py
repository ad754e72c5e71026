"""The dataset card as every command reads it (train, evaluate, robustness, embed, probe,
report, ...): fetched (a regular file or an object, size capped), checked against the
card's schema (pipelines.core.card.check_card, which the Beam jobs' parse_card applies
too: types and ranges of every field a command relies on, one-line errors), and its
shards listed."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from pipelines.core.card import CARD_NAME, MAX_CARD_BYTES, CardError, check_card, parse_card
from pipelines.core.errors import first_line
from tagtrain.loader.openers import join_url, read_bytes

__all__ = ["MAX_CARD_BYTES", "ShardInfo", "check_card", "load_card", "split_shards"]


def load_card(data: str, options: Mapping | None = None) -> dict:
    """The dataset card at `data/dataset.json` (a directory or a URL prefix)."""
    url = join_url(data, CARD_NAME)
    try:
        text = read_bytes(url, options, limit=MAX_CARD_BYTES)
    except Exception as exc:  # noqa: BLE001  (any storage failure: one line, e.g. no credentials)
        raise CardError(f"cannot read the dataset card {url}: {first_line(exc, 200)}") from None
    return parse_card(text, url)  # and checked against the schema there


@dataclass(frozen=True)
class ShardInfo:
    name: str
    url: str
    samples: int
    sha256: str | None = None


def split_shards(card: Mapping, data: str, split: str) -> list[ShardInfo]:
    if split not in card["splits"]:
        have = ", ".join(sorted(card["splits"])) or "none"
        raise CardError(f"the dataset has no split {split!r} (it has: {have})")
    return [
        ShardInfo(s["name"], join_url(data, s["name"]), int(s["samples"]), s.get("sha256"))
        for s in card["splits"][split]["shards"]
    ]
