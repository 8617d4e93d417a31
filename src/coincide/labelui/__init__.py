"""The labeling web page: people label clusters by ear and eye, through the label store.

- `server.serve(server.LabelingServer(...))`: run the page for a session (`label --serve`).
- `app.create_app(campaign, vocabulary, ...)`: the ASGI app (Starlette), for tests and embedding.
- `campaign.Campaign`: what the page serves, on top of `coincide.store.labels.LabelStore`, which
  alone owns the labels.
- `export.run(...)`: `coincide labels export`, the answers and the propagated window labels.

Starlette and uvicorn (the `web` extra) are imported by `app` and `server` only, so exporting
labels needs neither.
"""
