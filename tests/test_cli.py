"""The command line itself: --version, -h on every command, and a fast, light --help."""

from __future__ import annotations

import subprocess
import sys

from typer.testing import CliRunner

from coincide.cli import app


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
        "from coincide.cli import app\n"
        "for args in (['--help'], ['labels', 'export', '-h'], ['train', '-h']):\n"
        "    assert CliRunner().invoke(app, args).exit_code == 0\n"
        "heavy = sorted(m for m in ('torch', 'pandas', 'pyarrow', 'librosa') if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"--help imported {out.stdout.strip()}"


def test_a_device_name_that_is_not_one_is_one_sentence() -> None:
    from coincide.errors import UserError
    from coincide.inference import resolve_device

    try:
        resolve_device("gpu")
    except UserError as err:
        assert "use auto, cpu or cuda" in str(err)
    else:
        raise AssertionError("--device gpu was accepted")
