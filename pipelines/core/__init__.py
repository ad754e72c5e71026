"""The contract core: what the Beam jobs and the trainer share.

Audio decoding and resampling, features (log-mel, harmonic tensor), the shard byte format,
the dataset card and the versions that identify a dataset. Nothing here imports Apache Beam
or the trainer (checked by import-linter, see pyproject.toml): both sides sit on top of it.
"""
