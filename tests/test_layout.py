"""The rules of the package layout (docs/architecture.md), checked on the source itself."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "coincide"
BELOW_STAGES = (
    "media", "store", "config", "data", "models", "train", "evaluation", "classifier",
    "labeling", "labelui", "benchdata",
)  # fmt: skip


def _modules() -> dict[str, Path]:
    found = {}
    for path in SRC.rglob("*.py"):
        parts = path.relative_to(SRC).with_suffix("").parts
        name = ".".join(("coincide", *parts)).removesuffix(".__init__")
        found[name] = path
    return found


def _imports(path: Path, runtime_only: bool = True) -> set[str]:
    """The coincide modules `path` imports, at module level or inside functions; imports under
    `if TYPE_CHECKING:` are left out when `runtime_only`."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped: set[int] = set()
    if runtime_only:
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                skipped |= {id(n) for child in node.body for n in ast.walk(child)}
    names = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("coincide"):
            names |= {f"{node.module}.{alias.name}" for alias in node.names} | {node.module}
        elif isinstance(node, ast.Import):
            names |= {a.name for a in node.names if a.name.startswith("coincide")}
    return names


MODULES = _modules()
GRAPH = {name: _imports(path) & MODULES.keys() for name, path in MODULES.items()}


def test_no_import_circles_at_run_time() -> None:
    def reach(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for nxt in GRAPH[todo.pop()]:
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    # A package's __init__ importing its own submodules is not a circle of modules.
    circles = sorted(
        name for name in GRAPH if name in reach(name) and MODULES[name].name != "__init__.py"
    )
    assert circles == []


@pytest.mark.parametrize("package", BELOW_STAGES)
def test_nothing_below_the_stages_imports_a_stage(package: str) -> None:
    offending = {
        name: sorted(
            i
            for i in GRAPH[name]
            if i.startswith(
                ("coincide.stages", "coincide.experiments", "coincide.report", "coincide.cli")
            )
        )
        for name in GRAPH
        if name.startswith(f"coincide.{package}")
    }
    assert {k: v for k, v in offending.items() if v} == {}


def test_training_does_not_import_evaluation() -> None:
    offending = {
        name: sorted(i for i in GRAPH[name] if i.startswith("coincide.evaluation"))
        for name in GRAPH
        if name.startswith("coincide.train")
    }
    assert {k: v for k, v in offending.items() if v} == {}


def test_modules_stay_small_and_few_at_the_top() -> None:
    long = {
        str(p.relative_to(SRC)): n
        for p in MODULES.values()
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > 600
    }
    assert long == {}
    assert len(list(SRC.glob("*.py"))) <= 8
