"""The markdown that `coincide reproduce` writes (headings, paragraphs, pipe tables, one image
per line) as escaped HTML for the report page."""

from __future__ import annotations

import html
import re
from collections.abc import Callable

NUM_CLASS = ' class="num"'  # right-aligned table cells (see coincide.report.PAGE_STYLE)

_TABLE_SEPARATOR = re.compile(r"^\|?\s*:?-+:?\s*(\|\s*:?-+:?\s*)*\|?$")
_IMAGE = re.compile(r"^!\[(?P<alt>[^\]]*)\]\((?P<src>[^)\s]+)\)$")


def _inline(text: str) -> str:
    """Escaped text with `code` spans as <code>."""
    pieces = text.split("`")
    return "".join(
        f"<code>{html.escape(p)}</code>" if i % 2 else html.escape(p) for i, p in enumerate(pieces)
    )


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def _markdown_table(lines: list[str]) -> str:
    """A pipe table (header, alignment row, body) as HTML; `---:` columns right-aligned."""
    header = _cells(lines[0])
    body = lines[1:]
    right: set[int] = set()
    if body and _TABLE_SEPARATOR.match(body[0].strip()):
        right = {i for i, spec in enumerate(_cells(body[0])) if spec.endswith(":")}
        body = body[1:]

    def row(tag: str, cells: list[str]) -> str:
        return (
            "<tr>"
            + "".join(
                f"<{tag}{NUM_CLASS if i in right else ''}>{_inline(c)}</{tag}>"
                for i, c in enumerate(cells)
            )
            + "</tr>"
        )

    return "\n".join(
        ["<table>", row("th", header), *(row("td", _cells(b)) for b in body), "</table>"]
    )


def markdown_to_html(text: str, image: Callable[[str, str], str]) -> str:
    """The markdown that `coincide reproduce` writes (headings, paragraphs, pipe tables, one
    image per line) as HTML; every piece of text is escaped.

    Args:
        text: the markdown.
        image: called with `(src, alt)` for an image line; returns its HTML.
    """
    blocks: list[list[str]] = [[]]
    for line in text.splitlines():
        if line.strip():
            blocks[-1].append(line.rstrip())
        elif blocks[-1]:
            blocks.append([])
    parts = []
    for block in (b for b in blocks if b):
        if all(line.lstrip().startswith("|") for line in block):
            parts.append(_markdown_table(block))
            continue
        paragraph: list[str] = []
        for line in [*block, ""]:
            heading = re.match(r"^(#{1,6})\s+(.*)$", line)
            picture = _IMAGE.match(line.strip())
            if (heading or picture or not line) and paragraph:
                parts.append(f"<p>{_inline(' '.join(paragraph))}</p>")
                paragraph = []
            if heading:
                level = min(len(heading.group(1)) + 2, 6)  # below the page's own h1/h2
                parts.append(f"<h{level}>{_inline(heading.group(2))}</h{level}>")
            elif picture:
                parts.append(image(picture.group("src"), picture.group("alt")))
            elif line:
                paragraph.append(line.strip())
    return "\n".join(parts)
