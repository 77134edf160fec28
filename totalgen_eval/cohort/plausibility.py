"""Plausibility checks of PET (SUV) and CT (HU) data: each finding is one line saying what is wrong.

Cheap by design (they run in ``inspect --deep``, cohort validation and once per case in ``metrics``,
where the arrays are read anyway): counts over the array and percentiles of a strided sample of at most
``SAMPLE_VOXELS`` voxels. Arrays are (i, j, k); PET in body-weight SUV (g/mL), CT in HU.

What is refused, and why:
- voxel types: complex, boolean or 1-bit (NIfTI "binary") images are not CT or PET;
- PET: +-inf voxels; all zero; negative values beyond noise (more than ``NEGATIVE_SHARE`` of the non-zero
  voxels below ``NEGATIVE_SUV``); a maximum above ``BQML_MAX_SUV`` (Bq/mL, not SUV); uptake far outside FDG
  ranges: organ SUVmean outside ``FDG_SUVMEAN_RANGE`` (brain, liver, blood pool) or, without labels, the
  median SUV of the body (CT above ``BODY_MIN_HU``) outside ``BODY_MEDIAN_SUV`` (a PET 30x too high has a
  brain SUVmean near 200 and a body median near 15);
- CT: +-inf or NaN voxels; no air: the lowest ``AIR_PERCENTILE`` % of voxels above ``AIR_MAX_HU`` (CT in HU
  has air near -1000 in the lungs and around the body; stored values without the -1024 rescale offset put
  it near 0).
NaN PET voxels are tolerated by the organ metrics (left out of SUV statistics, counted) and reported here.
"""
from __future__ import annotations

import gzip
import math
from pathlib import Path
from typing import Mapping

import nibabel as nib
import numpy as np

from ..errors import InputError

BQML_MAX_SUV = 500.0          # a PET whose maximum exceeds this is taken to be in Bq/mL, not SUV
NEGATIVE_SUV = -0.5           # SUV below this is more than reconstruction noise
NEGATIVE_SHARE = 0.001        # ... in more than this share of the non-zero voxels
FDG_SUVMEAN_RANGE: dict[str, tuple[float, float]] = {  # adult FDG organ SUVmean, with a wide margin
    "brain": (0.5, 40.0), "liver": (0.2, 10.0), "aorta": (0.2, 8.0)}
BODY_MIN_HU = -300.0          # CT above this is body (fat, soft tissue, bone), not air or lung
BODY_MEDIAN_SUV = (0.05, 5.0)  # median SUV of the body voxels (fat ~0.3, muscle ~0.7)
AIR_PERCENTILE = 1.0
AIR_MAX_HU = -500.0           # the lowest 1 % of a CT in HU lies near -1000 (air), never above this
SAMPLE_VOXELS = 1 << 20       # percentiles from a strided sample of at most this many voxels


def _sample(values: np.ndarray) -> np.ndarray:
    """A strided sample of at most SAMPLE_VOXELS voxels of ``values`` (every s-th voxel along each axis), flat.

    Taken by index, not memory order, so arrays of one shape give aligned samples whatever their layout, and
    an F-ordered NIfTI array is not copied whole (a flat view of it would be).
    """
    step = max(1, math.ceil((values.size / SAMPLE_VOXELS) ** (1.0 / max(values.ndim, 1))))
    return values[(slice(None, None, step),) * values.ndim].reshape(-1)


def dtype_problem(dtype: np.dtype, role: str) -> str | None:
    """Why a voxel type cannot hold a ``role`` image ("pet", "ct", "labels", "lesions"), or None."""
    dtype = np.dtype(dtype)
    if np.issubdtype(dtype, np.complexfloating):
        return f"complex voxel type {dtype} refused: a {role.upper()} image holds real numbers"
    if role in ("pet", "ct") and (dtype == np.bool_ or dtype.kind == "V"):
        kind = "boolean" if dtype == np.bool_ else "1-bit (binary) or untyped"
        return f"{kind} voxel type refused: a {role.upper()} image holds {'SUV' if role == 'pet' else 'HU'} values"
    if dtype.kind == "V":
        return "1-bit (binary) or untyped voxel type refused: store masks as uint8"
    return None


def check_file_dtype(path: str | Path, role: str) -> None:
    """InputError when the NIfTI header of ``path`` declares a voxel type a ``role`` image cannot have."""
    try:
        dtype = header_dtype(Path(path))
    except Exception:  # an unreadable header is reported by the header checks
        return
    problem = dtype_problem(dtype, role)
    if problem:
        raise InputError(problem, path)


def header_dtype(path: Path) -> np.dtype:
    """The voxel type a NIfTI file's header declares. For .nii and .nii.gz only the header block is read and
    parsed (a fifth of what ``nib.load`` costs: it runs before every PET and CT read); other formats go
    through ``nib.load``. Raises what nibabel raises for a header it cannot read."""
    if not path.name.endswith((".nii", ".nii.gz")):
        return nib.load(path).get_data_dtype()
    from ..volumes import _gzip

    opener = (_gzip.open if _gzip is not None else gzip.open) if path.name.endswith(".gz") else open
    with opener(path, "rb") as fh:
        block = fh.read(540)
    sizes = {int.from_bytes(block[:4], "little"), int.from_bytes(block[:4], "big")}
    klass = nib.Nifti1Header if 348 in sizes else nib.Nifti2Header if 540 in sizes else None
    if klass is None:
        return nib.load(path).get_data_dtype()
    size = 348 if klass is nib.Nifti1Header else 540
    return klass(block[:size], check=True).get_data_dtype()


def nonfinite_counts(values: np.ndarray) -> tuple[int, int, int]:
    """(NaN, +inf, -inf) voxel counts of a float array (zeros for integer arrays)."""
    if not np.issubdtype(values.dtype, np.floating):
        return 0, 0, 0
    n_bad = int(values.size - np.count_nonzero(np.isfinite(values)))
    if n_bad == 0:
        return 0, 0, 0
    pos = int(np.count_nonzero(values == np.inf))
    neg = int(np.count_nonzero(values == -np.inf))
    return n_bad - pos - neg, pos, neg


def nonfinite_text(counts: tuple[int, int, int]) -> str:
    """``"3 voxels are NaN, 2 +inf"`` from (NaN, +inf, -inf) counts."""
    parts = [f"{n} {name}" for n, name in zip(counts, ("NaN", "+inf", "-inf")) if n]
    total = sum(counts)
    return f"{total} voxel{'s are' if total != 1 else ' is'} not finite ({', '.join(parts)})"


def pet_problems(pet: np.ndarray, include_nan: bool = True) -> list[str]:
    """What is wrong with a PET array in SUV (each a one-line message), from the values alone.

    ``include_nan``: report NaN voxels (the organ metrics tolerate them; +-inf is always reported).
    The minimum and maximum come first: within (NEGATIVE_SUV, BQML_MAX_SUV], finite and not all zero, nothing
    else can be wrong and the counting passes are skipped.
    """
    if pet.size and _plausible_range(pet):
        return []
    out = []
    nan, pos, neg = nonfinite_counts(pet)
    if pos or neg or (nan and include_nan):
        out.append(nonfinite_text((nan if include_nan else 0, pos, neg)))
    finite = pet[np.isfinite(pet)] if (nan or pos or neg) else pet
    if finite.size == 0:
        return out + ["holds no finite voxel"]
    top = float(finite.max())
    nonzero = int(np.count_nonzero(finite))
    if nonzero == 0:
        return out + ["PET is all zero: no uptake to measure"]
    if top > BQML_MAX_SUV:
        out.append(f"looks like Bq/mL (max {top:.1f} > {BQML_MAX_SUV:g}); convert to SUV")
    n_negative = int(np.count_nonzero(finite < NEGATIVE_SUV))
    if n_negative > NEGATIVE_SHARE * nonzero:
        out.append(f"negative PET beyond noise: {n_negative} voxels ({100 * n_negative / nonzero:.2g}% of the "
                   f"non-zero ones) below {NEGATIVE_SUV:g} SUV, minimum {float(finite.min()):.3g}")
    return out


def _plausible_range(pet: np.ndarray) -> bool:
    """True when min and max (NaN if any voxel is NaN) show a finite PET in SUV with some uptake and no voxel
    below NEGATIVE_SUV: then :func:`pet_problems` has nothing to report."""
    low, high = float(np.min(pet)), float(np.max(pet))
    return math.isfinite(low) and math.isfinite(high) and NEGATIVE_SUV <= low and high <= BQML_MAX_SUV \
        and (low != 0 or high != 0)


def check_pet(pet: np.ndarray, path: str | Path | None) -> None:
    """InputError for the first PET problem that makes SUV statistics meaningless (NaN is tolerated)."""
    problems = pet_problems(pet, include_nan=False)
    if problems:
        raise InputError(problems[0], path)


def ct_problems(ct: np.ndarray) -> list[str]:
    """What is wrong with a CT array in HU (non-finite voxels; no air, as in CT stored without its offset)."""
    out = []
    counts = nonfinite_counts(ct)
    if sum(counts):
        out.append(nonfinite_text(counts))
        ct = ct[np.isfinite(ct)]
    if ct.size == 0:
        return out
    sample = _sample(ct)
    if _air_below_percentile(sample):
        return out
    low = float(np.percentile(sample, AIR_PERCENTILE))
    if low > AIR_MAX_HU:
        offset = " (stored without the -1024 offset?)" if -100 <= low <= 200 else ""
        out.append(f"CT not in HU: the lowest {AIR_PERCENTILE:g}% of voxels lie at {low:.0f} or above; air "
                   f"(lungs, outside the body) should be near -1000 HU{offset}")
    return out


def _air_below_percentile(sample: np.ndarray) -> bool:
    """True when so many voxels lie at or below AIR_MAX_HU that the AIR_PERCENTILE-th percentile does too: it
    interpolates between the two values around rank (n - 1) q / 100, and more values than that rank + 2 (+ 1
    for rounding of the rank) are <= AIR_MAX_HU. One count instead of a partial sort; False: compute it."""
    rank = (sample.size - 1) * AIR_PERCENTILE / 100.0
    return int(np.count_nonzero(sample <= AIR_MAX_HU)) >= math.floor(rank) + 3


def check_ct(ct: np.ndarray, path: str | Path | None) -> None:
    """InputError for the first CT problem (non-finite voxels, not in HU)."""
    problems = ct_problems(ct)
    if problems:
        raise InputError(problems[0], path)


def organ_uptake_problems(suv_means: Mapping[str, float]) -> list[str]:
    """Organ SUVmean (organ -> SUV) far outside adult FDG ranges (``FDG_SUVMEAN_RANGE``); NaN skipped."""
    out = []
    for name, (low, high) in FDG_SUVMEAN_RANGE.items():
        value = suv_means.get(name, math.nan)
        if value is not None and math.isfinite(value) and not low <= value <= high:
            out.append(f"PET uptake far outside FDG ranges: {name} SUVmean {value:.3g} (expected {low:g}-{high:g}); "
                       "is the PET scaled (units, decay, dose) correctly?")
    return out


def body_uptake_problem(pet: np.ndarray, ct: np.ndarray) -> str | None:
    """The median SUV over the body (CT above BODY_MIN_HU) far outside FDG ranges, or None.

    Needs PET and CT on one grid; returns None when the shapes differ or there is no body.
    """
    if pet.shape != ct.shape:
        return None
    body = _sample(ct) > BODY_MIN_HU
    values = _sample(pet)[body]
    values = values[np.isfinite(values)]
    if values.size == 0:
        return None
    median = float(np.median(values))
    low, high = BODY_MEDIAN_SUV
    if low <= median <= high:
        return None
    return (f"PET uptake far outside FDG ranges: median SUV over the body (CT > {BODY_MIN_HU:g} HU) is {median:.3g} "
            f"(expected {low:g}-{high:g}); is the PET scaled (units, decay, dose) correctly?")


def organ_suv_means(pet: np.ndarray, labels: np.ndarray, organs=tuple(FDG_SUVMEAN_RANGE)) -> dict[str, float]:
    """SUVmean of ``organs`` (names of ``organs.ORGANS``) from a label map on the PET grid, in one
    ``bincount`` pass (NaN voxels left out; NaN for an absent organ)."""
    from ..organs import organ

    if labels.shape != pet.shape or not np.issubdtype(labels.dtype, np.integer):
        return {}
    flat_labels = labels.reshape(-1)
    values = pet.reshape(-1)
    ok = np.isfinite(values)
    if not ok.all():
        flat_labels, values = flat_labels[ok], values[ok]
    size = int(flat_labels.max(initial=0)) + 1
    sums = np.bincount(flat_labels, weights=values.astype(np.float64), minlength=size)
    counts = np.bincount(flat_labels, minlength=size)
    out = {}
    for name in organs:
        ids = [c for c in organ(name).classes if c < size]
        n = int(counts[ids].sum()) if ids else 0
        out[name] = float(sums[ids].sum() / n) if n else math.nan
    return out


def uptake_problems(pet: np.ndarray, ct: np.ndarray | None = None, labels: np.ndarray | None = None) -> list[str]:
    """PET uptake far outside FDG ranges: from organ SUVmeans when ``labels`` (TotalSegmentator ids on the
    PET grid) hold brain, liver or aorta, else from the body median SUV when ``ct`` (HU, PET grid) is given.
    """
    if labels is not None:
        means = organ_suv_means(pet, labels)
        if any(math.isfinite(v) for v in means.values()):
            return organ_uptake_problems(means)
    if ct is not None:
        problem = body_uptake_problem(pet, ct)
        return [problem] if problem else []
    return []
