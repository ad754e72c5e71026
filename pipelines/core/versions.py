"""The code version and the library versions that identify a prepared dataset."""

from __future__ import annotations

import platform

CODE_VERSION = "0.2.0"


# Modules whose distribution metadata names the very string of their __version__, read
# without importing them: a job's driver would otherwise import torch (~1 CPU-s) and
# Beam (~1 CPU-s) only to name their versions.
FROM_METADATA = {"numpy": "numpy", "torch": "torch", "pyarrow": "pyarrow",
                 "apache_beam": "apache-beam"}  # fmt: skip


def _installed(distribution: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def library_versions(*extra: str) -> dict:
    """Versions of the libraries whose output ends up in the shards (decoders, resampler,
    feature code), plus any importable module named in `extra`."""
    import importlib

    names = ("numpy", "torch", "soundfile", "soxr", "pyarrow", *extra)
    versions = {"python": platform.python_version()}
    for name in names:
        if name in FROM_METADATA:
            version = _installed(FROM_METADATA[name])
            if version is not None:
                versions[name] = version
                continue
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        # A plain str: torch's TorchVersion would make every worker that unpickles the
        # job's config import torch.
        versions[name] = str(getattr(module, "__version__", "unknown"))
    import soundfile

    versions["libsndfile"] = soundfile.__libsndfile_version__
    return versions
