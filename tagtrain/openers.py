"""Moved to `tagtrain.loader.openers`; this name stays importable for older callers."""

from tagtrain.loader.openers import *  # noqa: F403
from tagtrain.loader.openers import (  # noqa: F401  (names `*` does not carry)
    OpenerError,
    check_supported,
    filesystem,
    join_url,
    local_path,
    open_url,
    read_bytes,
    register_with_webdataset,
    scheme_of,
    storage_options_for,
)
