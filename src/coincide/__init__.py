"""coincide: sound classifiers from unlabeled video (Jansen et al., ICASSP 2020)."""

__version__ = "0.1.0"
