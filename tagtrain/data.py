"""Moved to the package `tagtrain.loader` (one module per job); this name re-exports
its public API for older callers."""

from tagtrain.loader import *  # noqa: F403
from tagtrain.loader import __all__  # noqa: F401
