"""The `totalgen-eval` command line (Typer): ``app`` and the console entry point ``main``."""
from __future__ import annotations

from . import cohorts, results, synthesis  # noqa: F401  (registers the commands)
from .app import app


def main() -> None:
    """Console entry point."""
    app()


__all__ = ["app", "main"]
