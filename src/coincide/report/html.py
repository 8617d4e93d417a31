"""The pieces of `coincide report`'s page: escaped text and tables, "missing" notes, human titles
for the keys of the JSON files it shows, the pictures folder, and markdown rendered with
markdown-it-py (the markdown `coincide reproduce` writes).

Every piece of text that comes from a file or a name is escaped; markdown is parsed with raw
HTML off, so a class named like a tag shows as text.
"""

from __future__ import annotations

import html
import re
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import numpy as np

from coincide.console import printable

NUM_CLASS = ' class="num"'  # right-aligned table cells (see coincide.report.page.PAGE_STYLE)

# What the keys of the JSON files on the page mean (RUN/eval/metrics.json, a fine-tuning's
# metrics.json, a labeling session's summary.json); keys not listed get `human_title`'s guess.
TITLES = {
    "representation": "Representation",
    "embed_dim": "Embedding size d",
    "test_store": "Test store",
    "test_windows": "Labeled test windows",
    "test_clips": "Test clips",
    "qbe_map": "QbE retrieval mAP (pairs within one media left out)",
    "qbe_classes": "Classes scored by QbE",
    "qbe_per_class": "QbE AP per class",
    "qbe_map_same_media": "QbE retrieval mAP, same-media pairs counted (old definition)",
    "qbe_classes_same_media": "Classes scored, same-media pairs counted",
    "clip_qbe_map": "Clip QbE retrieval mAP (one mean embedding per media)",
    "clip_qbe_classes": "Classes scored by clip QbE",
    "qbe_seed": "QbE seed",
    "shallow_map": "Shallow classifier mAP",
    "shallow_split": "Shallow classifier data",
    "shallow_train_windows": "Shallow classifier training windows",
    "shallow_test_windows": "Shallow classifier test windows",
    "shallow_seed": "Shallow classifier seed",
    "seconds": "Seconds taken",
    "run": "Run",
    "mAP": "Clip-level mAP",
    "d_prime": "d′ (from the mean ROC AUC)",
    "strategy": "Strategy",
    "session": "Labeling session",
    "budget": "Label budget",
    "labeled_windows": "Labeled windows",
    "classes": "Classes",
    "multilabel": "Multi-label (a sigmoid per class)",
    "steps": "Training steps",
    "test_classes": "Test classes",
    "untrained_classes": "Test classes never labeled (constant score)",
    "requests": "Clusters asked",
    "answered": "Answered",
    "asked_now": "Answered by the oracle in the last command",
    "label_precision": "Label precision",
    "label_recall": "Label recall",
}
_WORDS = {"qbe": "QbE", "map": "mAP", "ap": "AP", "auc": "AUC"}


def human_title(key: str) -> str:
    """The title of a JSON key: `TITLES`, else the words of the key (`clip_qbe_map` -> `Clip
    QbE mAP`)."""
    if key in TITLES:
        return TITLES[key]
    words = [_WORDS.get(word, word) for word in key.split("_") if word]
    title = " ".join(words) or key
    return title[0].upper() + title[1:]


def text(value: Any) -> str:
    """Any value as escaped HTML text (paths with undecodable bytes stay printable)."""
    return html.escape(printable(value) if isinstance(value, Path) else str(value))


def number(value: Any) -> str:
    """A cell: floats with 4 significant digits, None as n/a, lists joined, the rest as text."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return text(", ".join(str(v) for v in value))
    return text(value)


def table(
    header: Sequence[str], rows: Sequence[Sequence[Any]], numeric: set[int] | None = None
) -> str:
    """An HTML table; every cell is escaped, the `numeric` columns are right-aligned."""
    numeric = numeric or set()

    def cell(tag: str, i: int, value: Any) -> str:
        return f"<{tag}{NUM_CLASS if i in numeric else ''}>{number(value)}</{tag}>"

    head = "".join(cell("th", i, h) for i, h in enumerate(header))
    body = "".join(
        "<tr>" + "".join(cell("td", i, v) for i, v in enumerate(row)) + "</tr>\n" for row in rows
    )
    return f"<table>\n<tr>{head}</tr>\n{body}</table>"


def key_table(mapping: dict[str, Any]) -> str:
    """The single values of a JSON mapping as a two-column table with human titles, in the
    order of `TITLES` (the headline figures first), keys it does not know last."""
    order = {key: i for i, key in enumerate(TITLES)}
    keys = sorted(
        (k for k, v in mapping.items() if not isinstance(v, dict)),
        key=lambda k: order.get(k, len(order)),
    )
    return table(["", "value"], [[human_title(k), mapping[k]] for k in keys])


def missing(what: str, command: str, then: str = "") -> str:
    """A note that an input is missing, the command that makes it, and what to do `then`."""
    after = f" {text(then)}" if then else ""
    return (
        f'<p class="missing">Missing: {text(what)}. Make it with '
        f"<code>{text(command)}</code>.{after}</p>"
    )


def warning(message: str) -> str:
    """A warning paragraph (the page's version of a console warning)."""
    return f'<p class="warning"><b>Warning:</b> {text(message)}</p>'


class Pictures:
    """The PNG files of one page: kept in `<page stem>_files/`, linked relatively.

    `path(name)` gives where to write a picture; `image(path, alt)` the paragraph showing it.
    """

    def __init__(self, page: Path) -> None:
        self.page_dir = page.parent
        self.folder = page.with_name(f"{page.stem}_files")
        self.written: set[Path] = set()

    def path(self, name: str) -> Path:
        """Where to write the picture called `name` (characters unsafe in file names become
        `_`, so class or store names cannot leave the folder)."""
        safe = re.sub(r"[^A-Za-z0-9._-]", "_", name).lstrip(".") or "picture"
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / safe
        self.written.add(path)
        return path

    def copy(self, source: Path, name: str) -> Path:
        """Copy a picture another command wrote into the folder; returns the copy."""
        target = self.path(name)
        shutil.copyfile(source, target)
        return target

    def img(self, path: Path, alt: str) -> str:
        """The <img> tag of a picture of this page, by its path relative to the page."""
        source = quote(path.relative_to(self.page_dir).as_posix())
        return f'<img src="{html.escape(source)}" alt="{text(alt)}">'

    def image(self, path: Path, alt: str) -> str:
        """The picture as a paragraph of its own."""
        return f"<p>{self.img(path, alt)}</p>"

    def prune(self) -> None:
        """Remove the pictures of an earlier report that this one did not write."""
        if self.folder.is_dir():
            for old in self.folder.glob("*.png"):
                if old not in self.written:
                    old.unlink()


def markdown_to_html(markdown: str, image: Callable[[str, str], str]) -> str:
    """Markdown (CommonMark with pipe tables) as HTML for the page, with markdown-it-py.

    Raw HTML in the markdown is escaped, not passed through. Headings move two levels down
    (below the page's own h1 and h2); right-aligned table columns (`---:`) get the page's
    `num` class instead of an inline style.

    Args:
        markdown: the text.
        image: called with `(src, alt)` for each image (src as written, percent-decoded);
            returns the inline HTML that shows it.
    """
    from markdown_it import MarkdownIt

    parser = MarkdownIt("commonmark", {"html": False}).enable("table")
    tokens = parser.parse(markdown)
    for token in tokens:
        if token.type in ("heading_open", "heading_close"):
            token.tag = f"h{min(int(token.tag[1]) + 2, 6)}"
        elif token.type in ("th_open", "td_open") and token.attrGet("style") == "text-align:right":
            token.attrs.pop("style")
            token.attrSet("class", "num")

    def render_image(renderer: Any, tokens: list[Any], idx: int, options: Any, env: Any) -> str:
        token = tokens[idx]
        alt = renderer.renderInlineAsText(token.children or [], options, env)
        return image(unquote(str(token.attrGet("src"))), alt)

    parser.add_render_rule("image", render_image)
    return parser.renderer.render(tokens, parser.options, {})
