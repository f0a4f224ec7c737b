"""The `pacsflow` command line: thin commands that parse, call the service layer (pacsflow.api), print.

One module per command group; importing this package loads typer and nothing heavy, so that
`pacsflow --help` starts at once.
"""

from __future__ import annotations

from pacsflow.cli import cleanup, files, network, privacy, reports, runs, servers, services  # noqa: F401 - each registers its commands
from pacsflow.cli.app import app


def main() -> None:
    app()


__all__ = ["app", "main"]
