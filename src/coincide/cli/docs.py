"""docs/cli.md, the command-line reference, generated from the parsers of `coincide.cli.commands`.

    python -m coincide.cli.docs [docs/cli.md]          rewrite the page
    python -m coincide.cli.docs --check [docs/cli.md]  exit 1 when the page is not current

The page's head (its title and the vocabulary rules, everything above `MARKER`) is written by
hand and kept; below it, one section per command: its help, a usage line and a table of its
arguments and options with their values, defaults and help. tests/test_cli.py fails when the
page is not what this module generates, so the reference cannot drift from the parser.
"""

from __future__ import annotations

import inspect
import sys
import types
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

MARKER = "<!-- Generated below by `python -m coincide.cli.docs`; edit the parsers, not this. -->"
DEFAULT_PAGE = Path("docs/cli.md")
TYPE_NAMES = {Path: "PATH", int: "INT", float: "FLOAT", str: "TEXT", bool: ""}


def _value(annotation: Any) -> str:
    """What an option takes, from its annotation: `head | kmeans`, PATH, INT FLOAT, ..."""
    origin = get_origin(annotation)
    if origin is Literal:
        return " | ".join(str(choice) for choice in get_args(annotation))
    if origin in (Union, types.UnionType):
        return " ".join(_value(arg) for arg in get_args(annotation) if arg is not type(None))
    if origin in (list, tuple):
        return " ".join(_value(arg) for arg in get_args(annotation) if arg is not Ellipsis)
    return TYPE_NAMES.get(annotation, getattr(annotation, "__name__", str(annotation)).upper())


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|") if text else ""


def _row(param: Any) -> str:
    annotation = param.type_descriptor.annotation
    if param.param_type_name == "argument":
        name = param.name.upper() + ("..." if param.nargs == -1 else "")
    else:
        name = ", ".join(param.opts)
        if param.secondary_opts:
            name += " / " + ", ".join(param.secondary_opts)
    value = _value(annotation)
    if param.multiple:
        value += " (repeatable)"
    limits = [f">= {param.min}" if getattr(param, "min", None) is not None else ""]
    limits.append(f"<= {param.max}" if getattr(param, "max", None) is not None else "")
    value = " ".join([value, *filter(None, limits)]).strip()
    if param.required:
        default = "required"
    elif param.default is None or param.default is False or param.default in ((), []):
        default = ""
    elif isinstance(param.default, (list, tuple)):
        default = " ".join(str(v) for v in param.default)
    else:
        default = str(param.default)
    help_text = getattr(param, "help", None) or ""
    cells = [f"`{name}`", _cell(value), _cell(f"`{default}`" if default else ""), _cell(help_text)]
    return "| " + " | ".join(cells) + " |"


def _usage(path: str, command: Any) -> str:
    arguments = []
    for param in command.params:
        if param.param_type_name == "argument":
            shown = param.name.upper() + ("..." if param.nargs == -1 else "")
            arguments.append(shown if param.required else f"[{shown}]")
    return " ".join([f"coincide {path}", *arguments, "[OPTIONS]"])


def _commands(group: Any, ctx: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """(path, command) of every command under a group, in the order `--help` lists them."""
    found = []
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        if command is None or command.hidden:
            continue
        path = f"{prefix}{name}"
        if hasattr(command, "list_commands"):
            found += _commands(command, ctx, f"{path} ")
        else:
            found.append((path, command))
    return found


def generate(head: str) -> str:
    """The whole page: `head` (up to the marker), then the reference of every command."""
    import typer
    import typer.main

    from coincide.cli.commands import app

    root = typer.main.get_command(app)
    ctx = typer.Context(root, info_name="coincide")
    lines = [head.rstrip(), "", MARKER, ""]
    for path, command in _commands(root, ctx):
        lines += [f"## coincide {path}", ""]
        lines += [inspect.cleandoc(command.help or ""), ""]
        lines += ["```", _usage(path, command), "```", ""]
        rows = [_row(p) for p in command.params if p.name != "help" and not p.hidden]
        if rows:
            lines += ["| Argument / option | Value | Default | Meaning |", "|---|---|---|---|"]
            lines += [*rows, ""]
    return "\n".join(lines).rstrip() + "\n"


def page_head(text: str) -> str:
    """The hand-written part of a page: everything above the marker (all of it without one)."""
    return text.split(MARKER, 1)[0]


def main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m coincide.cli.docs", description="Write the CLI reference page."
    )
    parser.add_argument("page", nargs="?", type=Path, default=DEFAULT_PAGE)
    parser.add_argument("--check", action="store_true", help="exit 1 when the page is stale")
    args = parser.parse_args(argv)
    check, page = args.check, args.page
    current = page.read_text(encoding="utf-8") if page.is_file() else "# Command line\n"
    wanted = generate(page_head(current))
    if check:
        if wanted != current:
            print(f"{page} is not current; run `python -m coincide.cli.docs {page}`.")
            return 1
        return 0
    page.parent.mkdir(parents=True, exist_ok=True)
    page.write_text(wanted, encoding="utf-8")
    print(f"wrote {page}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
