"""`coincide report`: the HTML page of a run and its pieces."""
