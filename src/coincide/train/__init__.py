"""The training curriculum (`coincide train`): the loop (`loop`), stage objectives and the loss
registry (`objective`), checkpoints and `load_models` (`checkpoint`), the plateau rule, the
optimizer and schedule, and what a run shows and records (`monitor`, `report`).

Modules are imported directly (`from coincide.train.loop import train`): importing this package
loads nothing heavy.
"""
