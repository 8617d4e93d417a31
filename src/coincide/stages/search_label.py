"""`coincide search ... --label-as CLASS`: the hits of a search put to an annotator as "is this
a CLASS?" (the simulated oracle, or the labeling page), their answers kept in the label store
(`coincide.labeling.search_label`) for `coincide finetune --with-search`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from coincide.errors import UserError
from coincide.labeling.search_label import add_hits, answer_with_oracle
from coincide.store.features import FeatureStore
from coincide.store.labels import label_store_path
from coincide.store.labels_sqlite import SQLiteLabelStore

if TYPE_CHECKING:
    from coincide.models.search_index import Hit
    from coincide.stages.search import SearchSettings


def label_hits(
    settings: SearchSettings, store: FeatureStore, hits: Sequence[Hit]
) -> dict[str, Any]:
    """Put the hits of a search to an annotator as "is this a `settings.label_as`?" (the oracle
    with `oracle`, the labeling page with `serve`), and say how to train on the answers.
    Returns the session's name, label store and answer counts."""
    from coincide.models.inference import load_model

    label = settings.label_as
    assert label is not None
    query = (
        settings.query if settings.query is not None else f"store window {settings.query_window}"
    )
    model = load_model(settings.model, "cpu")
    home = model.home
    if settings.db is None and home is None:
        raise UserError("this model has no run folder for the label store; pass --db PATH.")
    db_path = label_store_path(home, settings.db)  # type: ignore[arg-type]
    run_dir = Path(home) if home is not None else db_path.parent
    windows = [int(hit.window) for hit in hits]
    with SQLiteLabelStore(db_path) as label_store:
        chosen = add_hits(
            label_store, run_dir, store, label, query, model.identity, windows, settings.session
        )
        if settings.oracle is not None:
            from coincide.labeling.oracle import oracle_window_labels

            labels = oracle_window_labels(store, settings.oracle)
            answer_with_oracle(label_store, chosen, labels)
    if settings.serve:
        from coincide.labelui.server import LabelingServer, serve

        serve(LabelingServer(run_dir, store.root, None, settings.host, settings.port, None,
                             chosen.name, db_path, annotator=settings.annotator))  # fmt: skip
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
