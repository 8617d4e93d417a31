"""Feature store (log-mel windows, 1 Hz frames, an index of windows) and clip-level labels."""

from coincide.store.features import FeatureStore, NoFrameError, open_store

__all__ = ["FeatureStore", "NoFrameError", "open_store"]
