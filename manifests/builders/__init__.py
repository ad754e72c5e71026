"""Manifests for the standard benchmarks, built from the split tables in
`manifests/splits/`: one module per benchmark family, each builder one function
registered with `@register_builder` (`registry.py`). Every module of this package is
imported here, so a new dataset is one decorated function in a module of its own (or
of its family); `python -m manifests build` lists and runs what is registered.
"""

from __future__ import annotations

import importlib
import pkgutil

from manifests.builders.registry import (
    BUILDERS,
    DATASET_NAMES,
    BenchmarkRows,
    Build,
    BuildOptions,
    build_benchmark,
    builder_names,
    get_builder,
    register_builder,
    track_row,
)

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "BUILDERS",
    "DATASET_NAMES",
    "BenchmarkRows",
    "Build",
    "BuildOptions",
    "build_benchmark",
    "builder_names",
    "get_builder",
    "register_builder",
    "track_row",
]
