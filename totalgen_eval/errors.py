"""The one exception type users see: a bad input, said in one line."""
from __future__ import annotations

from pathlib import Path


class InputError(Exception):
    """Bad input. The message is one line naming the file (or option) and the problem.

    The CLI prints it as ``error: <message>`` and exits with status 2, without a traceback.
    """

    def __init__(self, message: str, path: str | Path | None = None):
        self.path = Path(path) if path is not None else None
        super().__init__(f"{path}: {message}" if path is not None else message)
