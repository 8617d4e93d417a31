"""`python -m coincide.cli ...`, the same as the `coincide` command."""

from coincide.cli.commands import main

main()
