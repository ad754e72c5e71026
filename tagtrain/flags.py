"""The trainer's flags come from the one generator of every command line,
`pipelines.core.flags` (flags from typed dataclasses); this name stays for its callers."""

from pipelines.core.flags import (  # noqa: F401
    add_flags,
    diff_from_defaults,
    flag_name,
    from_args,
    given,
    setting,
    settings_line,
)
