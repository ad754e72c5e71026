"""What every importer shares: the error type and the strict renaming."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from pipelines.core.errors import UserError


class WeightsImportError(UserError):
    """A checkpoint that does not fit the model it is imported into (one line)."""


def rename_strict(
    source: Mapping[str, torch.Tensor],
    mapping: Mapping[str, str],
    target: Mapping[str, torch.Tensor],
    what: str,
) -> dict[str, torch.Tensor]:
    """Rename `source` (reference keys) by `mapping` (reference key -> our key) into a
    state dict with exactly `target`'s keys and shapes; `what` names the checkpoint in
    errors. The first key left over, missing or of another shape is the error."""
    for key in source:
        if key not in mapping:
            raise WeightsImportError(f"{what}: unexpected tensor {key!r} in the checkpoint")
    out: dict[str, torch.Tensor] = {}
    for ref_key, our_key in mapping.items():
        if ref_key not in source:
            raise WeightsImportError(f"{what}: the checkpoint has no tensor {ref_key!r}")
        if our_key not in target:
            raise WeightsImportError(f"{what}: the model has no tensor {our_key!r}")
        value = source[ref_key]
        if tuple(value.shape) != tuple(target[our_key].shape):
            raise WeightsImportError(
                f"{what}: {ref_key!r} has shape {tuple(value.shape)}, "
                f"the model's {our_key!r} needs {tuple(target[our_key].shape)}"
            )
        out[our_key] = value.to(target[our_key].dtype)
    for key in target:
        if key not in out:
            raise WeightsImportError(f"{what}: nothing in the checkpoint fills {key!r}")
    return out
