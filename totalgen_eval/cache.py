"""Per-case result caches: keys that change whenever an input changes, and readable file names.

An input file is identified by its resolved path, size, modification time and the inode's change time
(``st_ctime_ns``). ``os.utime`` can set a file's mtime back, but nothing short of changing the system
clock sets ctime back: any write, rename or ``utime`` moves it, so a file rewritten with the same size
and mtime still gets a new key. This costs one ``stat`` per file; hashing the bytes costs a read of the
whole file on every re-run (``python -m benchmarks.bench_cache_key`` measures both). The price: a copied
or touched input is recomputed once, never served stale.
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Any, Sequence

import pandas as pd


def file_identity(path: str | os.PathLike | None) -> list[Any] | None:
    """[resolved path, size, mtime_ns, ctime_ns] of a file, or of every file in a folder (sorted by name);
    None for no path, [path, None] for a path that does not exist."""
    if path is None:
        return None
    path = Path(path)
    try:
        if path.is_dir():
            return [str(path.resolve()), [file_identity(p) for p in sorted(path.iterdir()) if p.is_file()]]
        st = path.stat()
    except OSError:
        return [str(path), None]
    return [str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def cache_key(*parts: Any) -> str:
    """A 16-hex-digit key (blake2b) of JSON-able ``parts``."""
    payload = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.blake2b(payload.encode(), digest_size=8).hexdigest()


def safe_name(case_id: str) -> str:
    """A case id as a file-name part: letters, digits, ``-_.`` kept, anything else ``_``."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in str(case_id))


def cache_file(folder: str | os.PathLike, case_id: str, key: str, suffix: str) -> Path:
    """``folder/<case_id>_<key><suffix>``: the readable name of a cached per-case result."""
    return Path(folder) / f"{safe_name(case_id)}_{key[:8]}{suffix}"


def read_cached_table(path: Path, columns: Sequence[str], n_rows: int | None = None) -> pd.DataFrame | None:
    """A cached CSV when it is readable and has ``columns`` (and ``n_rows``); else None, with a warning for a
    file that exists but is corrupt, empty or incomplete (the caller recomputes and overwrites it)."""
    if not path.is_file():
        return None
    try:
        frame = pd.read_csv(path)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError, OSError) as exc:
        reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
    else:
        if list(frame.columns) == list(columns) and (n_rows is None or len(frame) == n_rows):
            return frame
        reason = f"{len(frame)} rows, columns {', '.join(map(str, frame.columns))[:80]}"
    warnings.warn(f"{path}: unusable cache file ({reason}); recomputed", RuntimeWarning, stacklevel=2)
    return None


def frame_record(frame: pd.DataFrame) -> dict[str, Any]:
    """A table as JSON-able data that :func:`frame_from_record` turns back into an equal table: the columns,
    their dtypes, their values (floats exactly, NaN kept) and ``frame.attrs``; the index is not kept."""
    return {"columns": [str(c) for c in frame.columns], "dtypes": [str(t) for t in frame.dtypes],
            "values": [frame[c].tolist() for c in frame.columns], "attrs": frame.attrs}


def frame_from_record(record: Any, columns: Sequence[str]) -> pd.DataFrame | None:
    """The table of a :func:`frame_record` (a RangeIndex, the dtypes and attrs restored), or None when
    ``record`` is not one or its columns are not ``columns``."""
    try:
        if list(record["columns"]) != list(columns) or len(record["dtypes"]) != len(columns):
            return None
        frame = pd.DataFrame({c: pd.Series(v, dtype=t) for c, v, t in
                              zip(record["columns"], record["values"], record["dtypes"], strict=True)})
        frame.attrs = dict(record["attrs"])
    except (KeyError, TypeError, ValueError):
        return None
    return frame
