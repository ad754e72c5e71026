"""The model zoo. Importing this package imports every module in it, and each registers its
models with `tagtrain.models.registry`: a new model is one module here, nothing else."""

from __future__ import annotations

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
