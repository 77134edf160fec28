"""The one exception type users see (a bad input, said in one line) and the checks that raise it."""
from __future__ import annotations

import errno
import math
import sys
import unicodedata
import warnings
from pathlib import Path


class InputError(Exception):
    """Bad input. The message is one line naming the file (or option) and the problem.

    The CLI prints it as ``error: <message>`` and exits with status 2, without a traceback.
    """

    def __init__(self, message: str, path: str | Path | None = None):
        self.path = Path(path) if path is not None else None
        super().__init__(f"{path}: {message}" if path is not None else message)


def printable(text: object) -> str:
    """``text`` on one line with control characters shown escaped (``\\x1b``, ``\\n``), never interpreted.

    Example: ``printable("case\\x1b[2J")`` -> ``'case\\\\x1b[2J'``.
    """
    out = []
    for ch in str(text):
        if unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") and ch != " ":
            out.append(ch.encode("unicode_escape").decode("ascii"))
        else:
            out.append(ch)
    return "".join(out)


_OS_REASONS = {
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file too large (a file-size limit such as `ulimit -f`, or the file system's)",
    errno.EROFS: "read-only file system",
    errno.ENOENT: "no such file or folder",
    errno.EISDIR: "is a folder, expected a file",
    errno.ENOTDIR: "a part of the path is not a folder",
    errno.EEXIST: "already exists",
}


def describe_os_error(exc: OSError) -> str:
    """One line for an OSError: the file it concerns and the reason in words.

    Example: ``describe_os_error(PermissionError(13, "Permission denied", "/out"))`` -> ``"/out: permission denied"``.
    """
    if exc.errno is None:  # raised with a message of its own, e.g. FileNotFoundError("x: no such folder")
        return str(exc) or type(exc).__name__
    reason = _OS_REASONS.get(exc.errno) or (exc.strerror or str(exc) or type(exc).__name__).lower()
    where = exc.filename if exc.filename is not None else None
    return f"{where}: {reason}" if where is not None else reason


def check_number(value: float, option: str, low: float | None = None, high: float | None = None,
                 low_open: bool = False) -> float:
    """``value`` as a finite float within [low, high] (``(low, high]`` with ``low_open``); InputError naming ``option``.

    Example: ``check_number(float("nan"), "--guidance", 0, 50)`` raises ``InputError("--guidance: nan is not a
    finite number")``.
    """
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{value!r} is not a number", option) from None
    if not math.isfinite(number):
        raise InputError(f"{value} is not a finite number", option)
    too_low = low is not None and (number <= low if low_open else number < low)
    if too_low or (high is not None and number > high):
        left = "(" if low_open else "["
        span = f"{left}{'-inf' if low is None else f'{low:g}'}, {'inf' if high is None else f'{high:g}'}]"
        raise InputError(f"{number:g} is outside the allowed range {span}", option)
    return number


def _one_line(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"warning: {printable(message)}", file=file or sys.stderr)


def one_line_warnings() -> None:
    """Show Python warnings in this process as one line ``warning: <message>`` on stderr, without the source
    line (the CLI's worker processes call it at start)."""
    warnings.showwarning = _one_line
