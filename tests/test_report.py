"""`coincide report`: the HTML page of a run, from a tiny real run and from a bare checkpoint.

The full fixture trains the curriculum for a few steps (with a held-out QbE probe), evaluates,
clusters and makes a one-budget Table 3 on stores with a class named like an HTML tag, so the
page must escape it; the bare run has only a checkpoint, so every section says what is missing.
"""

from __future__ import annotations

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

from coincide import cluster, evaluate
from coincide.cli import app
from coincide.embedding_map import NO_LABEL, first_labels, project_2d
from coincide.errors import UserError
from coincide.finetune import FinetuneConfig
from coincide.markdown_html import markdown_to_html
from coincide.report import run as report
from coincide.report import write_report
from coincide.table3 import run_table3
from coincide.train.loop import run as train

sys.path.insert(0, str(Path(__file__).parent))
import consolidation_helpers  # noqa: E402
import eval_helpers  # noqa: E402

torch.set_num_threads(1)

XSS = "<img src=x onerror=alert(1)>"
CLASSES = ["dog", "rain", XSS]
HEADINGS = ("Training", "Clusters", "Embeddings", "Table 3")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _images(page: str) -> list[str]:
    return re.findall(r'<img src="([^"]+)"', page)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("report")
    train_store = eval_helpers.make_store(root / "train", CLASSES, clips_per_class=4)
    test_store = eval_helpers.make_store(root / "test", CLASSES, clips_per_class=3, seed=1)
    run = root / "run"
    train(train_store, run, ["small"], list(eval_helpers.TINY), test_store, eval_every=1)
    evaluate.run(run, test_store)
    cluster.run(run, train_store)
    cfg = FinetuneConfig(steps=2, batch_size=4, progress=False)
    run_table3(run, train_store, test_store, [2], root / "table3", cfg=cfg)
    return {"root": root, "run": run, "train": train_store, "test": test_store}


def test_the_report_shows_every_section_with_pictures_that_exist(workspace):
    run, test = workspace["run"], workspace["test"]
    result = CliRunner().invoke(
        app,
        ["report", str(run), "--store", str(test), "--table3", str(workspace["root"] / "table3")],
    )
    assert result.exit_code == 0, result.output
    page_path = run / "report.html"
    assert result.output.strip() == f"report: {page_path}"
    page = page_path.read_text(encoding="utf-8")

    for heading in HEADINGS:
        assert f">{heading}</h2>" in page
    assert "Missing:" not in page
    # Three stage curves, the QbE curve, the cluster sizes, the map and the Table 3 plot.
    sources = _images(page)
    assert sorted(sources) == sorted(
        [
            "report_files/training_stage1_av.png",
            "report_files/training_stage2_coin.png",
            "report_files/training_stage3_joint.png",
            "report_files/training_qbe_curve.png",
            "report_files/clusters_train.png",
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
    assert f"<td>qbe_map</td><td>{qbe:.4g}</td>" in page
    summary = json.loads((run / "clusters" / "train" / "summary.json").read_text())
    assert f"<b>{summary['active_clusters']}</b> active clusters of K = 4" in page
    table3 = pd.read_csv(workspace["root"] / "table3" / "table3.csv")
    row = table3[table3["strategy"] == "cluster"].iloc[0]
    assert (
        f'<td>Cluster: head</td><td class="num">{row.budget:.0f}</td>'
        f'<td class="num">{row.examples:.0f}</td>'
        f'<td class="num">{row.mAP:.3f} ± '
    ) in page

    # The class named like a tag is text everywhere: 12 windows of each class on the map.
    assert "<img src=x" not in page
    escaped = "&lt;img src=x onerror=alert(1)&gt;"
    assert f'<tr><td>{escaped}</td><td class="num">12</td></tr>' in page
    for name in ("dog", "rain"):
        assert f'<tr><td>{name}</td><td class="num">12</td></tr>' in page


def test_the_page_and_its_folder_can_be_copied(workspace, tmp_path):
    out = tmp_path / "made" / "page.html"
    write_report(workspace["run"], out, workspace["test"], workspace["root"] / "table3")
    copy = tmp_path / "copied"
    shutil.copytree(out.parent, copy)
    shutil.rmtree(out.parent)
    page = (copy / "page.html").read_text(encoding="utf-8")
    sources = _images(page)
    assert len(sources) == 7
    for source in sources:
        assert source.startswith("page_files/")
        assert (copy / source).read_bytes()[:8] == PNG_MAGIC


def test_a_run_with_only_a_checkpoint_says_what_is_missing(tmp_path):
    run = tmp_path / "bare"
    consolidation_helpers.make_run(run)
    path = report(run)
    assert path == run / "report.html"
    page = path.read_text(encoding="utf-8")
    for heading in HEADINGS:
        assert f">{heading}</h2>" in page
    assert _images(page) == []
    assert not list((run / "report_files").glob("*.png"))
    for command in (
        f"coincide train STORE --run {run}",
        f"--run {run} --eval-store TEST_STORE",
        f"coincide evaluate {run} --store TEST_STORE",
        f"coincide cluster {run} --store STORE",
        "coincide ingest MEDIA --store TEST_STORE",
        "coincide reproduce table3",
    ):
        assert command in page
    assert page.count('class="missing"') == 6


def test_table3_from_its_csv_alone(tmp_path):
    run, table3 = tmp_path / "run", tmp_path / "t3"
    run.mkdir()
    table3.mkdir()
    pd.DataFrame(
        {"strategy": ["cluster", "<b>x</b>"], "budget": [5, 5], "mAP": [0.41234, float("nan")]}
    ).to_csv(table3 / "table3.csv", index=False)
    page = report(run, table3=table3).read_text(encoding="utf-8")
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
    with pytest.raises(UserError, match="umap"):
        project_2d(embeddings, "umap")  # type: ignore[arg-type]


def test_first_labels():
    assert first_labels([["b", "a"], [], ["c"]]) == ["b", NO_LABEL, "c"]


def test_markdown_to_html_escapes_and_aligns():
    text = (
        "# Title <b>\n\nRun `a<b` here\nand there.\n\n"
        "| Name | mAP |\n|---|---:|\n| <x> | 0.5 |\n\n![plot](p.png)\n"
    )
    seen = []

    def image(src: str, alt: str) -> str:
        seen.append((src, alt))
        return "<p>IMAGE</p>"

    assert markdown_to_html(text, image).split("\n") == [
        "<h3>Title &lt;b&gt;</h3>",
        "<p>Run <code>a&lt;b</code> here and there.</p>",
        "<table>",
        '<tr><th>Name</th><th class="num">mAP</th></tr>',
        '<tr><td>&lt;x&gt;</td><td class="num">0.5</td></tr>',
        "</table>",
        "<p>IMAGE</p>",
    ]
    assert seen == [("p.png", "plot")]


def test_user_errors(tmp_path):
    run = tmp_path / "run"
    consolidation_helpers.make_run(run)
    with pytest.raises(UserError, match="does not exist"):
        report(tmp_path / "nowhere")
    with pytest.raises(UserError, match=r"\.html"):
        report(run, out=tmp_path / "page.txt")
    with pytest.raises(UserError, match="--store"):
        report(run, store=tmp_path / "no_store")
    with pytest.raises(UserError, match="--map"):
        report(run, projection="umap")
