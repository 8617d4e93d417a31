"""The `coincide` command line: the parser (`commands`) and one module per group of commands."""

import importlib
from typing import Any


def __getattr__(name: str) -> Any:
    # `coincide.cli:main`, the installed entry point, and `coincide.cli.app`; imported on use so
    # that `coincide.cli.<module>` loads without the whole parser.
    if name in ("main", "app"):
        return getattr(importlib.import_module("coincide.cli.commands"), name)
    raise AttributeError(f"module 'coincide.cli' has no attribute {name!r}")
