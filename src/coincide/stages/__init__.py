"""One module per command of the pipeline, each reading top to bottom."""
