"""Versions, parameters and safe writes: every result on disk says what made it, and nothing else is written.

- ``stamp`` / ``package_versions``: the provenance block saved beside a result.
- ``atomic_path`` / ``write_json`` / ``write_table``: a file appears whole or not at all.
- ``claim_folder``: an output folder is new, empty, or was made by this tool (its marker ``.totalgen-eval.json``
  names the command); ``--force`` can only ever replace what this tool made.
- ``folder_lock``: one run at a time writes a folder (``.totalgen-eval.lock`` holds the writer's pid).
- ``refuse_inputs``: no output path is a file a cohort reads.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import platform
import socket
import sys
import tempfile
import time
import warnings
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import pandas as pd

from .errors import InputError

MARKER = ".totalgen-eval.json"
LOCK = ".totalgen-eval.lock"
OWN_FILES = (MARKER, LOCK)

PACKAGES = ("totalgen-eval", "torch", "monai", "numpy", "scipy", "pandas", "statsmodels",
            "nibabel", "matplotlib", "totalsegmentator")


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    """Installed version of each distribution (None when absent), plus Python's."""
    return dict(_versions(tuple(names)))


@functools.lru_cache(maxsize=8)
def _versions(names: tuple[str, ...]) -> tuple[tuple[str, str | None], ...]:
    """Looked up once per process (about 0.1 s a package: the metadata scan is slow)."""
    out: list[tuple[str, str | None]] = [("python", platform.python_version())]
    for name in names:
        try:
            out.append((name, metadata.version(name)))
        except metadata.PackageNotFoundError:
            out.append((name, None))
    return tuple(out)


def to_jsonable(obj: Any) -> Any:
    """Dataclasses, paths, tuples and numpy scalars as plain JSON values."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item") and callable(obj.item):  # numpy scalar
        return obj.item()
    if isinstance(obj, float) and obj != obj:  # NaN is not JSON
        return None
    return obj


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; it replaces ``path`` only if the block succeeds.

    A run killed half-way leaves the old file (or none), never a half-written one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        try:
            yield Path(tmp)
        except OSError as exc:  # name the file the user asked for, not the temporary one
            if exc.filename in (tmp, str(tmp)) or exc.filename is None:
                exc.filename = str(path)
            raise
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; results are ordinary files
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json(obj: Any, path: str | Path) -> Path:
    """Write ``obj`` (dataclasses allowed) as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(to_jsonable(obj), indent=2, sort_keys=False) + "\n")
    return Path(path)


def write_table(frame: pd.DataFrame, path: str | Path) -> Path:
    """Write a tidy table as CSV, atomically (no index column)."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)
    return Path(path)


def stamp(params: Any, seed: int | None = None) -> dict[str, Any]:
    """The provenance block saved beside a result: parameters, seed, package versions."""
    return {"parameters": to_jsonable(params), "seed": seed, "versions": package_versions()}


# output folders: marker, lock, inputs -----------------------------------------------------------------
def read_marker(folder: str | Path) -> dict | None:
    """The marker this tool left in ``folder`` ({"tool", "command", "argv", ...}), or None."""
    try:
        data = json.loads((Path(folder) / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("tool") == "totalgen-eval" else None


def write_marker(folder: str | Path, command: str, argv: Iterable[str] | None = None) -> Path:
    """Mark ``folder`` as made by ``totalgen-eval <command>`` with the command line that made it (``argv``,
    default ``sys.argv``)."""
    from . import __version__

    argv = list(sys.argv if argv is None else argv)
    return write_json({"tool": "totalgen-eval", "command": command, "argv": argv, "version": __version__,
                       "written": time.strftime("%Y-%m-%dT%H:%M:%S%z")}, Path(folder) / MARKER)


def foreign_files(folder: Path) -> list[Path]:
    """Entries of ``folder`` other than this tool's marker and lock."""
    return [p for p in folder.iterdir() if p.name not in OWN_FILES] if folder.is_dir() else []


def claim_folder(folder: str | Path, command: str, accept: Iterable[str] = (),
                 legacy: Callable[[Path], bool] | None = None, write: bool = True,
                 argv: Iterable[str] | None = None) -> Path:
    """Make ``folder`` the output of ``totalgen-eval <command>``, or InputError naming why it cannot be.

    Accepted: a new or empty folder; one whose marker names ``command`` or one of ``accept``; a folder without
    marker that ``legacy(folder)`` recognises as made by an older version of this tool. Refused: anything else
    (a cohort or folder this tool did not make, or the output of another command). With ``write`` the folder
    is created and the marker written; without, the folder is only checked (nothing is created).
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise InputError("exists and is not a folder", folder)
    if foreign_files(folder):
        marker = read_marker(folder)
        allowed = {command, *accept}
        if marker is not None and marker.get("command") not in allowed:
            raise InputError(f"holds the output of `totalgen-eval {marker.get('command')}`, not of {command}; "
                             "choose another --out", folder)
        if marker is None and not (legacy is not None and legacy(folder)):
            raise InputError(f"is not empty and was not made by totalgen-eval (no {MARKER}); this tool only "
                             "writes into folders it made: choose another --out", folder)
    if write:
        folder.mkdir(parents=True, exist_ok=True)
        marker = read_marker(folder)
        if marker is None or marker.get("command") == command:  # the maker's marker stays
            write_marker(folder, command, argv)
    return folder


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    except (OverflowError, ValueError):
        return False
    return True


def _lock_holder(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _holder_alive(holder: dict | None) -> bool:
    if holder is None:  # being written this instant, or garbage: treat as held only if fresh
        return False
    if holder.get("host") not in (None, socket.gethostname()):
        return True  # another machine's run (shared file system): cannot tell, so respect it
    return _pid_alive(int(holder.get("pid", -1)))


@contextmanager
def folder_lock(folder: str | Path, command: str) -> Iterator[Path]:
    """Hold ``folder/.totalgen-eval.lock`` while the block runs; a second run is refused with one line.

    The lock file is created with O_EXCL and holds the pid, host and command. A lock left by a process that
    no longer exists (killed) is taken over. Removed on exit (normal, error or Ctrl-C).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK
    record = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "command": command,
                         "argv": list(sys.argv), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            break
        except FileExistsError:
            holder = _lock_holder(path)
            if holder is None and time.time() - _mtime(path) < 2.0:
                time.sleep(0.2)  # another run is writing its record right now
                holder = _lock_holder(path)
            if _holder_alive(holder):
                raise InputError(f"is being written by another run (pid {holder.get('pid')}: "
                                 f"totalgen-eval {holder.get('command')}); wait for it to finish or choose "
                                 "another --out", folder) from None
            path.unlink(missing_ok=True)  # stale: its process is gone
    else:
        raise InputError("could not take the folder's lock (another run keeps taking it)", path)
    with os.fdopen(fd, "w") as fh:
        fh.write(record)
    try:
        yield path
    finally:
        holder = _lock_holder(path)
        if holder is not None and holder.get("pid") == os.getpid():
            path.unlink(missing_ok=True)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and os.path.samefile(a, b))
    except OSError:
        return False


def refuse_inputs(outputs: Iterable[str | Path], inputs: Iterable[str | Path], what: str = "a cohort") -> None:
    """InputError when an output path is one of ``inputs`` (or lies inside an input folder): inputs are never
    written. ``what`` names whose inputs they are in the message.
    """
    inputs = [Path(p).expanduser() for p in inputs if p is not None]
    for out in outputs:
        out = Path(out).expanduser()
        for src in inputs:
            if _same_file(out, src) or (src.is_dir() and src.resolve() in out.resolve().parents):
                which = "" if _same_file(out, src) else f" (inside {src})"
                raise InputError(f"is an input of {what}{which}; outputs never overwrite inputs: choose another "
                                 "path", out)


# --- cache files checked by a digest (compare's header checks and organ tables) ---

CHECKED_JSON_HEAD = "totalgen-eval cache "  # first line: this text and the blake2b of the rest of the file


def write_checked_json(obj: Any, path: str | os.PathLike) -> Path:
    """Write JSON-able ``obj`` to ``path`` atomically, its first line the digest of the JSON text below it
    (``read_checked_json`` trusts nothing else). NaN and infinities are kept (Python's JSON extension); numpy
    scalars are written as numbers."""
    text = json.dumps(obj, default=_plain, separators=(",", ":"))
    digest = hashlib.blake2b(text.encode(), digest_size=16).hexdigest()
    with atomic_path(path) as tmp:
        tmp.write_text(f"{CHECKED_JSON_HEAD}{digest}\n{text}")
    return Path(path)


def read_checked_json(path: str | os.PathLike) -> Any | None:
    """What :func:`write_checked_json` wrote to ``path``; None when the file is absent, and None with a warning
    when it is unreadable, cut short or altered (its digest does not match): such a file is never trusted."""
    path = Path(path)
    try:
        head, _, text = path.read_text().partition("\n")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        return _untrusted(path, f"{type(exc).__name__}: {exc}")
    digest = hashlib.blake2b(text.encode(), digest_size=16).hexdigest()
    if head != f"{CHECKED_JSON_HEAD}{digest}":
        return _untrusted(path, "incomplete or altered: its digest does not match")
    try:
        return json.loads(text)
    except ValueError as exc:
        return _untrusted(path, f"{type(exc).__name__}: {exc}")


def _untrusted(path: Path, reason: str) -> None:
    warnings.warn(f"{path}: unusable cache file ({reason.splitlines()[0]}); recomputed", RuntimeWarning,
                  stacklevel=3)
    return None


def _plain(value: Any) -> Any:
    """numpy scalars as Python numbers, paths as text (``json.dumps`` default)."""
    if hasattr(value, "item") and callable(value.item):
        return value.item()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"{type(value).__name__} is not JSON-able")
