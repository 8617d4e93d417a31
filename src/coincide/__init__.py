"""coincide: sound classifiers from unlabeled video (Jansen et al., ICASSP 2020)."""

from typing import Any

__version__ = "0.1.0"

__all__ = ["load_model", "open_store"]


def __getattr__(name: str) -> Any:
    # Imported on first use, not with the package: the command line imports `coincide` for
    # every subcommand, and `coincide --help` should not wait for pandas, pyarrow or torch.
    if name == "load_model":
        from coincide.models.inference import load_model

        return load_model
    if name == "open_store":
        from coincide.store.features import open_store

        return open_store
    raise AttributeError(f"module 'coincide' has no attribute {name!r}")
