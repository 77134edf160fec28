"""One case of a cohort: demographics, the paths of its volumes, lazy readers and file checks.

Arrays are NIfTI voxel order (i, j, k) in RAS+; CT in HU, PET in SUV (body weight, g/mL), labels hold
TotalSegmentator "total" class ids.
"""
from __future__ import annotations

import gzip
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

import nibabel as nib
import numpy as np

from .. import volumes
from ..errors import InputError
from ..organs import CLASSES
from ..volumes import Grid
from .plausibility import (BQML_MAX_SUV, check_file_dtype, check_pet, ct_problems, dtype_problem, pet_problems,
                           uptake_problems)

CT_FILL_HU = -1024.0  # CT value outside the scanned field (as in AutoPET's CTres)


@dataclass(frozen=True)
class Case:
    """A PET/CT study: id, demographics (age in years, sex "M"/"F", height m, weight kg; NaN or None
    when unknown) and the paths of its CT (HU), PET (SUV), optional organ label map or folder of
    per-class masks, and optional lesion mask (non-zero = lesion, as AutoPET's SEG). Nothing is read until
    a ``read_*`` method is called.
    """

    case_id: str
    age: float
    sex: str | None
    height_m: float
    weight_kg: float
    ct: Path
    pet: Path
    labels: Path | None = None
    extra: Mapping = field(default_factory=dict, hash=False, compare=False)
    resample_ct: bool = False  # read_ct() resamples CT onto the PET grid when the grids differ
    lesions: Path | None = None  # lesion mask (AutoPET SEG.nii.gz, nnU-Net labelsTr, our `lesions` column)

    def grid(self) -> Grid:
        """The PET grid (shape (i, j, k), affine to RAS+ mm) from the header alone."""
        return volumes.read_grid(self.pet)

    def read_pet(self) -> tuple[np.ndarray, np.ndarray]:
        """PET in SUV as float32 (i, j, k) and its affine; InputError for a complex or boolean voxel type,
        +-inf voxels, an all-zero or clearly negative PET, or one that looks like Bq/mL (NaN is allowed).
        """
        check_file_dtype(self.pet, "pet")
        pet, affine = volumes.read_volume(self.pet, dtype=np.float32)
        check_suv(pet, self.pet)
        return pet, affine

    def read_ct(self, resample: bool | None = None, pet_grid: Grid | None = None) -> tuple[np.ndarray, np.ndarray]:
        """CT in HU as float32 (i, j, k) on the PET grid, and the PET affine.

        When the CT lies on another grid it is resampled linearly onto the PET grid (outside: -1024 HU)
        if ``resample`` (default: the cohort's ``resample_ct``), else InputError names both grids.
        ``pet_grid``: the PET's grid when the caller has it (from ``read_pet``), so its header is not read again.
        """
        resample = self.resample_ct if resample is None else resample
        check_file_dtype(self.ct, "ct")
        ct, ct_affine = volumes.read_volume(self.ct, dtype=np.float32)
        ct_grid, pet_grid = Grid(ct.shape, ct_affine), pet_grid if pet_grid is not None else self.grid()
        if ct_grid.same_as(pet_grid):
            return ct, ct_affine
        if not resample:
            raise grid_mismatch(self.ct, ct_grid, pet_grid)
        try:
            ct = volumes.resample_to_grid(ct, ct_grid, pet_grid, order=1, cval=CT_FILL_HU)
        except ValueError:
            raise InputError("CT and PET do not overlap in space; cannot resample CT onto the PET grid",
                             self.ct) from None
        return ct, pet_grid.affine.copy()

    def read_labels(self, classes: Iterable[int] | None = None) -> tuple[np.ndarray, np.ndarray] | None:
        """Organ label map (TotalSegmentator class ids, uint8 when they fit) on the PET grid, or None.

        ``labels`` may be one multilabel file or a folder of per-class masks ``<class name>.nii.gz``;
        from a folder only ``classes`` are read (default: those of ``organs.CLASSES``, the ones the
        evaluation uses). A map on another grid is resampled onto the PET grid (nearest neighbour).
        """
        if self.labels is None:
            return None
        if Path(self.labels).is_dir():
            labels, affine = read_class_masks(Path(self.labels), classes)
        else:
            labels, affine = volumes.read_volume(self.labels, dtype=None)
            labels = as_label_array(labels, self.labels)
        pet_grid = self.grid()
        source = Grid(labels.shape, affine)
        if not source.same_as(pet_grid):
            try:
                labels = volumes.resample_to_grid(labels, source, pet_grid, order=0, cval=0)
            except ValueError:
                raise InputError("label map and PET do not overlap in space", self.labels) from None
            affine = pet_grid.affine.copy()
        return labels, affine

    def read_lesions(self) -> np.ndarray | None:
        """The lesion mask as bool (i, j, k) on the PET grid (non-zero voxels of the file; resampled
        nearest-neighbour when it lies on another grid), or None when the case has no lesion mask.
        """
        if self.lesions is None:
            return None
        check_file_dtype(self.lesions, "lesions")
        mask, affine = volumes.read_volume(self.lesions, dtype=None)
        mask = np.asarray(mask) != 0
        pet_grid, source = self.grid(), Grid(mask.shape, affine)
        if not source.same_as(pet_grid):
            try:
                mask = volumes.resample_to_grid(mask.astype(np.uint8), source, pet_grid, order=0, cval=0) != 0
            except ValueError:
                raise InputError("lesion mask and PET do not overlap in space", self.lesions) from None
        return mask

    def demographics(self) -> dict:
        """age (years), sex, height_m, weight_kg as a plain dict."""
        return {"age": self.age, "sex": self.sex, "height_m": self.height_m, "weight_kg": self.weight_kg}


def check_suv(pet: np.ndarray, path: Path) -> None:
    """InputError when a PET array cannot be SUV: +-inf voxels, all zero, negative beyond noise, or
    activity concentration (Bq/mL); see ``plausibility.pet_problems``. NaN voxels are allowed.
    """
    check_pet(pet, path)


def grid_mismatch(ct_path: Path, ct: Grid, pet: Grid) -> InputError:
    """The error for a CT that does not lie on the PET grid."""
    def describe(g: Grid) -> str:
        spacing = "x".join(f"{s:.4g}" for s in g.spacing_mm)
        origin = ",".join(f"{x:.1f}" for x in g.affine[:3, 3])
        return f"shape {tuple(g.shape)} spacing {spacing} mm origin ({origin})"

    what = "shape" if ct.shape != pet.shape else "affine"
    return InputError(f"CT and PET differ in {what}: CT {describe(ct)}, PET {describe(pet)}; "
                      "use --resample-ct (resample_ct=True) to resample CT onto the PET grid", ct_path)


def as_label_array(labels: np.ndarray, path: Path) -> np.ndarray:
    """Integer class ids (uint8 when they fit in 0..255); InputError for fractional or negative values."""
    if np.issubdtype(labels.dtype, np.floating):
        rounded = np.rint(labels)
        if not np.array_equal(rounded, labels):
            raise InputError("label map holds non-integer values", path)
        labels = rounded.astype(np.int32)
    if labels.size and labels.min() < 0:
        raise InputError("label map holds negative class ids", path)
    if labels.dtype != np.uint8 and (labels.size == 0 or labels.max() <= 255):
        labels = labels.astype(np.uint8)
    return labels


def total_class_ids() -> dict[str, int]:
    """TotalSegmentator "total" class name -> id: its own map when installed, else organs.CLASSES."""
    try:
        from totalsegmentator.map_to_binary import class_map
        return {name: int(i) for i, name in class_map["total"].items()}
    except Exception:  # the `seg` extra is optional
        return {name: i for i, name in CLASSES.items()}


def read_class_masks(folder: Path, classes: Iterable[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A uint8 label map from a folder of per-class masks ``<class name>.nii.gz`` (TotalSegmentator's
    default output), and the masks' affine. Reads only ``classes`` (default: organs.CLASSES ids).
    """
    wanted = set(CLASSES) if classes is None else {int(c) for c in classes}
    ids = {name: i for name, i in total_class_ids().items() if i in wanted}
    files = sorted((ids[p.name[:-7]], p) for p in folder.glob("*.nii.gz") if p.name[:-7] in ids)
    if not files:
        raise InputError(f"no per-class masks found (expected files such as liver.nii.gz, "
                         f"{len(ids)} class names known)", folder)
    labels = affine = None
    for class_id, path in files:
        mask, mask_affine = volumes.read_volume(path, dtype=None)
        if labels is None:
            labels, affine = np.zeros(mask.shape, np.uint8), mask_affine
        elif not Grid(mask.shape, mask_affine).same_as(Grid(labels.shape, affine)):
            raise InputError("per-class mask lies on another grid than the others in its folder", path)
        labels[np.asarray(mask) > 0] = class_id
    return labels, affine


# ---------------------------------------------------------------------------------------------- checks

def file_grid(path: Path, role: str = "image") -> Grid:
    """The grid of a NIfTI file from its header, after a cheap check that the file is complete.

    For .nii.gz the gzip trailer's uncompressed size must match header + voxel data; a mismatch is
    confirmed by decompressing (multi-member gzip files have a partial trailer), so complete files
    never fail. The voxel type must suit ``role`` ("pet", "ct", "labels", "lesions": no complex type;
    no boolean or 1-bit type for PET and CT). Raises InputError naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError("file not found", path)
    try:
        img = nib.load(path)
        shape = tuple(int(x) for x in img.shape)
        proxy = img.dataobj  # where nibabel will read the voxels from, and their stored type
        expected = int(proxy.offset) + int(np.prod(shape)) * np.dtype(proxy.dtype).itemsize
    except Exception as exc:
        if "data code 1 not supported" in str(exc):  # NIfTI DT_BINARY: nibabel cannot read 1-bit voxels
            raise InputError(dtype_problem(np.dtype("V1"), role), path) from None
        raise InputError(f"not a readable NIfTI header ({type(exc).__name__}: {exc})".splitlines()[0],
                         path) from None
    if len(shape) != 3:
        raise InputError(f"expected a 3D volume, found shape {shape}", path)
    bad_type = dtype_problem(proxy.dtype, role)
    if bad_type:
        raise InputError(bad_type, path)
    volumes.check_voxel_cap(shape, path)  # before any decompression
    if path.name.endswith(".gz"):
        with open(path, "rb") as fh:
            fh.seek(-4, 2)
            isize = int.from_bytes(fh.read(4), "little")
        if isize != expected % 2**32:
            got = decompressed_size(path)
            if got < expected:
                raise InputError(f"truncated: {got} of {expected} bytes of header and voxel data", path)
    elif path.stat().st_size < expected:
        raise InputError(f"truncated: {path.stat().st_size} of {expected} bytes", path)
    return Grid(shape, img.affine.copy())


def decompressed_size(path: Path) -> int:
    """Bytes a gzip file decompresses to; InputError if the stream is corrupt or cut short."""
    opener = volumes._gzip.open if volumes._gzip is not None else gzip.open
    total = 0
    try:
        with opener(path, "rb") as fh:
            while chunk := fh.read(1 << 22):
                total += len(chunk)
    except Exception as exc:
        raise InputError(f"corrupt or truncated gzip data ({type(exc).__name__}: {exc})".splitlines()[0],
                         path) from None
    return total


def case_problems(case: Case, deep: bool = False) -> list[InputError]:
    """What is wrong with one case: missing or truncated files, CT and PET on different grids (unless
    the case resamples), labels that miss the PET; with ``deep`` also the data: unreadable voxels,
    a PET in Bq/mL, NaNs. An empty list means the case is usable.
    """
    problems: list[InputError] = []
    grids: dict[str, Grid] = {}
    for role in ("pet", "ct"):
        try:
            grids[role] = file_grid(getattr(case, role), role)
        except InputError as err:
            problems.append(err)
    if problems:
        return problems
    if not grids["ct"].same_as(grids["pet"]):
        if not case.resample_ct:
            return [grid_mismatch(case.ct, grids["ct"], grids["pet"])]
        if not overlap(grids["ct"], grids["pet"]):
            return [InputError("CT and PET do not overlap in space", case.ct)]
    if case.labels is not None and not Path(case.labels).is_dir():
        try:
            label_grid = file_grid(case.labels)
            if not overlap(label_grid, grids["pet"]):
                problems.append(InputError("label map and PET do not overlap in space", case.labels))
        except InputError as err:
            problems.append(err)
    elif case.labels is not None and not any(Path(case.labels).glob("*.nii.gz")):
        problems.append(InputError("label folder holds no .nii.gz masks", case.labels))
    if case.lesions is not None:
        try:
            if not overlap(file_grid(case.lesions, "lesions"), grids["pet"]):
                problems.append(InputError("lesion mask and PET do not overlap in space", case.lesions))
        except InputError as err:
            problems.append(err)
    if deep and not problems:
        problems.extend(data_problems(case))
    return problems


def data_problems(case: Case) -> list[InputError]:
    """Problems found by reading the voxel data, all of them (``plausibility``): undecodable files,
    non-finite voxels (NaN, +-inf: how many), an all-zero, negative or Bq/mL PET, uptake far outside FDG
    ranges, CT not in HU, unreadable labels or lesion mask.
    """
    out: list[InputError] = []
    pet = ct = labels = None
    try:
        check_file_dtype(case.pet, "pet")
        pet, _ = volumes.read_volume(case.pet, dtype=np.float32)
        out += [InputError(p, case.pet) for p in pet_problems(pet)]
    except InputError as err:
        out.append(err)
    try:
        ct, _ = case.read_ct()
        out += [InputError(p, case.ct) for p in ct_problems(ct)]
    except InputError as err:
        out.append(err)
    try:
        got = case.read_labels()
        labels = None if got is None else got[0]
    except InputError as err:
        out.append(err)
    try:
        case.read_lesions()
    except InputError as err:
        out.append(err)
    if pet is not None and not pet_problems(pet, include_nan=False):
        out += [InputError(p, case.pet) for p in uptake_problems(pet, ct, labels)]
    return out


def overlap(a: Grid, b: Grid) -> bool:
    """True when the boxes spanned by the two grids' voxel centres share some extent."""
    lo_a, hi_a = a.bounds_mm()
    lo_b, hi_b = b.bounds_mm()
    return bool(np.all(np.minimum(hi_a, hi_b) >= np.maximum(lo_a, lo_b)))
