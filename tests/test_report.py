"""`coincide report`: the HTML page of a run, from a tiny real run and from a bare checkpoint.

The full fixture trains the curriculum for a few steps (with a held-out QbE probe), evaluates,
clusters and makes a one-budget Table 3 on stores with a class named like an HTML tag, so the
page must escape it; the bare run has only a checkpoint, so every section says what is missing.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from coincide.classifier.train import FinetuneConfig
from coincide.cli.commands import app
from coincide.errors import UserError
from coincide.experiments.table3 import run_table3
from coincide.report.embedding_map import NO_LABEL, first_labels, project_2d
from coincide.report.html import human_title, markdown_to_html
from coincide.report.page import ReportSettings, write_report
from coincide.report.page import run as report
from coincide.stages import cluster, evaluate, label
from coincide.stages.finetune import FinetuneSettings
from coincide.stages.finetune import run as finetune
from coincide.stages.train import TrainSettings
from coincide.stages.train import run as train
from coincide.store.features import open_store
from coincide.store.labels_sqlite import SQLiteLabelStore
from coincide.train.validation import overfitting_message

sys.path.insert(0, str(Path(__file__).parent))
import consolidation_helpers  # noqa: E402
import eval_helpers  # noqa: E402

torch.set_num_threads(1)

XSS = "<img src=x onerror=alert(1)>"
CLASSES = ["dog", "rain", XSS]
HEADINGS = ("Training", "Clusters", "Labels", "Fine-tuning", "Embeddings", "Table 3")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _images(page: str) -> list[str]:
    return re.findall(r'<img src="([^"]+)"', page)


def _flat(page: str) -> str:
    """The page without the line breaks between tags (markdown-it puts one after each)."""
    return re.sub(r">\n<", "><", page)


def _label_by_hand(run: Path, store: Path, session: str, answer: list[str]) -> None:
    """A person's session: every asked cluster answered `answer` through the label store, then
    propagated by `coincide label` (which asks nothing new)."""
    label.run(label.LabelSettings(run, store, budget=3, session=session))
    with SQLiteLabelStore(run / "labels.sqlite") as label_store:
        opened = label_store.get_session(session)
        for request in label_store.requests(opened.id):
            label_store.answer(
                opened.id, request.cluster_id, request.window_index, answer, "label", "ann"
            )
    label.run(label.LabelSettings(run, store, budget=3, session=session))


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("report")
    train_store = eval_helpers.make_store(root / "train", CLASSES, clips_per_class=4)
    test_store = eval_helpers.make_store(root / "test", CLASSES, clips_per_class=3, seed=1)
    run = root / "run"
    train(TrainSettings(train_store, run, ("small",), tuple(eval_helpers.TINY), test_store, 1))
    evaluate.run(evaluate.EvaluateSettings(run, test_store))
    cluster.run(cluster.ClusterSettings(run, train_store))
    label.run(label.LabelSettings(run, train_store, budget=3, oracle="store"))
    _label_by_hand(run, train_store, "human", ["dog"])
    cfg = FinetuneConfig(steps=2, batch_size=4, progress=False)
    finetune(FinetuneSettings(run, train_store, "cluster", test_store=test_store, cfg=cfg))
    run_table3(run, train_store, test_store, [2], root / "table3", cfg=cfg)
    return {"root": root, "run": run, "train": train_store, "test": test_store}


def test_the_report_shows_every_section_with_pictures_that_exist(workspace):
    run, test = workspace["run"], workspace["test"]
    result = CliRunner().invoke(
        app,
        [
            "report",
            str(run),
            "--test-store",
            str(test),
            "--table3",
            str(workspace["root"] / "table3"),
        ],
    )
    assert result.exit_code == 0, result.output
    page_path = run / "report.html"
    assert result.output.strip() == f"report: {page_path}"
    page = page_path.read_text(encoding="utf-8")

    for heading in HEADINGS:
        assert f">{heading}</h2>" in page
    assert "Missing:" not in page
    # Three stage curves, the QbE curve, the cluster sizes, the fine-tuning's loss curve, the
    # map and the Table 3 plot.
    sources = _images(page)
    assert sorted(sources) == sorted(
        [
            "report_files/training_stage1_av.png",
            "report_files/training_stage2_coin.png",
            "report_files/training_stage3_joint.png",
            "report_files/training_qbe_curve.png",
            "report_files/clusters_train.png",
            "report_files/finetune_cluster-cluster.png",
            "report_files/embeddings_pca.png",
            "report_files/table3_table3.png",
        ]
    )
    for source in sources:
        assert (run / source).read_bytes()[:8] == PNG_MAGIC

    # The stage summary and the numbers come from the run's own files.
    state = json.loads((run / "state.json").read_text())
    assert [r["name"] for r in state["finished"]] == ["av", "coin", "joint"]
    assert page.count("<td>step cap</td>") == 3
    qbe = json.loads((run / "eval" / "metrics.json").read_text())["qbe_map"]
    title = "QbE retrieval mAP (pairs within one media left out)"
    assert f"<td>{title}</td><td>{qbe:.4g}</td>" in page
    assert "qbe_map" not in page  # no raw JSON key is shown
    summary = json.loads((run / "clusters" / "train" / "summary.json").read_text())
    assert f"<b>{summary['active_clusters']}</b> active clusters of K = 4" in page
    table3 = pd.read_csv(workspace["root"] / "table3" / "table3.csv")
    row = table3[table3["strategy"] == "cluster"].iloc[0]
    assert (
        f'<td>Cluster: head</td><td class="num">{row.budget:.0f}</td>'
        f'<td class="num">{row.examples:.0f}</td>'
        f'<td class="num">{row.mAP:.3f} ± '
    ) in _flat(page)

    # Training printed a memorization warning for a stage exactly when the page shows one.
    warned = any(r.get("overfitting") for r in state["finished"])
    assert ('class="warning"' in page) == warned

    # The class named like a tag is text everywhere: 12 windows of each class on the map.
    assert "<img src=x" not in page
    escaped = "&lt;img src=x onerror=alert(1)&gt;"
    assert f'<tr><td>{escaped}</td><td class="num">12</td></tr>' in page
    for name in ("dog", "rain"):
        assert f'<tr><td>{name}</td><td class="num">12</td></tr>' in page


def test_the_labels_and_fine_tuning_sections_show_the_run_s_numbers(workspace, tmp_path):
    run, train_store = workspace["run"], workspace["train"]
    page = _flat(write_report(run, tmp_path / "page.html").read_text(encoding="utf-8"))
    labels = page[page.index(">Labels</h2>") : page.index(">Fine-tuning</h2>")]
    # The oracle's session: the precision its summary recorded, measured again from the store.
    summary = json.loads((run / "labels" / "cluster" / "summary.json").read_text())
    assert (
        f"Label precision <b>{summary['label_precision']:.3f}</b>, recall "
        f"{summary['label_recall']:.3f}"
    ) in labels
    assert f'<tr><td>Clusters asked</td><td class="num">{summary["requests"]}</td></tr>' in labels
    # The person answered "dog" for every cluster: the estimate is the share of the labeled
    # windows whose clip is a dog, and all of them count for the class dog.
    propagated = pd.read_parquet(run / "labels" / "human" / "propagated.parquet")
    truth = [list(names) for names in open_store(train_store).index["labels"]]
    precision = float(np.mean(["dog" in truth[w] for w in propagated["window_index"]]))
    assert f"Label precision <b>{precision:.3f}</b>" in labels
    clusters = propagated["cluster_id"].nunique()
    assert (
        f'<tr><td>dog</td><td class="num">{clusters}</td><td class="num">{len(propagated)}</td>'
        f'<td class="num">{precision:.4g}</td></tr>'
    ) in labels

    tuned = page[page.index(">Fine-tuning</h2>") : page.index(">Embeddings</h2>")]
    metrics = json.loads((run / "finetune" / "cluster-cluster" / "metrics.json").read_text())
    assert "<td>cluster-cluster</td><td>cluster</td><td>cluster</td>" in tuned
    assert f"<tr><td>Clip-level mAP</td><td>{metrics['mAP']:.4g}</td></tr>" in tuned
    assert sorted(metrics["per_class_ap"]) == sorted(CLASSES)
    for name, ap in metrics["per_class_ap"].items():
        cell = "n/a" if ap is None else f"{ap:.4g}"
        assert f'<tr><td>{html.escape(name)}</td><td class="num">{cell}</td>' in tuned


def test_the_memorization_warning_and_the_start_of_f_are_shown(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    evidence = {
        "from_step": 10,
        "to_step": 40,
        "train_from": 0.9,
        "train_to": 0.5,
        "held_out_from": 0.7,
        "held_out_to": 0.8,
        "best_held_out": 0.65,
    }
    record = {"name": "av", "steps": 40, "stopped": "step cap", "overfitting": evidence}
    state = {"stages": ["av"], "finished": [record], "step": 40, "done": True}
    (run / "state.json").write_text(json.dumps(state))
    start = {"source": "/w/<f>.pt", "weights": {}, "tensors": 12}
    (run / "init_from.json").write_text(json.dumps(start))
    page = write_report(run, run / "report.html").read_text(encoding="utf-8")
    message = overfitting_message("av", evidence)
    assert "rose 0.700 -> 0.800 while the training loss fell 0.900 -> 0.500" in message
    assert f'<p class="warning"><b>Warning:</b> {html.escape(message)}</p>' in page
    assert "started from <code>/w/&lt;f&gt;.pt</code> (--init-from, 12 tensors)" in page


def test_the_page_and_its_folder_can_be_copied(workspace, tmp_path):
    out = tmp_path / "made" / "page.html"
    write_report(workspace["run"], out, workspace["test"], workspace["root"] / "table3")
    copy = tmp_path / "copied"
    shutil.copytree(out.parent, copy)
    shutil.rmtree(out.parent)
    page = (copy / "page.html").read_text(encoding="utf-8")
    sources = _images(page)
    assert len(sources) == 8
    for source in sources:
        assert source.startswith("page_files/")
        assert (copy / source).read_bytes()[:8] == PNG_MAGIC


def test_a_run_with_only_a_checkpoint_says_what_is_missing(tmp_path):
    run = tmp_path / "bare"
    consolidation_helpers.make_run(run)
    path = report(ReportSettings(run))
    assert path == run / "report.html"
    page = path.read_text(encoding="utf-8")
    kept = page.split('<script type="application/json" id="settings">')[1].split("</script>")[0]
    assert json.loads(kept)["command"] == "report"
    for heading in HEADINGS:
        assert f">{heading}</h2>" in page
    assert _images(page) == []
    assert not list((run / "report_files").glob("*.png"))
    for command in (
        f"coincide train {run} --store STORE",
        f"coincide train {run} --store STORE --test-store TEST_STORE",
        f"coincide evaluate {run} --test-store TEST_STORE",
        f"coincide cluster {run} --store STORE",
        "coincide ingest MEDIA --store TEST_STORE",
        "coincide reproduce table3",
    ):
        assert command in page
    assert "coincide label" in page and "coincide finetune" in page
    assert page.count('class="missing"') == 8


def test_table3_from_its_csv_alone(tmp_path):
    run, table3 = tmp_path / "run", tmp_path / "t3"
    run.mkdir()
    table3.mkdir()
    pd.DataFrame(
        {"strategy": ["cluster", "<b>x</b>"], "budget": [5, 5], "mAP": [0.41234, float("nan")]}
    ).to_csv(table3 / "table3.csv", index=False)
    page = report(ReportSettings(run, table3=table3)).read_text(encoding="utf-8")
    section = page[page.index(">Table 3</h2>") :]
    assert "<td>cluster</td>" in section and "<td>0.412</td>" in section
    assert "<td>&lt;b&gt;x&lt;/b&gt;</td>" in section and "<td>n/a</td>" in section
    assert "Missing" not in section and "<img" not in section


def test_a_stage_in_progress_is_plotted_from_the_log(tmp_path):
    run = tmp_path / "run"
    (run / "plots").mkdir(parents=True)
    state = {
        "stages": ["av", "coin", "joint"],
        "finished": [{"name": "av", "steps": 3, "stopped": "plateau", "best_val": 0.5}],
        "step": 5,
        "done": False,
        "stage": "coin",
        "stage_step": 2,
    }
    (run / "state.json").write_text(json.dumps(state))
    log = pd.DataFrame(
        {
            "step": [1, 2, 3, 3, 4, 5],
            "stage": ["av", "av", "av", "av", "coin", "coin"],
            "stage_step": [1, 2, 3, 3, 1, 2],
            "split": ["train", "train", "train", "val", "train", "train"],
            "total": [1.0, 0.8, 0.7, 0.5, 0.9, 0.6],
        }
    )
    log.to_csv(run / "train_log.csv", index=False)
    # The finished stage's picture, as training left it, is reused as it is.
    (run / "plots" / "stage1_av.png").write_bytes(PNG_MAGIC + b"from training")

    page = write_report(run, run / "report.html").read_text(encoding="utf-8")
    assert "<p>Step 5; training in progress.</p>" in page
    assert (
        '<tr><td class="num">1</td><td>av</td><td class="num">3</td><td>plateau</td>'
        '<td class="num">1</td><td class="num">0.7</td><td class="num">0.5</td></tr>'
    ) in page
    assert '<td>coin</td><td class="num">2</td><td>in progress</td>' in page
    assert '<td>joint</td><td class="num">0</td><td>not started</td>' in page
    files = run / "report_files"
    assert (files / "training_stage1_av.png").read_bytes() == PNG_MAGIC + b"from training"
    assert (files / "training_stage2_coin.png").stat().st_size > 1000  # plotted from the log
    assert not (files / "training_stage3_joint.png").exists()


def test_project_2d_maps_directions_not_lengths():
    # Two directions at many lengths: normalised, each group is one point, sqrt(2) apart.
    lengths = np.linspace(1.0, 10.0, 6)[:, None]
    embeddings = np.vstack([lengths * [1.0, 0.0, 0.0], lengths * [0.0, 1.0, 0.0]])
    points = project_2d(embeddings, "pca")
    assert points.shape == (12, 2)
    np.testing.assert_allclose(points[:6], np.repeat(points[:1], 6, axis=0), atol=1e-9)
    np.testing.assert_allclose(points[6:], np.repeat(points[6:7], 6, axis=0), atol=1e-9)
    assert np.linalg.norm(points[0] - points[6]) == pytest.approx(np.sqrt(2))
    tsne = project_2d(np.random.default_rng(0).normal(size=(20, 4)), "tsne")
    assert tsne.shape == (20, 2) and np.isfinite(tsne).all()
    with pytest.raises(ValueError, match="umap"):
        project_2d(embeddings, "umap")  # type: ignore[arg-type]


def test_first_labels():
    assert first_labels([["b", "a"], [], ["c"]]) == ["b", NO_LABEL, "c"]


def test_markdown_to_html_escapes_and_aligns():
    text = (
        "# Title <b>\n\nRun `a<b` here\nand there.\n\n"
        "| Name | mAP |\n|---|---:|\n| <x> | 0.5 |\n\n![plot](p%20q.png)\n\n"
        "<script>alert(1)</script>\n[link](javascript:alert(1))\n"
    )
    seen = []

    def image(src: str, alt: str) -> str:
        seen.append((src, alt))
        return "IMAGE"

    assert _flat(markdown_to_html(text, image)).split("\n") == [
        "<h3>Title &lt;b&gt;</h3><p>Run <code>a&lt;b</code> here",
        'and there.</p><table><thead><tr><th>Name</th><th class="num">mAP</th></tr></thead>'
        '<tbody><tr><td>&lt;x&gt;</td><td class="num">0.5</td></tr></tbody></table>'
        "<p>IMAGE</p><p>&lt;script&gt;alert(1)&lt;/script&gt;",
        "[link](javascript:alert(1))</p>",  # an unsafe link stays text
        "",
    ]
    assert seen == [("p q.png", "plot")]


def test_human_titles():
    assert human_title("qbe_map") == "QbE retrieval mAP (pairs within one media left out)"
    assert human_title("clip_qbe_auc_per_class") == "Clip QbE AUC per class"
    assert human_title("new_thing") == "New thing"


def test_user_errors(tmp_path):
    run = tmp_path / "run"
    consolidation_helpers.make_run(run)
    with pytest.raises(UserError, match="does not exist"):
        report(ReportSettings(tmp_path / "nowhere"))
    with pytest.raises(UserError, match=r"\.html"):
        report(ReportSettings(run, html=tmp_path / "page.txt"))
    with pytest.raises(UserError, match="--test-store"):
        report(ReportSettings(run, test_store=tmp_path / "no_store"))
