"""The code version and the library versions that identify a prepared dataset."""

from __future__ import annotations

import platform

CODE_VERSION = "0.2.0"


def library_versions(*extra: str) -> dict:
    """Versions of the libraries whose output ends up in the shards (decoders, resampler,
    feature code), plus any importable module named in `extra`."""
    import importlib

    names = ("numpy", "torch", "soundfile", "soxr", "pyarrow", *extra)
    versions = {"python": platform.python_version()}
    for name in names:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        versions[name] = getattr(module, "__version__", "unknown")
    import soundfile

    versions["libsndfile"] = soundfile.__libsndfile_version__
    return versions
