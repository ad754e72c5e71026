"""Beam's `--setup_file ./setup.py` (Dataflow and portable runners) needs a setup.py to build
the sdist it ships to workers; everything about the package is in pyproject.toml."""

import setuptools

setuptools.setup()
