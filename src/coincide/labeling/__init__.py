"""Clusters into questions: member choice and order, the simulated annotator, when to stop,
and search then label."""
