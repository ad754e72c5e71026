"""The command lines: one module per `python -m tagtrain` command; each parses its options (a dataclass) and calls one function of another room."""
