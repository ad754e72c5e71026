"""Whether recorded figures are of a run's current checkpoint and dataset. evaluate and
robustness record the sha256 of the checkpoint they scored (evaluate also the dataset
card's); a run resumed or trained again since, or a dataset prepared again, has another
one, and the report then says so over those figures instead of showing them as the
run's."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from pipelines.core.card import card_checksum
from pipelines.core.storage import file_sha256


def stale_checkpoint(run_dir: Path, recorded: Mapping) -> str | None:
    """One line when `recorded` ({"checkpoint": name, "checkpoint_sha256": ...}) names a
    checkpoint of `run_dir` whose bytes have changed since; None when they have not, or
    when that cannot be told (figures written before the sha256 was recorded, or of a
    checkpoint that is not in the run directory)."""
    name, scored = recorded.get("checkpoint"), recorded.get("checkpoint_sha256")
    if not isinstance(name, str) or not isinstance(scored, str) or "/" in name:
        return None
    current = file_sha256(run_dir / name)
    if current is None or current == scored:
        return None
    return (
        f"these figures are of an earlier {name} (sha256 {scored[:12]}...), not the run's "
        f"current one ({current[:12]}...): run evaluate / robustness again"
    )


def stale_data(recorded: Mapping, card: Mapping) -> str | None:
    """One line when `recorded` ({"data": ..., "data_card_sha256": ...}) was computed on
    another version of the dataset whose card is `card`; None when not, or unknown."""
    scored = recorded.get("data_card_sha256")
    if not isinstance(scored, str) or not scored or scored == card_checksum(card):
        return None
    return (
        f"these figures are of an earlier version of the dataset {recorded.get('data')} "
        "(its card has changed since): run evaluate again"
    )


def stale_robustness(directory: Path, run: Path) -> list[str]:
    """Why the robustness results in `directory` for `run` (robustness.json's entry for
    its directory) are not of its current checkpoint, if they are not."""
    path = directory / "robustness.json"
    entries = json.loads(path.read_text()).get("runs", []) if path.exists() else []
    mine = [e for e in entries if Path(str(e.get("dir", ""))).resolve() == run.resolve()]
    return [why for e in mine if (why := stale_checkpoint(run, e))]
