"""matplotlib for files only, and text that matplotlib must show as it is."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


@contextmanager
def pyplot() -> Iterator[Any]:
    """matplotlib.pyplot on the Agg backend (files only)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    yield plt


def literal(text: str) -> str:
    """Text for matplotlib as it is: a class called `$x$` is a name, not math, and one called
    `_x` stays in the legend (matplotlib hides labels that start with `_`)."""
    text = text.replace("$", r"\$")
    return f" {text}" if text.startswith("_") else text
