"""NIfTI in and out (nibabel; gzip through isal when installed), grids and resampling.

Arrays keep NIfTI voxel axis order (i, j, k); the 4x4 affine maps voxel indices to RAS+ mm.
"""
from __future__ import annotations

import gzip
import math
import os
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from .errors import InputError

try:  # isal's gzip is 1.4-2.7x faster than zlib's on this machine
    from isal import igzip as _gzip
except ImportError:  # pragma: no cover - exercised by monkeypatching in tests
    _gzip = None


DEFAULT_MAX_VOXELS = 2**28  # 268 M voxels (1 GiB as float32): 2.8x AutoPET's 400 x 400 x 600
MAX_VOXELS_ENV = "TOTALGEN_EVAL_MAX_VOXELS"  # an environment variable, so worker processes inherit it


def max_voxels() -> int:
    """The largest volume (voxels) any reader accepts: ``set_max_voxels``, else DEFAULT_MAX_VOXELS."""
    text = os.environ.get(MAX_VOXELS_ENV, "").strip()
    return int(text) if text.isdigit() and int(text) > 0 else DEFAULT_MAX_VOXELS


def set_max_voxels(n: int) -> None:
    """Cap the voxels per volume for this process and its workers (``--max-voxels``); InputError if n < 1."""
    if isinstance(n, bool) or not isinstance(n, (int, float)) or not math.isfinite(n) or int(n) != n or n < 1:
        raise InputError(f"{n!r} is not a positive whole number of voxels", "--max-voxels")
    os.environ[MAX_VOXELS_ENV] = str(int(n))


def check_voxel_cap(shape: tuple[int, ...], path: str | Path) -> None:
    """InputError when a volume of ``shape`` (from its header) exceeds ``max_voxels()``: refused before reading."""
    n = math.prod(int(s) for s in shape)
    cap = max_voxels()
    if n > cap:
        dims = "x".join(str(int(s)) for s in shape)
        raise InputError(f"volume of {dims} = {n:,} voxels ({n * 4 / 2**30:.1f} GiB as float32) exceeds the cap of "
                         f"{cap:,} voxels per volume; raise --max-voxels if it is genuine", path)


@dataclass(frozen=True)
class Grid:
    """A voxel grid: array shape (i, j, k) and the affine to RAS+ mm."""

    shape: tuple[int, int, int]
    affine: np.ndarray

    @property
    def spacing_mm(self) -> tuple[float, float, float]:
        """Voxel edge lengths (mm) along i, j, k."""
        return tuple(float(x) for x in np.linalg.norm(self.affine[:3, :3], axis=0))

    @property
    def voxel_ml(self) -> float:
        """Volume of one voxel in mL (1 mL = 1000 mm^3)."""
        return float(abs(np.linalg.det(self.affine[:3, :3]))) / 1000.0

    def same_as(self, other: "Grid", atol_mm: float = 1e-3) -> bool:
        """True when shapes match and affines agree to ``atol_mm``."""
        return self.shape == other.shape and np.allclose(self.affine, other.affine, atol=atol_mm)

    def bounds_mm(self) -> tuple[np.ndarray, np.ndarray]:
        """Lower and upper RAS+ corners (mm) of the box spanned by the voxel centres."""
        corners = np.array(np.meshgrid(*[[0, n - 1] for n in self.shape], indexing="ij")).reshape(3, -1)
        xyz = self.affine[:3, :3] @ corners + self.affine[:3, 3:4]
        return xyz.min(axis=1), xyz.max(axis=1)


def load_image(path: str | Path, use_isal: bool = True) -> nib.Nifti1Image:
    """Read a NIfTI file fully into memory; a corrupt or truncated file raises InputError.

    The header is read first: a volume that is not 3D or exceeds ``max_voxels()`` is refused before its
    data are decompressed. Voxels stored without scaling (slope 1, intercept 0: nearly every PET, CT and
    label file) are decompressed straight into the array, in the type stored; scaled ones go through nibabel.
    """
    path = Path(path)
    header = check_grid_header(path)
    try:
        if path.name.endswith((".nii", ".nii.gz")) and _unscaled(header.dataobj):
            return _read_into_array(path, header, use_isal)
        if path.name.endswith(".gz"):
            with _opener(path, use_isal)(path, "rb") as fh:
                return nib.Nifti1Image.from_bytes(fh.read())
        img = nib.load(path)
        return nib.Nifti1Image(np.asanyarray(img.dataobj), img.affine, img.header)
    except Exception as exc:  # zlib, isal, nibabel and numpy each raise their own types for damaged files
        raise InputError(f"not a readable NIfTI file ({type(exc).__name__}: {exc})".splitlines()[0], path) from None


def _unscaled(proxy) -> bool:
    """True when an image proxy's voxels are its values (scale slope 1, intercept 0)."""
    return getattr(proxy, "slope", None) == 1.0 and getattr(proxy, "inter", None) == 0.0


def _opener(path: Path, use_isal: bool):
    """``open`` of a file, gzip's (isal's when installed and ``use_isal``) for names ending in .gz."""
    if not path.name.endswith(".gz"):
        return open
    return _gzip.open if (use_isal and _gzip is not None) else gzip.open


def _read_into_array(path: Path, header: nib.Nifti1Image, use_isal: bool) -> nib.Nifti1Image:
    """The image of ``header`` (a proxy of ``path``) with its voxels decompressed into one array of the stored
    type and order: no copy through a byte string. The stream is read to its end, so gzip's check sum is
    verified; a file that ends early raises EOFError."""
    proxy = header.dataobj
    data = np.empty(proxy.shape, proxy.dtype, order=proxy.order)
    with _opener(path, use_isal)(path, "rb") as fh:
        if len(fh.read(proxy.offset)) != proxy.offset:
            raise EOFError("file ends inside the header")
        flat = data.reshape(-1, order="A")  # a view, in memory order
        if data.size and fh.readinto(memoryview(flat).cast("B")) != data.nbytes:
            raise EOFError("file ends inside the voxel data")
        fh.read()
    return type(header)(data, header.affine, header.header)


def read_volume(path: str | Path, dtype: type | None = np.float32, use_isal: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Array (i, j, k) and its affine; ``dtype=None`` keeps the stored type (use it for label maps)."""
    img = load_image(path, use_isal=use_isal)
    return _array_of(img, dtype, path), img.affine.copy()


def read_values(path: str | Path, use_isal: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Image values (i, j, k) with no cast where none is needed, and the affine: unscaled integer voxels
    (a CT in HU as int16) keep their stored type, float32 stays float32, anything else becomes float32."""
    img = load_image(path, use_isal=use_isal)
    stored = img.dataobj
    keep = isinstance(stored, np.ndarray) and (stored.dtype.kind in "iu" or stored.dtype == np.float32)
    return (stored if keep else _array_of(img, np.float32, path)), img.affine.copy()


def _array_of(img: nib.Nifti1Image, dtype: type | None, path: str | Path) -> np.ndarray:
    """The voxel values of an image read by :func:`load_image` as ``dtype`` (None: as stored)."""
    try:
        if dtype is None:
            data = np.asanyarray(img.dataobj)
        elif isinstance(img.dataobj, np.ndarray):
            data = img.dataobj.astype(dtype, copy=False)  # one cast, not via float64
        else:
            data = img.get_fdata(dtype=dtype)
    except Exception as exc:
        raise InputError(f"cannot decode voxel data ({exc})", path) from None
    return np.asarray(data)


def check_grid_header(path: str | Path) -> nib.Nifti1Image:
    """The image proxy of a NIfTI file after checking its header: present, readable, 3D, within the voxel cap."""
    path = Path(path)
    if not path.is_file():
        raise InputError("file not found", path)
    try:
        img = nib.load(path)
    except Exception as exc:
        raise InputError(f"not a readable NIfTI header ({exc})".splitlines()[0], path) from None
    if len(img.shape) != 3:
        raise InputError(f"expected a 3D volume, found shape {img.shape}", path)
    check_voxel_cap(img.shape, path)
    return img


def read_grid(path: str | Path) -> Grid:
    """The grid of a NIfTI file from its header alone (no voxel data read)."""
    img = check_grid_header(path)
    return Grid(tuple(int(x) for x in img.shape), img.affine.copy())


def write_volume(array: np.ndarray, affine: np.ndarray, path: str | Path,
                 extensions: list | None = None) -> Path:
    """Write ``array`` (i, j, k) with ``affine`` as NIfTI (gzip when the name ends in .gz).

    The qform and sform both carry the affine (code 1, scanner); the file appears atomically.
    """
    from .provenance import atomic_path

    path = Path(path)
    img = nib.Nifti1Image(np.asarray(array), np.asarray(affine, dtype=float))
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    for ext in extensions or []:
        img.header.extensions.append(ext)
    with atomic_path(path) as tmp:
        final = tmp.with_name(tmp.name + ("".join(path.suffixes[-2:]) if path.name.endswith(".nii.gz") else ".nii"))
        try:
            nib.save(img, final)
            final.replace(tmp)
        finally:
            final.unlink(missing_ok=True)
    return path


def resample_to_grid(array: np.ndarray, source: Grid, target: Grid, order: int, cval: float = 0.0) -> np.ndarray:
    """Resample ``array`` from ``source`` onto ``target`` (order 0: nearest, for labels; 1: linear).

    Raises ValueError when the two grids share no physical extent.
    """
    if source.same_as(target):
        return array
    lo_s, hi_s = source.bounds_mm()
    lo_t, hi_t = target.bounds_mm()
    if np.any(np.minimum(hi_s, hi_t) < np.maximum(lo_s, lo_t)):
        raise ValueError("the grids do not overlap in space")
    # voxel of target -> mm -> voxel of source
    mapping = np.linalg.inv(source.affine) @ target.affine
    out_dtype = array.dtype if order == 0 else np.float32
    # nearest neighbour: a source voxel covers its whole cell, out to half a voxel beyond its centre
    # ("grid-constant"); "constant" would drop the outer half voxel of the source grid
    mode = "grid-constant" if order == 0 else "constant"
    return ndimage.affine_transform(array, mapping[:3, :3], offset=mapping[:3, 3], output_shape=target.shape,
                                    order=order, mode=mode, cval=cval, output=out_dtype, prefilter=False)
