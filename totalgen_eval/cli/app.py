"""The `totalgen-eval` command line: thin Typer commands over the library modules.

The app and the options shared by all commands; the commands live in cohorts.py (inspect, phantoms,
doctor, segment, metrics), results.py (stats, compare, plot, demo) and synthesis.py (generate, train,
benchmark).

Every command that meets bad input prints one line ``error: <file>: <problem>`` and exits with status 2.
Long commands show a progress bar and can be interrupted and re-run: finished cases are kept.
"""
from __future__ import annotations

import functools
from typing import Annotated, Callable, Optional

import typer
from rich.console import Console

from .. import __version__
from ..errors import InputError

app = typer.Typer(
    name="totalgen-eval",
    help="Generate synthetic whole-body FDG PET/CT and judge it against real scans, organ by organ.\n\n"
         "Start with `totalgen-eval demo`; then `generate`, `compare`, `plot`.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode="rich",
)
console = Console(stderr=True)
out = Console()

# Options shared by several commands ----------------------------------------------------------------
Seed = Annotated[int, typer.Option("--seed", help="Random seed: the same seed gives the same result.")]
Workers = Annotated[int, typer.Option("--workers", "-j", min=1, help="Parallel worker processes.")]
Device = Annotated[str, typer.Option("--device", help="Torch device: cpu, cuda, cuda:1 ...")]
Progress = Annotated[bool, typer.Option("--progress/--no-progress", help="Show a progress bar.")]
Segmenter = Annotated[Optional[str], typer.Option(
    "--segmenter", help="labels | totalsegmentator | model:PATH | model:bundled (default: labels where the "
                        "cohort has them, else TotalSegmentator where its weights exist).")]


def _friendly(func: Callable) -> Callable:
    """Turn InputError / ValueError from the library into one red line and exit status 2."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except InputError as exc:
            console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True, markup=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            console.print("interrupted: finished cases are kept; run the same command again to resume")
            raise typer.Exit(130) from None

    return wrapper


def _parse(func: Callable, value, what: str):
    """Parse an option value; a ValueError becomes an InputError naming the option."""
    try:
        return func(value)
    except ValueError as exc:
        raise InputError(str(exc), what) from None


def _command(name: str | None = None, **kw) -> Callable:
    def register(func: Callable) -> Callable:
        return app.command(name, **kw)(_friendly(func))
    return register


def _print_version(value: bool) -> None:
    if value:
        print(__version__)
        raise typer.Exit(0)


@app.callback()
def _root(version: Annotated[bool, typer.Option("--version", is_eager=True, callback=_print_version,
                                                help="Print the version and exit.")] = False) -> None:
    """Generate synthetic whole-body FDG PET/CT and judge it against real scans, organ by organ."""
