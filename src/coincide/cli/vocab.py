"""The old spellings of the command line, kept working for one release (docs/cli.md, rule 7).

Before a command parses its arguments, `upgrade` rewrites an old spelling into the new one and
prints one sentence naming the new spelling. The old names are no parameters of any command, so
`--help` and docs/cli.md show only the new vocabulary. `VocabGroup` is the Click group class of
`coincide` and its sub-groups that calls `upgrade`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import typer
from typer.core import TyperGroup

from coincide.errors import UserError

# Options renamed in place, per command: old -> new.
RENAMED: dict[str, dict[str, str]] = {
    "train": {"--eval-store": "--test-store"},
    "cluster": {"--k": "--clusters"},
    "label": {"--k": "--clusters"},
    "finetune": {"--out": "--name"},
    "embed": {"--out": "--parquet"},
    "report": {"--store": "--test-store", "--out": "--html"},
    "reproduce table1": {"--train-store": "--store", "--rows": "--row", "--seeds": "--seed"},
    "reproduce table2": {"--k": "--clusters", "--budgets": "--budget"},
    "reproduce table3": {
        "--train-store": "--store",
        "--k": "--clusters",
        "--budgets": "--budget",
        "--seeds": "--seed",
    },
}
# Commands whose old positional arguments are options now (in this order).
POSITIONALS_TO_OPTIONS: dict[str, list[str]] = {
    "info": ["--store"],
    "add-labels": ["--store", "--labels"],
    "make-bench": ["--out"],
}
# Commands that took the run folder as `--run RUN` and take it as the first argument now.
RUN_OPTION = ("train", "reproduce table2", "reproduce table3")
REMOVAL = "the old spelling works until the next release"


def _note(command: str, old: str, new: str) -> None:
    typer.secho(
        f"note: `coincide {command} {old}` is now `coincide {command} {new}`; {REMOVAL}.",
        err=True,
        fg=typer.colors.YELLOW,
    )


def _split(token: str) -> tuple[str, str | None]:
    """`--name=value` -> ("--name", "value"); `--name` -> ("--name", None)."""
    name, eq, value = token.partition("=")
    return (name, value) if eq else (token, None)


def _rename(args: list[str], old: str, new: str) -> bool:
    """Rename option `old` to `new` in place (both `--old V` and `--old=V`); True if found."""
    found = False
    for i, token in enumerate(args):
        if token == "--":
            break
        name, value = _split(token)
        if name == old:
            args[i] = new if value is None else f"{new}={value}"
            found = True
    return found


def _pop_option(args: list[str], name: str) -> list[str]:
    """Remove every `name VALUE` / `name=VALUE` from args; returns the values in order."""
    values: list[str] = []
    i = 0
    while i < len(args) and args[i] != "--":
        option, value = _split(args[i])
        if option == name:
            if value is None and i + 1 < len(args):
                values.append(args[i + 1])
                del args[i : i + 2]
            else:
                values.append(value or "")
                del args[i]
        else:
            i += 1
    return values


def _positional_indices(args: list[str], command: Any) -> list[int]:
    """Where the positional arguments are: tokens that are neither options nor their values."""
    takes: dict[str, int] = {}
    for param in command.params:
        if param.param_type_name == "option" and not (param.is_flag or param.count):
            takes.update(dict.fromkeys(param.opts, param.nargs))
    found, i = [], 0
    while i < len(args):
        token = args[i]
        if token == "--":
            return found + list(range(i + 1, len(args)))
        if token.startswith("-") and len(token) > 1:
            name, value = _split(token)
            i += 1 + (takes.get(name, 0) if value is None else 0)
        else:
            found.append(i)
            i += 1
    return found


def _positionals_to_options(args: list[str], command: Any, names: list[str]) -> list[str]:
    """The first len(names) positionals become `names[j] VALUE` options."""
    where = _positional_indices(args, command)[: len(names)]
    moved = [args[i] for i in where]
    kept = [token for i, token in enumerate(args) if i not in set(where)]
    options = [token for name, value in zip(names, moved, strict=False) for token in (name, value)]
    return options + kept


def _evaluate(args: list[str]) -> None:
    # evaluate measured on `--store` and trained on `--train-store`; --test-store and --store
    # now. An evaluate line without --test-store is in the old spelling.
    if any(_split(t)[0] == "--test-store" for t in args):
        if _rename(args, "--train-store", "--store"):
            _note("evaluate", "--train-store", "--store")
        return
    if _rename(args, "--store", "--test-store"):
        _note("evaluate", "--store TEST", "--test-store TEST")
    if _rename(args, "--train-store", "--store"):
        _note("evaluate", "--train-store", "--store")


def _predict(args: list[str]) -> None:
    # predict --out FILE.csv|FILE.json -> --csv FILE / --json FILE.
    for i, token in enumerate(args):
        name, value = _split(token)
        if name != "--out":
            continue
        target = value if value is not None else (args[i + 1] if i + 1 < len(args) else "")
        kind = target.lower().rpartition(".")[2]
        if kind not in ("csv", "json"):
            raise UserError(f"--out {target} must end in .csv or .json; or use --csv/--json FILE.")
        args[i] = f"--{kind}" if value is None else f"--{kind}={value}"
        _note("predict", "--out FILE", "--csv FILE (or --json FILE)")


SPECIAL: dict[str, Callable[[list[str]], None]] = {"evaluate": _evaluate, "predict": _predict}


def upgrade(command: str, args: list[str], parsed_by: Any) -> list[str]:
    """`args` of `coincide <command>` with every old spelling replaced by the new one."""
    if any(token in ("-h", "--help") for token in args):
        return args
    args = list(args)
    if command in SPECIAL:
        SPECIAL[command](args)
    for old, new in RENAMED.get(command, {}).items():
        if _rename(args, old, new):
            _note(command, old, new)
    if command in RUN_OPTION:
        runs = _pop_option(args, "--run")
        if runs:
            if command == "train":  # `train STORE --run RUN`: the store was the positional
                args = _positionals_to_options(args, parsed_by, ["--store"])
                _note(command, "STORE --run RUN", "RUN --store STORE")
            else:
                _note(command, "--run RUN", "RUN")
            args = runs + args
    if command in POSITIONALS_TO_OPTIONS and _positional_indices(args, parsed_by):
        names = POSITIONALS_TO_OPTIONS[command]
        args = _positionals_to_options(args, parsed_by, names)
        old = " ".join(name.lstrip("-").upper() for name in names)
        new = " ".join(f"{name} {name.lstrip('-').upper()}" for name in names)
        _note(command, old, new)
    return args


class VocabGroup(TyperGroup):
    """A command group that upgrades old spellings before the chosen command parses them."""

    def resolve_command(self, ctx: Any, args: list[str]) -> Any:
        name, command, rest = super().resolve_command(ctx, args)
        if name is not None and command is not None and not isinstance(command, TyperGroup):
            path = [name]
            parent = ctx
            while parent is not None and parent.parent is not None:
                path.insert(0, str(parent.info_name))
                parent = parent.parent
            rest = upgrade(" ".join(path), rest, command)
        return name, command, rest
