"""coincide: sound classifiers from unlabeled video (Jansen et al., ICASSP 2020)."""

from coincide.store.features import open_store

__version__ = "0.1.0"

__all__ = ["open_store"]
