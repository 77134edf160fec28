"""Segmentation backends (``--segmenter`` specs) and their per-case label cache.

Specs:
- ``labels``: the cohort's own labels (our label map, a TotalSegmentator multilabel file with its label
  table, or a folder of per-class masks), read as TotalSegmentator "total" class ids.
- ``totalsegmentator`` (``totalsegmentator:fast`` / ``totalsegmentator:full``): TotalSegmentator on the CT;
  needs its weights (never downloaded from here).
- ``model:PATH``: a MONAI network checkpoint (safetensors + JSON); ``model:bundled`` (alias ``phantom``) is
  the bundled phantom organ segmenter, a stand-in for offline evaluation of phantom-like volumes.

Computed labels are cached as ``<cache_dir>/labels/<case_id>_<key>.nii.gz``; the key covers the input files'
identities (path, size, mtime, ctime: see ``cache.py``) and the backend settings (and the model weights'
digest), so a re-run reuses them and a changed input is segmented again.
"""
from __future__ import annotations

import functools
import hashlib
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import pandas as pd

from ..cache import cache_file, cache_key, file_identity
from ..errors import InputError
from ..organs import ORGAN_NAMES
from ..parallel import Excluded, Scheduler, excluded_frame, map_cases, write_excluded
from ..volumes import Grid, read_volume, write_volume
from .formats import read_labels_any, write_label_table
from .totalseg import totalsegmentator_weights

if TYPE_CHECKING:
    from ..cohort import Case, Cohort

__all__ = ["make_segmenter", "case_labels", "cached_labels", "segment_cohort", "default_segmenter",
           "totalsegmentator_weights", "LabelsBackend", "TotalSegmentatorBackend", "ModelBackend", "Segmented"]


def file_digest(path: Path, chunk: int = 1 << 22) -> str:
    """blake2b (16 hex) of a file's bytes, or of a folder's sorted names and file bytes (model weights)."""
    h = hashlib.blake2b(digest_size=8)
    path = Path(path)
    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    for f in files:
        h.update(f.name.encode() if path.is_dir() else b"")
        with open(f, "rb") as fh:
            while block := fh.read(chunk):
                h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class LabelsBackend:
    """The cohort's own labels."""

    spec: str = "labels"

    def settings(self) -> dict[str, Any]:
        return {"backend": "labels"}


@dataclass(frozen=True)
class TotalSegmentatorBackend:
    """TotalSegmentator on the CT (``fast``: its 3 mm model), restricted to the classes of ``organs``."""

    fast: bool = True
    device: str = "cpu"
    organs: tuple[str, ...] = ORGAN_NAMES

    @property
    def spec(self) -> str:
        return "totalsegmentator" if self.fast else "totalsegmentator:full"

    def settings(self) -> dict[str, Any]:
        from ..provenance import package_versions
        return {"backend": "totalsegmentator", "fast": self.fast, "organs": list(self.organs),
                "version": package_versions(("totalsegmentator",)).get("totalsegmentator")}

    def inputs(self, case: Case) -> list[Path]:
        return [Path(case.ct)]

    def segment(self, case: Case, target_grid: Grid, out_path: Path) -> Path:
        from .totalseg import run_totalsegmentator
        return run_totalsegmentator(Path(case.ct), out_path, fast=self.fast, device=self.device,
                                    organs=self.organs)


@dataclass(frozen=True)
class ModelBackend:
    """A saved MONAI segmentation network (``path``: its JSON config, safetensors beside it)."""

    path: Path
    device: str = "cpu"

    @property
    def spec(self) -> str:
        return f"model:{self.path}"

    def settings(self) -> dict[str, Any]:
        from .model import resolve_model_path
        cfg, weights = resolve_model_path(self.path)
        return {"backend": "model", "config": json.loads(cfg.read_text()),
                "weights": _weights_digest(str(weights), tuple(file_identity(weights)))}

    def inputs(self, case: Case) -> list[Path]:
        from .model import ModelConfig, resolve_model_path
        config = ModelConfig.from_json(resolve_model_path(self.path)[0])
        return [Path(case.ct)] + ([Path(case.pet)] if "pet" in config.inputs else [])

    def segment(self, case: Case, target_grid: Grid, out_path: Path) -> Path:
        from .model import predict_labels
        network, config = _load_cached(str(self.path), self.device)
        ct, affine = read_volume(case.ct, dtype=np.float32)
        pet, pet_grid = None, None
        if "pet" in config.inputs:
            pet, pet_affine = read_volume(case.pet, dtype=np.float32)
            pet_grid = Grid(tuple(pet.shape), pet_affine)
        labels = predict_labels(network, config, ct, Grid(tuple(ct.shape), affine), target_grid, self.device,
                                pet=pet, pet_grid=pet_grid)
        return write_volume(labels, target_grid.affine, out_path)


@functools.lru_cache(maxsize=8)
def _weights_digest(path: str, identity: tuple) -> str:
    """Content digest of a weights file, once per process for each of its identities (path, size, times)."""
    return file_digest(Path(path))


_MODELS: dict[tuple[str, str], Any] = {}  # per-process memo of loaded networks (read-only after load)


def _load_cached(path: str, device: str):
    from .model import load_model
    key = (path, device)
    if key not in _MODELS:
        _MODELS.clear()
        _MODELS[key] = load_model(path, device)
    return _MODELS[key]


Backend = LabelsBackend | TotalSegmentatorBackend | ModelBackend


def make_segmenter(spec: str | Backend | None, device: str = "cpu", fast: bool = True,
                   organs: Sequence[str] = ORGAN_NAMES) -> Backend:
    """The backend for a ``--segmenter`` spec (see the module docstring); InputError for an unknown spec."""
    if not isinstance(spec, str) and spec is not None:
        return spec
    s = (spec or "labels").strip()
    if s == "labels":
        return LabelsBackend()
    if s in ("totalsegmentator", "totalsegmentator:fast", "totalsegmentator:full", "ts"):
        return TotalSegmentatorBackend(fast=fast and not s.endswith(":full"), device=device,
                                       organs=tuple(organs))
    if s in ("phantom", "bundled", "model:bundled", "model:phantom"):
        from .model import bundled_model_path
        return ModelBackend(bundled_model_path(), device)
    if s.startswith("model:"):
        from .model import resolve_model_path
        cfg, _ = resolve_model_path(s[len("model:"):])
        return ModelBackend(cfg.resolve(), device)
    raise InputError(f"unknown segmenter {s!r}: use labels, totalsegmentator, model:PATH or model:bundled",
                     "--segmenter")


def cached_labels(case: Case, segmenter: str | Backend = "labels", cache_dir: str | Path | None = None,
                  device: str = "cpu", fast: bool = True) -> Path:
    """Path of a label map in TotalSegmentator "total" ids for ``case``, computing and caching it if needed.

    ``labels``: the case's own file when it is already in our format, else a converted copy in the cache.
    Computing backends write ``<cache_dir>/labels/<case_id>_<key>.nii.gz`` on the PET grid (TotalSegmentator:
    on the CT's grid) and reuse it on a re-run; the key changes with any input file or setting.
    """
    backend = make_segmenter(segmenter, device=device, fast=fast)
    if isinstance(backend, LabelsBackend):
        src = _own_labels(case)
        if src.is_file() and not _has_label_table(src):
            return src
        if cache_dir is None:
            raise InputError("converting TotalSegmentator labels needs a cache folder", src)
        out = cache_file(Path(cache_dir) / "labels", case.case_id, cache_key("labels", file_identity(src)),
                         ".nii.gz")
        if not out.is_file():
            labels, affine = read_labels_any(src)
            write_volume(labels.astype(np.uint8), affine, out)
            write_label_table(out)  # <name>.ctbl: names and colours for viewers (3D Slicer)
        return out
    if cache_dir is None:
        raise InputError("computed labels need a cache folder (--out)", backend.spec)
    key = cache_key([file_identity(p) for p in backend.inputs(case)], backend.settings())
    out = cache_file(Path(cache_dir) / "labels", case.case_id, key, ".nii.gz")
    if not out.is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        backend.segment(case, case.grid(), out)
        write_label_table(out)
    return out


def _own_labels(case: Case) -> Path:
    if case.labels is None:
        raise InputError("this case has no labels; use --segmenter totalsegmentator or model:bundled",
                         f"case {case.case_id}")
    return Path(case.labels)


def _has_label_table(path: Path) -> bool:
    import nibabel as nib

    from .formats import _label_table_xml
    img = nib.load(path)  # header and extensions only
    return _label_table_xml(img) is not None


def case_labels(case: Case, segmenter: str | Backend = "labels", cache_dir: str | Path | None = None,
                device: str = "cpu", fast: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(label array of "total" ids (i, j, k), its affine) for ``case``; ``labels`` formats read in memory."""
    backend = make_segmenter(segmenter, device=device, fast=fast)
    if isinstance(backend, LabelsBackend):
        return read_labels_any(_own_labels(case))
    path = cached_labels(case, backend, cache_dir, device, fast)
    try:
        return read_labels_any(path)
    except InputError as exc:  # a damaged cache file: segment again rather than fail on every re-run
        warnings.warn(f"unusable cache file ({exc}); recomputed", RuntimeWarning, stacklevel=2)
        path.unlink(missing_ok=True)
        return read_labels_any(cached_labels(case, backend, cache_dir, device, fast))


@dataclass(frozen=True)
class Segmented:
    """What :func:`segment_cohort` returns: label paths of the segmented cases, the excluded table."""

    labels: dict[str, Path]
    excluded: pd.DataFrame


def _segment_one(spec: str, cache_dir: Path, device: str, fast: bool, case: Case) -> Path:
    return cached_labels(case, spec, cache_dir, device, fast)


def segment_cohort(cohort: Cohort | Sequence[Case], segmenter: str | None = None, cache_dir: str | Path = "segmentations",
                   device: str = "cpu", fast: bool = True, workers: int = 1, progress: bool = True,
                   skip_bad: bool = False, scheduler: str | Scheduler | None = None) -> Segmented:
    """Labels for every case of a cohort, cached under ``cache_dir/labels`` (see :func:`cached_labels`).

    ``cohort``: a :class:`Cohort` or a plain sequence of its cases. ``scheduler``/``workers``: as in
    :func:`parallel.map_cases`. ``skip_bad``: cases that fail are left out;
    they and the cohort's cases left out at load time are listed in ``cache_dir/excluded.csv``.
    """
    spec = segmenter or default_segmenter(cohort)
    make_segmenter(spec, device, fast)  # bad specs fail before any work
    cache_dir = Path(cache_dir).resolve()
    mapped = map_cases(functools.partial(_segment_one, spec, cache_dir, device, fast), list(cohort),
                       scheduler=scheduler, workers=workers, skip_bad=skip_bad, progress=progress,
                       description=f"segment ({spec})")
    name = getattr(cohort, "name", None) or "cohort"
    left_out = [Excluded(cid, reason) for cid, reason in getattr(cohort, "problems", ())] + mapped.excluded
    excluded = excluded_frame(left_out, name)
    write_excluded(excluded, cache_dir)
    return Segmented({case.case_id: path for case, path in mapped.values}, excluded)


def default_segmenter(cohort: Cohort | Sequence[Case], fast: bool = True) -> str:
    """``labels`` when every case has labels, else ``totalsegmentator`` when its weights exist, else InputError."""
    cases = list(cohort)
    if cases and all(c.labels is not None for c in cases):
        return "labels"
    found, searched = totalsegmentator_weights(fast)
    if found:
        return "totalsegmentator"
    n_missing = sum(c.labels is None for c in cases)
    raise InputError(f"{n_missing} of {len(cases)} cases have no organ labels and TotalSegmentator's weights are "
                     f"absent (looked in {searched[0].parent}); choose --segmenter model:bundled (phantom-trained "
                     "stand-in), model:PATH, or get the weights with `totalseg_download_weights -t total_fast`",
                     getattr(cohort, "root", None))
