"""p_class: training it on labeled windows, how long, and scoring it."""
