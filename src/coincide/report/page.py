"""`coincide report RUN`: one HTML page with the pictures of a run, for people to look at.

Six sections, each drawn from what the other commands left behind, and each saying which file
is missing and which command makes it when its input is not there:

1. Training: the loss curves of every stage (RUN/plots/stage<N>_<name>.png, re-plotted from
   RUN/train_log.csv for a stage still in progress or one whose picture is gone), the stage
   summary of RUN/state.json with the memorization warning training printed for a stage (the
   evidence is kept in the stage's record), where f started (RUN/init_from.json), the held-out
   QbE curve of RUN/eval_curve.csv and the numbers of RUN/eval/metrics.json under human titles.
2. Clusters: for every clustering of `coincide cluster` (RUN/clusters/<store>/ and its
   kmeans-<K>/ folders), the active clusters and the sorted cluster sizes (log y).
3. Labels: every labeling session (RUN/labels/<session>/): answers, propagation per class and
   the precision of the propagated labels (`coincide.report.consolidation`).
4. Fine-tuning: every RUN/finetune/<name>/: loss curve, mAP and each test class's AP.
5. Embeddings: a 2-D map (PCA, or t-SNE) of f(x) for a seeded sample of at most `map_windows`
   windows of a test store, coloured by the first label of each window's clip.
6. Table 3: DIR/table3.md of `coincide reproduce table3` as HTML (markdown-it-py), and its plot.

The pictures are PNG files in `<page stem>_files/` next to the page (RUN/report_files/ for the
default RUN/report.html), linked by relative paths, as `coincide search --html` does: the page
stays small and readable as text, each picture can be opened or reused on its own, and copying
the page with its folder keeps every link working.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, cast

import numpy as np
import pandas as pd

from coincide.config.stage import StageSettings
from coincide.console import printable
from coincide.dist import default_device
from coincide.errors import UserError
from coincide.evaluation.measure import cap_windows
from coincide.evaluation.probe import read_curve
from coincide.evaluation.representations import embed_positions
from coincide.files import atomic_output
from coincide.labeling.clusters import SIZES_FILE, SUMMARY_FILE
from coincide.report.consolidation import RERUN, finetune_section, labels_section
from coincide.report.embedding_map import (
    Projection,
    first_labels,
    plot_map,
    project_2d,
)
from coincide.report.html import (
    Pictures,
    human_title,
    key_table,
    markdown_to_html,
    missing,
    number,
    table,
    text,
    warning,
)
from coincide.report.plots import literal, pyplot
from coincide.run_folder import (
    BEST_CHECKPOINT,
    CHECKPOINTS_DIR,
    CLUSTERS_DIR,
    CURVE_FILE,
    EVAL_DIR,
    LAST_CHECKPOINT,
    METRICS_FILE,
    PLOTS_DIR,
    REPORT_FILE,
    STATE_FILE,
)
from coincide.stages.evaluate import read_metrics
from coincide.store.features import open_store
from coincide.store.layout import read_json_or_none
from coincide.train.checkpoint import load_models
from coincide.train.init_from import read_record
from coincide.train.report import plot_stage, read_log
from coincide.train.validation import overfitting_message

DEFAULT_MAP_WINDOWS = 3000


# RUN/clusters/: where `coincide cluster` keeps one folder per store (cluster.store_clusters_dir).


# ---------------------------------------------------------------------------------------------
# 1. Training


def _stage_rows(state: dict[str, Any] | None, log: pd.DataFrame) -> list[dict[str, Any]]:
    """One record per stage: number, name, steps, why it stopped, loss first/last, best val."""
    if state is not None:
        names = list(state.get("stages", []))
    else:
        names = list(dict.fromkeys(log["stage"].dropna().astype(str)))
    finished = {r["name"]: r for r in (state or {}).get("finished", [])}
    current = (state or {}).get("stage")
    # A run whose train_log.csv is gone (state.json alone) has an empty log without columns.
    log = log.reindex(columns=[*log.columns, *({"stage_step", "total"} - set(log.columns))])
    records = []
    for stage_number, name in enumerate(names, start=1):
        rows = log[log["stage"] == name]
        train = rows[rows["split"] == "train"]["total"].dropna()
        val = rows[rows["split"] == "val"]["total"].dropna()
        if name in finished:
            steps, stopped = finished[name]["steps"], finished[name]["stopped"]
        elif name == current:
            steps, stopped = (state or {}).get("stage_step", 0), "in progress"
        elif state is None and len(rows):
            steps, stopped = int(rows["stage_step"].max()), "unknown (no state.json)"
        else:
            steps, stopped = 0, "not started"
        records.append(
            {
                "number": stage_number,
                "name": name,
                "steps": steps,
                "stopped": stopped,
                "finished": name in finished,
                "first": float(train.iloc[0]) if len(train) else None,
                "last": float(train.iloc[-1]) if len(train) else None,
                "best_val": float(val.min()) if len(val) else None,
                "logged": len(rows) > 0,
                # The evidence behind the memorization warning training printed, if it did.
                "overfitting": finished.get(name, {}).get("overfitting"),
            }
        )
    return records


def _loss_curve(run: Path, record: dict[str, Any], pictures: Pictures) -> str:
    """The stage's loss-curve picture: the one training wrote when the stage finished, else
    plotted now from train_log.csv (into RUN/plots/, where training puts it)."""
    name = f"stage{record['number']}_{record['name']}.png"
    written = run / PLOTS_DIR / name
    if not (record["finished"] and written.is_file()):
        plotted = plot_stage(run, record["number"], record["name"])
        if plotted is None:
            return ""
        written = plotted
    return pictures.image(
        pictures.copy(written, f"training_{name}"), f"loss curves of stage {record['name']}"
    )


def _qbe_curve(run: Path, pictures: Pictures) -> str:
    """The held-out QbE mAP against the training step, from RUN/eval_curve.csv."""
    curve = read_curve(run / CURVE_FILE)
    if not curve:
        return missing(
            f"the held-out QbE curve ({run / CURVE_FILE})",
            f"coincide train {printable(run)} --store STORE --test-store TEST_STORE --eval-every N",
        )
    steps = [row["step"] for row in curve]
    maps = [row["qbe_map"] for row in curve]
    path = pictures.path("training_qbe_curve.png")
    with pyplot() as plt:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot(steps, maps, "o-")
        ax.set_xlabel("step")
        ax.set_ylabel("held-out QbE mAP")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
    best = int(np.argmax(maps))
    return (
        "<h3>Held-out query-by-example mAP</h3>\n"
        f"<p>{len(curve)} measurements; last {maps[-1]:.4f} at step {steps[-1]:.0f}, "
        f"best {maps[best]:.4f} at step {steps[best]:.0f}.</p>\n"
        + pictures.image(path, "held-out QbE mAP against step")
    )


def _metrics(run: Path) -> str:
    """RUN/eval/metrics.json as tables: its single values, then each per-class mapping."""
    metrics = read_metrics(run)
    if metrics is None:
        return missing(
            f"the evaluation ({run / EVAL_DIR / METRICS_FILE})",
            f"coincide evaluate {printable(run)} --test-store TEST_STORE",
        )
    parts = ["<h3>Evaluation (coincide evaluate)</h3>", key_table(metrics)]
    for key, mapping in metrics.items():
        if isinstance(mapping, dict):
            rows = [[name, value] for name, value in sorted(mapping.items())]
            parts += [f"<h4>{text(human_title(key))}</h4>", table(["class", "value"], rows, {1})]
    return "\n".join(parts)


def _started_from(run: Path) -> str:
    """Where f started when the run was trained with --init-from (RUN/init_from.json)."""
    record = read_record(run)
    if record is None:
        return ""
    return (
        f"<p>The audio encoder f started from <code>{text(record['source'])}</code> "
        f"(--init-from, {text(record['tensors'])} tensors) and was adapted by coincidence.</p>"
    )


def training_section(run: Path, pictures: Pictures) -> str:
    """Section 1 (HTML): stage summary, loss curves per stage, QbE curve, evaluation."""
    state = read_json_or_none(run / STATE_FILE, RERUN)
    log = read_log(run)
    if state is None and log.empty:
        parts = [
            missing(
                f"the training record ({run / STATE_FILE} and train_log.csv)",
                f"coincide train {printable(run)} --store STORE",
            )
        ]
    else:
        records = _stage_rows(state, log)
        where = ""
        if state is not None:
            progress = "finished" if state.get("done") else "in progress"
            where = f"<p>Step {text(state.get('step', 0))}; training {progress}.</p>"
        rows = [
            [
                r["number"],
                r["name"],
                r["steps"],
                r["stopped"],
                r["first"],
                r["last"],
                r["best_val"],
            ]
            for r in records
        ]
        header = ["#", "stage", "steps", "stopped", "first loss", "last loss", "best held-out"]
        parts = [where, _started_from(run), table(header, rows, {0, 2, 4, 5, 6})]
        parts += [
            warning(overfitting_message(r["name"], r["overfitting"]))
            for r in records
            if r["overfitting"]
        ]
        for record in records:
            if record["logged"]:
                parts.append(f"<h3>Stage {record['number']}: {text(record['name'])}</h3>")
                parts.append(_loss_curve(run, record, pictures))
    parts += [_qbe_curve(run, pictures), _metrics(run)]
    return "\n".join(p for p in parts if p)


# ---------------------------------------------------------------------------------------------
# 2. Clusters


def _clustering_folders(run: Path) -> list[Path]:
    """Every folder under RUN/clusters/ holding a complete clustering (a summary.json)."""
    base = run / CLUSTERS_DIR
    return sorted(p.parent for p in base.glob("*/summary.json")) + sorted(
        p.parent for p in base.glob("*/kmeans-*/summary.json")
    )


def _plot_sizes(sizes: np.ndarray, title: str, path: Path) -> None:
    """Cluster sizes sorted largest first against their rank, log y."""
    from matplotlib.ticker import MaxNLocator

    with pyplot() as plt:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        # One artist for any K (a bar per cluster would be slow for K = 10,000); the baseline
        # sits under the smallest possible size, 1, so the log axis can draw it.
        edges = np.arange(len(sizes) + 1) + 0.5
        ax.stairs(sizes, edges, baseline=0.8, fill=True, color="#4477aa")
        ax.set_yscale("log")
        ax.set_ylim(bottom=0.8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("cluster rank (largest first)")
        ax.set_ylabel("windows in cluster")
        ax.set_title(literal(title))
        ax.grid(axis="y", which="both", alpha=0.3)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)


def clusters_section(run: Path, pictures: Pictures) -> str:
    """Section 2 (HTML): per clustering, active clusters of K and the sorted cluster sizes."""
    folders = _clustering_folders(run)
    if not folders:
        return missing(
            f"a clustering ({run / CLUSTERS_DIR}/STORE/summary.json)",
            f"coincide cluster {printable(run)} --store STORE",
        )
    parts = []
    for folder in folders:
        summary = read_json_or_none(folder / SUMMARY_FILE, RERUN)
        name = folder.relative_to(run / CLUSTERS_DIR).as_posix()
        sizes = np.sort(pd.read_csv(folder / SIZES_FILE)["size"].to_numpy())[::-1]
        title = f"{name}: {summary['active_clusters']} active of K = {summary['K']}"
        parts.append(f"<h3>{text(name)}</h3>")
        parts.append(
            f"<p>{text(summary['windows'])} windows in <b>{text(summary['active_clusters'])}"
            f"</b> active clusters of K = {text(summary['K'])}; largest "
            f"{text(summary['largest_cluster'])}, median {number(summary['median_cluster'])} "
            "windows.</p>"
        )
        if len(sizes):
            path = pictures.path(f"clusters_{name.replace('/', '_')}.png")
            _plot_sizes(sizes, title, path)
            parts.append(pictures.image(path, f"cluster sizes of {name}"))
        histogram = summary.get("size_histogram", {})
        if histogram:
            rows = [[size, count] for size, count in histogram.items() if count]
            parts.append(table(["windows per cluster", "active clusters"], rows, {1}))
    return "\n".join(parts)


# ---------------------------------------------------------------------------------------------
# 3. Embeddings


def embeddings_section(
    run: Path,
    store_path: Path | None,
    pictures: Pictures,
    projection: Projection = "pca",
    map_windows: int = DEFAULT_MAP_WINDOWS,
    seed: int = 0,
) -> str:
    """Section 3 (HTML): the 2-D map of f(x) for a seeded sample of the store's windows."""
    checkpoint = run / CHECKPOINTS_DIR / BEST_CHECKPOINT
    if not checkpoint.is_file():  # a run trained before best.pt existed
        checkpoint = run / CHECKPOINTS_DIR / LAST_CHECKPOINT
    if store_path is None:
        return missing(
            "a test store to map (no --test-store given)",
            "coincide ingest MEDIA --store TEST_STORE --labels LABELS.csv",
            "Then pass --test-store TEST_STORE to coincide report.",
        )
    if not checkpoint.is_file():
        return missing(
            f"the run's encoder ({checkpoint})", f"coincide train {printable(run)} --store STORE"
        )
    store = open_store(store_path)
    if len(store) < 3:
        return missing(
            f"windows to map ({store_path} holds {len(store)})",
            f"coincide ingest MEDIA --store {printable(store_path)}",
        )
    # -- sample, embed, project
    positions = cap_windows(len(store), map_windows, seed)
    device = default_device()
    encoder = load_models(checkpoint, map_location=device)["audio"]
    embeddings = embed_positions(encoder, store, positions, device=device)
    points = project_2d(embeddings, projection, seed)
    window_labels = store.index["labels"].tolist()
    classes = first_labels([window_labels[i] for i in positions])
    # -- draw
    method = "PCA" if projection == "pca" else "t-SNE"
    path = pictures.path(f"embeddings_{projection}.png")
    title = f"{method} of f(x): {len(positions)} windows of {Path(store_path).name}"
    legend = plot_map(points, classes, title, path)
    counts = pd.Series(classes).value_counts()
    rows = [[name, int(counts[name])] for name in legend]
    return "\n".join(
        [
            f"<p>{len(positions)} of {len(store)} windows of <code>{text(store_path)}</code> "
            f"(seeded sample, seed {seed}), embedded with <code>{text(checkpoint)}</code>, "
            f"length-normalised and mapped to 2-D with {method}; each point is coloured by the "
            f"first label of its clip ({len(legend)} classes).</p>",
            pictures.image(path, f"{method} map of the embeddings coloured by class"),
            table(["class", "windows on the map"], rows, {1}),
        ]
    )


# ---------------------------------------------------------------------------------------------
# 4. Table 3


def table3_section(run: Path, table3_dir: Path | None, pictures: Pictures) -> str:
    """Section 4 (HTML): DIR/table3.md rendered (or table3.csv when there is no .md), and the
    mAP-against-budget plot."""
    command = (
        f"coincide reproduce table3 {printable(run)} --store TRAIN_STORE "
        "--test-store TEST_STORE --budget 5,20 --out DIR"
    )
    if table3_dir is None:
        return missing(
            "a Table 3 folder (no --table3 given)",
            command,
            "Then pass --table3 DIR to coincide report.",
        )
    md, csv, png = (table3_dir / f"table3.{ext}" for ext in ("md", "csv", "png"))
    shown: set[str] = set()

    def image(src: str, alt: str) -> str:  # inline: markdown puts it in a paragraph
        source = (table3_dir / src).resolve()
        # Only pictures inside DIR: the page must not copy files from elsewhere.
        if not source.is_file() or not source.is_relative_to(table3_dir.resolve()):
            return f'<span class="missing">Missing picture: {text(table3_dir / src)}.</span>'
        shown.add(source.name)
        return pictures.img(pictures.copy(source, f"table3_{source.name}"), alt)

    if md.is_file():
        body = markdown_to_html(md.read_text(encoding="utf-8"), image)
    elif csv.is_file():
        body = pd.read_csv(csv).to_html(
            escape=True, index=False, na_rep="n/a", float_format=lambda v: f"{v:.3f}", border=0
        )
    else:
        return missing(f"Table 3 ({md} or {csv})", command.replace("DIR", printable(table3_dir)))
    if png.is_file() and png.name not in shown:
        body += f"\n<p>{image(png.name, 'mAP against label budget')}</p>"
    return body


# ---------------------------------------------------------------------------------------------
# The page

PAGE_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 70em; }
table { border-collapse: collapse; margin: 0.5em 0 1em; }
th, td { padding: 0.25em 0.8em; border-bottom: 1px solid #ddd; text-align: left; }
.num { text-align: right; font-variant-numeric: tabular-nums; }
.missing { color: #a00; }
.warning { color: #850; background: #fff6e0; padding: 0.4em 0.6em; }
img { max-width: 100%; }
code { background: #f4f4f4; padding: 0 0.2em; }
"""

SECTIONS = ("Training", "Clusters", "Labels", "Fine-tuning", "Embeddings", "Table 3")


def _anchor(name: str) -> str:
    return "".join(c for c in name.lower() if c.isalnum())


def write_report(
    run: Path,
    out: Path,
    store: Path | None = None,
    table3: Path | None = None,
    projection: Projection = "pca",
    map_windows: int = DEFAULT_MAP_WINDOWS,
    seed: int = 0,
    settings: StageSettings | None = None,
) -> Path:
    """Write the report page `out` and its pictures (`<out stem>_files/`); returns `out`.

    Args:
        run: the run folder (from `coincide train`).
        out: the HTML file to write.
        store: a labeled test store for the embedding map (None: the section says so).
        table3: the --out folder of `coincide reproduce table3` (None: the section says so).
        projection: "pca" or "tsne" for the embedding map.
        map_windows: at most this many windows on the map (a seeded sample).
        seed: seeds the sample and the projection.
        settings: the command's settings, kept in the page (`StageSettings.html_script`).
    """
    run, out = Path(run), Path(out)
    pictures = Pictures(out)
    bodies = [
        training_section(run, pictures),
        clusters_section(run, pictures),
        labels_section(run),
        finetune_section(run, pictures),
        embeddings_section(run, store, pictures, projection, map_windows, seed),
        table3_section(run, Path(table3) if table3 is not None else None, pictures),
    ]
    sections = "\n".join(
        f'<h2 id="{_anchor(name)}">{html.escape(name)}</h2>\n{body}'
        for name, body in zip(SECTIONS, bodies, strict=True)
    )
    contents = " · ".join(
        f'<a href="#{_anchor(name)}">{html.escape(name)}</a>' for name in SECTIONS
    )
    title = f"coincide report: {run.resolve().name}"
    page = f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{text(title)}</title>
<style>{PAGE_STYLE}</style>
</head>
<body>
<h1>{text(title)}</h1>
<p>Run <code>{text(run)}</code>. {contents}</p>
{sections}
{settings.html_script() if settings is not None else ""}
</body>
</html>
"""
    with atomic_output(out) as stream:
        stream.write(page)
    pictures.prune()
    return out


@dataclass(frozen=True)
class ReportSettings(StageSettings):
    """`coincide report`: the run, a labeled test store for the embedding map, the folder of
    `reproduce table3`, the page to write (`html`, None: RUN/report.html), the map's projection,
    windows and seed. Kept in the page."""

    command: ClassVar[str] = "report"
    run: Path
    test_store: Path | None = None
    table3: Path | None = None
    html: Path | None = None
    projection: str = "pca"
    map_windows: int = DEFAULT_MAP_WINDOWS
    seed: int = 0


def run(settings: ReportSettings) -> Path:
    """The `coincide report` command: check the arguments, write the page, print its path."""
    run_dir, store, table3 = Path(settings.run), settings.test_store, settings.table3
    map_windows = settings.map_windows
    if not run_dir.is_dir():
        raise UserError(
            f"run folder {run_dir} does not exist; give a run folder (from `coincide train`)."
        )
    out = Path(settings.html) if settings.html is not None else run_dir / REPORT_FILE
    if out.suffix.lower() not in (".html", ".htm"):
        raise UserError(f"--html {printable(out)} must end in .html; rename it.")
    if store is not None and not Path(store).is_dir():
        raise UserError(
            f"--test-store {printable(store)} is not a feature store folder; fix the path."
        )
    if table3 is not None and not Path(table3).is_dir():
        raise UserError(
            f"--table3 {printable(table3)} is not a folder; give the --out folder of "
            "`coincide reproduce table3`."
        )
    if map_windows < 3:
        raise UserError(f"--map-windows {map_windows} is too few; a map needs at least 3.")
    projection = cast(Projection, settings.projection)
    path = write_report(
        run_dir, out, store, table3, projection, map_windows, settings.seed, settings
    )
    print(f"report: {printable(path)}")
    return path
