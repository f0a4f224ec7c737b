"""`python -m pacsflow`: the same as the `pacsflow` command."""

from pacsflow.cli import main

main()
