"""`coincide search`: the windows of a store nearest to an example (`coincide.models.search_index`),
shown as a table, CSV or JSON on stdout, and an HTML page with a player per hit (short WAV
excerpts next to the page, so it plays offline)."""

from __future__ import annotations

import csv
import html
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import quote

from rich.console import Console
from rich.table import Table

from coincide.config.stage import StageSettings
from coincide.console import print_table, printable, say
from coincide.errors import MediaError, UserError
from coincide.files import atomic_output
from coincide.media.wav import write_wav
from coincide.models.inference import load_model
from coincide.models.search_index import (
    EXCERPT_CONTEXT_S,
    WINDOW_S,
    Hit,
    Query,
    parse_query,
    read_excerpt,
    search,
)
from coincide.store.features import open_store

HIT_COLUMNS = ["rank", "window", "media_path", "time_s", "distance", "labels"]


def title_of(query: Query, exclude_same_media: bool) -> str:
    """The heading of a search's results, saying which windows were left out."""
    if exclude_same_media:
        return f"Nearest windows to {query.describe()} (windows of the same media left out)"
    if query.window is not None or query.seconds is not None:
        return f"Nearest windows to {query.describe()} (its own window left out)"
    return f"Nearest windows to {query.describe()}"


def print_hits(
    hits: list[Hit], title: str, fmt: str, settings: dict[str, Any] | None = None
) -> None:
    """The hits on stdout: a table (`table`), one CSV row per hit with labels joined by ";"
    (`csv`), or {"title", "hits": [...], "settings"} (`json`, with `settings` when given)."""
    if fmt == "csv":
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(HIT_COLUMNS)
        for hit in hits:
            row = [hit.rank, hit.window, printable(hit.media_path), f"{hit.time_s:g}"]
            writer.writerow([*row, f"{hit.distance:.6g}", ";".join(hit.labels)])
    elif fmt == "json":
        rows = [
            {
                "rank": hit.rank,
                "window": hit.window,
                "media_path": printable(hit.media_path),
                "time_s": hit.time_s,
                "distance": round(hit.distance, 6),
                "labels": list(hit.labels),
            }
            for hit in hits
        ]
        document = {"title": title, "hits": rows, **({"settings": settings} if settings else {})}
        sys.stdout.write(json.dumps(document, indent=1) + "\n")
    else:
        print_table(hits_table(hits, title))


def hits_table(hits: list[Hit], title: str) -> Table:
    table = Table(title=title)
    table.add_column("#", justify="right")
    table.add_column("media")
    table.add_column("time (s)", justify="right")
    table.add_column("distance", justify="right")
    if any(hit.labels for hit in hits):
        table.add_column("labels")
    for hit in hits:
        row = [str(hit.rank), printable(hit.media_path), f"{hit.time_s:.2f}", f"{hit.distance:.4g}"]
        if any(h.labels for h in hits):
            row.append(", ".join(hit.labels))
        table.add_row(*row)
    return table


def _excerpt_cell(media: Path, start_s: float, wav: Path, page_dir: Path) -> str:
    """An <audio> player for an excerpt written to `wav`, or why there is none (HTML)."""
    from coincide.media.frontend import SAMPLE_RATE  # read_excerpt's rate (torch: imported late)

    begin = max(0.0, start_s - EXCERPT_CONTEXT_S)
    try:
        samples = read_excerpt(media, begin, start_s + WINDOW_S + EXCERPT_CONTEXT_S - begin)
    except MediaError as err:
        return f'<span class="missing">cannot play: {html.escape(str(err))}</span>'
    write_wav(wav, samples, SAMPLE_RATE)
    source = quote(wav.relative_to(page_dir).as_posix())
    return f'<audio controls preload="none" src="{html.escape(source)}"></audio>'


PAGE_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; }
th, td { padding: 0.3em 0.8em; border-bottom: 1px solid #ddd; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.missing { color: #a00; }
"""


def write_page(
    out: Path,
    query: Query,
    query_media: tuple[Path, float] | None,
    hits: list[Hit],
    title: str,
    settings: SearchSettings,
) -> None:
    """The HTML page of a search: the query's player, then one row and player per hit; the
    settings that made it in a `<script type="application/json" id="settings">` element."""
    files = out.with_name(f"{out.stem}_files")
    files.mkdir(parents=True, exist_ok=True)
    page_dir = out.parent
    rows = []
    for hit in hits:
        player = _excerpt_cell(
            Path(hit.media_path), hit.time_s, files / f"hit{hit.rank:03d}.wav", page_dir
        )
        rows.append(
            "<tr>"
            f'<td class="num">{hit.rank}</td>'
            f"<td>{html.escape(printable(hit.media_path))}</td>"
            f'<td class="num">{hit.time_s:.2f}</td>'
            f'<td class="num">{hit.distance:.4g}</td>'
            f"<td>{html.escape(', '.join(hit.labels))}</td>"
            f"<td>{player}</td>"
            "</tr>"
        )
    query_player = ""
    if query_media is not None:
        media, start_s = query_media
        query_player = _excerpt_cell(media, start_s, files / "query.wav", page_dir)
        if query.window is not None:  # say which media the store window is
            where = f"{printable(media)} at {start_s:.2f} s"
            query_player = f"({html.escape(where)}) {query_player}"
    body = f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{html.escape(title)}</title>
<style>{PAGE_STYLE}</style>
</head>
<body>
<h1>{html.escape(title)}</h1>
<p>Query: {html.escape(query.describe())} {query_player}</p>
<p>Distance: cosine distance between embeddings (0 = same direction). Each player plays the
0.96 s window with {EXCERPT_CONTEXT_S:g} s of context on each side.</p>
<table>
<tr><th>#</th><th>media</th><th>time (s)</th><th>distance</th><th>labels</th><th>listen</th></tr>
{chr(10).join(rows)}
</table>
{settings.html_script()}
</body>
</html>
"""
    with atomic_output(out) as stream:
        stream.write(body)


@dataclass(frozen=True)
class SearchSettings(StageSettings):
    """`coincide search`: the model, the store to search, the example (`query` MEDIA[@SECONDS]
    or a store window `query_window`), `k` hits, the HTML page to write (`html_out`), index
    lists scanned (`nprobe`, None: auto), the device, whether the query's whole media is left
    out, and what stdout shows (`fmt`). With `label_as` CLASS the hits are then put to an
    annotator as "is this a CLASS?" (`coincide.stages.search_label`: the session, label store
    `db`, the simulated `oracle` or the labeling page with `serve` at `host`:`port`). Kept in
    the page and in the JSON output."""

    command: ClassVar[str] = "search"
    model: Path
    store: Path
    query: str | None = None
    query_window: int | None = None
    k: int = 10
    html_out: Path | None = None
    nprobe: int | None = None
    device: str | None = None
    exclude_same_media: bool = False
    fmt: str = "table"
    label_as: str | None = None
    session: str | None = None
    db: Path | None = None
    oracle: str | None = None
    serve: bool = False
    host: str = "127.0.0.1"
    port: int = 8750
    annotator: str | None = None


def run(settings: SearchSettings, console: Console | None = None) -> list[Hit]:
    """The `coincide search` command: print the hits (a table, CSV or JSON on stdout),
    optionally write the page and put the hits to an annotator."""
    store_path = settings.store
    html_out = settings.html_out
    exclude_same_media = settings.exclude_same_media

    console = console or Console(stderr=True)
    query = parse_query(settings.query, settings.query_window)
    if html_out is not None and html_out.suffix.lower() not in (".html", ".htm"):
        raise UserError(f"--html {printable(html_out)} must end in .html; rename it.")
    if query.media is not None and not query.media.is_file():
        raise UserError(f"query media {printable(query.media)} does not exist; give a media file.")
    if not Path(store_path).is_dir():
        raise UserError(
            f"no feature store at {printable(store_path)}; create one with `coincide ingest`."
        )
    model = load_model(settings.model, settings.device)
    store = open_store(store_path)
    hits = search(model, store, query, settings.k, settings.nprobe, console, exclude_same_media)
    title = title_of(query, exclude_same_media)
    print_hits(hits, title, settings.fmt, settings.record())
    if html_out is not None:
        if query.window is not None:
            row = store.index.iloc[query.window]
            query_media = (Path(row["media_path"]), float(row["time_s"]))
        else:
            assert query.media is not None
            query_media = (query.media, float(math.floor(query.seconds or 0.0)))
        write_page(html_out, query, query_media, hits, title, settings)
        say(console, f"wrote {printable(html_out)}")
    if settings.label_as is not None:
        from coincide.stages.search_label import label_hits

        label_hits(settings, store, hits)
    return hits
