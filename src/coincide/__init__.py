"""coincide: sound classifiers from unlabeled video (Jansen et al., ICASSP 2020)."""

from typing import Any

from coincide.store.features import open_store

__version__ = "0.1.0"

__all__ = ["load_model", "open_store"]


def __getattr__(name: str) -> Any:
    # `coincide.load_model` imports torch and the models on first use, not with the package:
    # the command line imports `coincide` for every subcommand, most of which need no network.
    if name == "load_model":
        from coincide.inference import load_model

        return load_model
    raise AttributeError(f"module 'coincide' has no attribute {name!r}")
