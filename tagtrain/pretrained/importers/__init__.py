"""Importers of published checkpoints the user brings (`import-weights --from SOURCE`).

One module per source. Each defines:

- `MODELS: dict[str, str]`: the registered model names it can fill (our names) -> the
  reference architecture they correspond to (for `--help` and errors);
- `convert(state: Mapping[str, Tensor], model: str) -> dict[str, Tensor]`: the reference
  checkpoint's state dict (already unwrapped from its container) -> our model's state
  dict, strictly (every reference tensor used once, every tensor of ours filled, shapes
  equal), raising `WeightsImportError` that names the first mismatch.

Sources are imported only when used.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from tagtrain.pretrained.importers.common import WeightsImportError

SOURCES = {
    "sota": "tagtrain.pretrained.importers.sota",
    "ssmtt": "tagtrain.pretrained.importers.ssmtt",
    "maest": "tagtrain.pretrained.importers.maest",
    "passt": "tagtrain.pretrained.importers.maest",
}

__all__ = ["SOURCES", "WeightsImportError", "importer"]


def importer(source: str) -> ModuleType:
    """The module of one source (`sota`, `ssmtt`, `maest`, `passt`)."""
    if source not in SOURCES:
        raise WeightsImportError(
            f"unknown --from {source!r}; choose one of {', '.join(sorted(SOURCES))}"
        )
    return importlib.import_module(SOURCES[source])
