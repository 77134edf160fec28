"""The `totalgen-eval` command line: thin Typer commands over the library modules."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from . import __version__
from .errors import InputError

app = typer.Typer(
    name="totalgen-eval",
    help="Generate synthetic whole-body FDG PET/CT and judge it against real scans, organ by organ.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console(stderr=True)


def _not_yet(name: str, issue: int) -> None:
    console.print(f"[yellow]{name}[/yellow]: not yet implemented (issue {issue}).")
    raise typer.Exit(3)


@app.callback()
def _root(version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False) -> None:
    if version:
        print(__version__)
        raise typer.Exit(0)


def main() -> None:
    """Entry point: run the app; bad input ends with one line on stderr and exit status 2."""
    try:
        app(standalone_mode=False)
    except InputError as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except (typer.Exit, SystemExit) as exc:
        sys.exit(getattr(exc, "exit_code", getattr(exc, "code", 0)) or 0)
    except typer.Abort:
        console.print("aborted")
        sys.exit(130)
    except KeyboardInterrupt:
        console.print("interrupted: finished cases are kept; run the same command again to resume")
        sys.exit(130)
