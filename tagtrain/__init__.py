from pipelines.core.versions import CODE_VERSION as __version__  # noqa: F401
