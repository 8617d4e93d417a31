"""`coincide search ... --label-as CLASS`: the hits of a search put to an annotator as "is this
a CLASS?" (the simulated oracle, or the labeling page), their answers kept in the label store
(`coincide.labeling.search_label`) for `coincide finetune --with-search`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from coincide.errors import UserError
from coincide.labeling.search_label import add_hits, answer_with_oracle
from coincide.store.features import FeatureStore
from coincide.store.labels import label_store_path
from coincide.store.labels_sqlite import SQLiteLabelStore


def run(
    model_path: Path,
    store: FeatureStore,
    hits: Sequence[Any],
    label: str,
    query: str,
    session: str | None = None,
    db: Path | None = None,
    oracle: str | None = None,
    serve: bool = False,
    host: str = "127.0.0.1",
    port: int = 8750,
    annotator: str | None = None,
) -> dict[str, Any]:
    """`coincide search ... --label-as CLASS`: put the hits to an annotator as "is this a
    CLASS?" (the oracle with `oracle`, the labeling page with `serve`), and say how to train on
    the answers. Returns the session's name, label store and answer counts."""
    from coincide.models.inference import load_model

    model = load_model(model_path, "cpu")
    home = model.home
    if db is None and home is None:
        raise UserError("this model has no run folder for the label store; pass --db PATH.")
    db_path = label_store_path(home, db)  # type: ignore[arg-type]
    run_dir = Path(home) if home is not None else db_path.parent
    windows = [int(hit.window) for hit in hits]
    with SQLiteLabelStore(db_path) as label_store:
        chosen = add_hits(
            label_store, run_dir, store, label, query, model.identity, windows, session
        )
        if oracle is not None:
            from coincide.labeling.oracle import oracle_window_labels

            answer_with_oracle(label_store, chosen, oracle_window_labels(store, oracle))
    if serve:
        from coincide.labelui.server import serve as serve_page

        serve_page(run_dir, store.root, None, host, port, None, chosen.name, db_path,
                   annotator=annotator)  # fmt: skip
    with SQLiteLabelStore(db_path) as label_store:
        current = label_store.answers(chosen.id)
        total = len(label_store.requests(chosen.id))
    yes = sum(a.kind == "label" and label in a.labels for a in current)
    no = sum(a.kind == "skip" for a in current)
    print(
        f"search session {chosen.name!r} ({label!r}): {total} hits, {yes} yes, {no} no, "
        f"{total - len(current)} unanswered, in {db_path}; "
        + ("answer them with --serve, then " if total > len(current) else "")
        + "train with them: coincide finetune RUN --store STORE --with-search"
    )
    return {"session": chosen.name, "label_store": str(db_path), "yes": yes, "no": no}
