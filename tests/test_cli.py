"""The command line itself: --version, -h on every command, a fast, light --help, the generated
reference docs/cli.md, the old spellings, the closed choices and torchrun-safe option names."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import pytest
from typer.testing import CliRunner

from coincide.cli.commands import app


def test_version_and_short_help() -> None:
    from importlib.metadata import version

    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"coincide {version('coincide')}"
    for args in (["-h"], ["info", "-h"], ["labels", "export", "-h"], ["reproduce", "table1", "-h"]):
        shown = CliRunner().invoke(app, args)
        assert shown.exit_code == 0 and "Usage:" in shown.output, args


def test_help_imports_neither_torch_nor_pandas() -> None:
    # `coincide --help` and `-h` of any command must not wait for the heavy libraries.
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from coincide.cli.commands import app\n"
        "for args in (['--help'], ['labels', 'export', '-h'], ['train', '-h']):\n"
        "    assert CliRunner().invoke(app, args).exit_code == 0\n"
        "heavy = sorted(m for m in ('torch', 'pandas', 'pyarrow', 'librosa') if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"--help imported {out.stdout.strip()}"


def test_a_device_name_that_is_not_one_is_one_sentence() -> None:
    from coincide.dist import resolve_device
    from coincide.errors import UserError

    try:
        resolve_device("gpu")
    except UserError as err:
        assert "use auto, cpu or cuda" in str(err)
    else:
        raise AssertionError("--device gpu was accepted")


def _root() -> tuple[Any, Any]:
    import typer
    import typer.main

    root = typer.main.get_command(app)
    return root, typer.Context(root, info_name="coincide")


def _command(path: str) -> Any:
    root, ctx = _root()
    command = root
    for name in path.split():
        command = command.get_command(ctx, name)
    return command


def test_docs_cli_md_is_what_the_parser_generates() -> None:
    from coincide.cli.docs import generate, page_head

    page = Path(__file__).parents[1] / "docs" / "cli.md"
    text = page.read_text(encoding="utf-8")
    assert text == generate(page_head(text)), "run `python -m coincide.cli.docs`"
    for command in ("## coincide train", "## coincide reproduce table3", "## coincide search"):
        assert command in text
    assert "| `--method` | head \\| kmeans |  | head (p_clust) or kmeans" in text


UPGRADES = [
    (
        "train",
        "S --run R --eval-store T --eval-every 2",
        "R --store S --test-store T --eval-every 2",
    ),
    ("train", "--config small S --set a=1 --run=R", "R --store S --config small --set a=1"),
    ("info", "S", "--store S"),
    ("add-labels", "S more.csv", "--store S --labels more.csv"),
    ("make-bench", "bench --preset demo --force", "--out bench --preset demo --force"),
    ("cluster", "R --store S --k 8", "R --store S --clusters 8"),
    ("label", "R --store S --budget 3 --k=8", "R --store S --budget 3 --clusters=8"),
    ("finetune", "R --store S --out mine", "R --store S --name mine"),
    ("evaluate", "R --store T --train-store S", "R --test-store T --store S"),
    ("evaluate", "R --test-store T --train-store S", "R --test-store T --store S"),
    ("evaluate", "R --test-store T --store S", "R --test-store T --store S"),
    ("report", "R --store T --out r.html", "R --test-store T --html r.html"),
    ("predict", "R a.wav --out p.csv", "R a.wav --csv p.csv"),
    ("predict", "R a.wav --out=p.JSON", "R a.wav --json=p.JSON"),
    ("embed", "R a.wav --out e.parquet", "R a.wav --parquet e.parquet"),
    (
        "reproduce table1",
        "--train-store S --test-store T --out o --rows a,b --seeds 0,1",
        "--store S --test-store T --out o --row a,b --seed 0,1",
    ),
    (
        "reproduce table2",
        "--run R1 --run R2 --store S --out o --k 4 --budgets 2",
        "R1 R2 --store S --out o --clusters 4 --budget 2",
    ),
    (
        "reproduce table3",
        "--run R --train-store S --test-store T --budgets 5,20 --out o --k 9",
        "R --store S --test-store T --budget 5,20 --out o --clusters 9",
    ),
]


@pytest.mark.parametrize(("command", "old", "new"), UPGRADES)
def test_old_spellings_become_the_new_ones_with_a_note(command, old, new, capsys) -> None:
    from coincide.cli.vocab import upgrade

    assert upgrade(command, old.split(), _command(command)) == new.split()
    notes = capsys.readouterr().err.strip().splitlines()
    changed = old != new
    assert len(notes) >= changed and all(n.startswith("note: `coincide ") for n in notes)
    assert all(n.endswith("the old spelling works until the next release.") for n in notes)
    # The new spelling is left as it is, silently.
    assert upgrade(command, new.split(), _command(command)) == new.split()
    assert capsys.readouterr().err == ""


def test_an_old_spelling_runs_the_command(tmp_path: Path) -> None:
    old = CliRunner().invoke(app, ["info", str(tmp_path / "nothing")])
    new = CliRunner().invoke(app, ["info", "--store", str(tmp_path / "nothing")])
    assert "is now `coincide info --store STORE`" in old.output
    assert str(old.exception) == str(new.exception) and "no feature store at" in str(new.exception)
    bad = CliRunner().invoke(app, ["predict", "run", "a.wav", "--out", "p.txt"])
    assert "--out p.txt must end in .csv or .json" in str(bad.exception)


def _dummy(param: Any) -> list[str]:
    """A value the parser accepts for a required parameter."""
    annotation = param.type_descriptor.annotation
    value = "1" if annotation in (int, float) else "x"
    if param.param_type_name == "argument":
        return [value]
    return [param.opts[0], value]


def _choice_options() -> list[tuple[str, str]]:
    root, ctx = _root()
    from coincide.cli.docs import _commands

    return [
        (path, param.name)
        for path, command in _commands(root, ctx)
        for param in command.params
        if get_origin(param.type_descriptor.annotation) is Literal
    ]


@pytest.mark.parametrize(("path", "name"), _choice_options())
def test_every_closed_choice_is_checked_by_the_parser(path: str, name: str) -> None:
    command = _command(path)
    param = next(p for p in command.params if p.name == name)
    choices = get_args(param.type_descriptor.annotation)
    required = [token for p in command.params if p.required for token in _dummy(p)]
    for choice in choices:
        ctx = command.make_context(path, [*required, param.opts[0], choice])
        assert ctx.params[name] == choice
    with pytest.raises(Exception) as refused:
        command.make_context(path, [*required, param.opts[0], "bogus"])
    assert "'bogus' is not one of" in str(refused.value)
    assert all(f"'{choice}'" in str(refused.value) for choice in choices)


def test_choice_options_cover_the_commands_that_had_hand_written_checks() -> None:
    found = set(_choice_options())
    for expected in [
        ("cluster", "method"),
        ("label", "strategy"),
        ("label", "select"),
        ("label", "member"),
        ("finetune", "strategy"),
        ("report", "projection"),
        ("make-bench", "preset"),
        ("make-bench", "scene"),
        ("labels export", "fmt"),
        ("reproduce table1", "logmel_pooling"),
        ("reproduce table3", "method"),
        ("search", "fmt"),
        ("predict", "fmt"),
    ]:
        assert expected in found


def test_a_train_line_passes_through_torchrun_without_a_double_dash(monkeypatch) -> None:
    from torch.distributed.run import get_args_parser

    from coincide.errors import UserError
    from coincide.train.launch import launch

    train = ["train", "RUN", "--store", "S", "--config", "paper", "--set", "optim.lr=0.1"]
    train += ["--test-store", "T", "--eval-every", "5"]
    parsed = get_args_parser().parse_args(["--nproc-per-node", "2", "-m", "coincide.cli", *train])
    assert parsed.module and parsed.training_script == "coincide.cli"
    assert parsed.training_script_args == train
    # No option of `train` is a prefix of one of torchrun's (the old --run was: --run-path), so
    # argparse never takes it for its own. --nproc is: it has no place under torchrun, which
    # starts the processes itself, so torchrun refusing it as ambiguous is right, and
    # `coincide train --nproc` refuses to run under torchrun as well.
    torchrun = [o for action in get_args_parser()._actions for o in action.option_strings]
    for param in _command("train").params:
        for option in param.opts:
            if option.startswith("--") and option != "--nproc":
                assert not any(t.startswith(option) for t in torchrun), option
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(UserError, match="leave it out under torchrun"):
        launch(2, "coincide.stages.train:run")
