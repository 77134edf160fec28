"""The header checks of a cohort's cases (``case.case_problems``), optionally remembered by file identity.

``load_cohort(..., check_cache=PATH)`` keeps in one JSON file the keys of the cases that passed: a case's key
covers its PET, CT, labels and lesion files by identity (resolved path, size, mtime, ctime: ``cache.py``),
its ``resample_ct`` flag, the voxel cap and CHECKS_VERSION. A case whose key is there is not checked again
(``compare`` run again on 500 + 500 cases opens no NIfTI header at load time); any change of a file gives
it a new key, so it is checked again. Cases that fail are never remembered: they are checked every time.
The file is written atomically with a digest of its content; one that does not match (cut short, altered)
is not trusted (a warning, every case checked, the file rewritten).
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

from ..cache import cache_key, file_identity
from ..provenance import read_checked_json, write_checked_json
from ..errors import InputError
from ..volumes import max_voxels
from .case import Case, case_problems

CHECKS_VERSION = "1"  # bump when case_problems checks more (or differently): remembered passes are dropped
CHECKS_JSON = "header_checks.json"  # its name under a compare's cache folder: <out>/cache/<side>/


def check_key(case: Case) -> str:
    """Key of a case's header checks: its files by identity, ``resample_ct``, the voxel cap, CHECKS_VERSION."""
    files = [file_identity(getattr(case, role)) for role in ("pet", "ct", "labels", "lesions")]
    return cache_key(CHECKS_VERSION, files, bool(case.resample_ct), max_voxels())


def read_passed(path: Path) -> set[str]:
    """Keys of the cases that passed, from ``path`` (empty when absent; a corrupt file warns and is ignored)."""
    data = read_checked_json(path)
    if not isinstance(data, dict) or data.get("version") != CHECKS_VERSION or not isinstance(data.get("passed"), list):
        return set()
    return {k for k in data["passed"] if isinstance(k, str)}


def write_passed(path: Path, keys: Iterable[str]) -> None:
    """Remember ``keys`` (this run's passed cases; stale keys are dropped) in ``path``, atomically."""
    write_checked_json({"version": CHECKS_VERSION, "passed": sorted(keys)}, path)


def checked_cases(cases: Iterable[Case], cache: Path | None = None
                  ) -> tuple[list[Case], list[tuple[str, InputError]]]:
    """(usable cases, [(case_id, problem), ...]) after the header checks; with ``cache`` (a JSON file) the cases
    remembered there as passed are not checked again, and the file is updated when the passes changed."""
    known = read_passed(Path(cache)) if cache is not None else set()
    good, problems, passed = [], [], set()
    for case in cases:
        key = check_key(case) if cache is not None else None
        found = [] if key in known else case_problems(case)
        problems.extend((case.case_id, err) for err in found)
        if not found:
            good.append(case)
            passed.add(key)
    if cache is not None and passed != known:
        write_passed(Path(cache), passed)
    return good, problems
