"""Measures of a representation: metrics (NumPy/scikit-learn), QbE, fixed baselines."""
