"""Organ label maps in the three formats a cohort may hold, read as TotalSegmentator "total" class ids.

1. Ours: one NIfTI whose voxel values already are "total" class ids (phantoms, every backend of ours).
2. A TotalSegmentator multilabel NIfTI (``ml=True``): voxel values are keys of a label table stored as XML
   in a NIfTI extension (written by ``totalsegmentator.nifti_ext_header``); names are mapped to "total" ids.
3. A TotalSegmentator output folder: one binary ``<class name>.nii.gz`` mask per class.

Arrays are (i, j, k) with their affine; results are uint8.
"""
from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
from pathlib import Path

import nibabel as nib
import numpy as np

from ..errors import InputError
from ..organs import CLASSES
from ..volumes import load_image

log = logging.getLogger(__name__)


def total_class_ids() -> dict[str, int]:
    """TotalSegmentator "total" class name -> id, from the installed package (else the ids organs.py uses)."""
    try:
        from totalsegmentator.map_to_binary import class_map
    except ImportError:
        return {name: cid for cid, name in CLASSES.items()}
    return {name: int(cid) for cid, name in class_map["total"].items()}


def _label_table_xml(img: nib.Nifti1Image) -> str | None:
    """The XML label table of a TotalSegmentator multilabel file, or None when the file has none."""
    for ext in img.header.extensions:
        content = ext.get_content()
        text = content.decode("utf-8", "replace") if isinstance(content, bytes) else str(content)
        if "LabelTable" in text:
            return text
    return None


def read_label_table(img: nib.Nifti1Image) -> dict[int, str] | None:
    """{voxel value: class name} stored in a multilabel NIfTI's extension; None when there is none.

    Uses ``totalsegmentator.nifti_ext_header.load_multilabel_nifti`` when installed.
    """
    xml = _label_table_xml(img)
    if xml is None:
        return None
    try:
        from totalsegmentator.nifti_ext_header import load_multilabel_nifti
    except ImportError:
        load_multilabel_nifti = None
    if load_multilabel_nifti is not None and "LabelTable" in _content_text(img.header.extensions[0]):
        _, table = load_multilabel_nifti(img)
        return {int(k): str(v) for k, v in table.items()}
    root = ET.fromstring(xml.strip())
    return {int(lab.get("Key")): (lab.text or "").strip() for lab in root.iter("Label")}


def _content_text(ext) -> str:
    content = ext.get_content()
    return content.decode("utf-8", "replace") if isinstance(content, bytes) else str(content)


def names_to_total_lut(table: dict[int, str], path: Path) -> np.ndarray:
    """Lookup table: file's voxel value -> "total" class id (0 for names that are not "total" classes)."""
    ids = total_class_ids()
    size = max([255, *table]) + 1
    lut = np.zeros(size, dtype=np.uint8)
    unknown = []
    for value, name in table.items():
        if name in ids:
            lut[value] = ids[name]
        elif value != 0:
            unknown.append(name)
    if unknown and len(unknown) == len([v for v in table if v != 0]):
        raise InputError(f"none of the label names ({', '.join(unknown[:5])} ...) is a TotalSegmentator "
                         "'total' class", path)
    if unknown:
        log.warning("%s: ignoring labels that are not 'total' classes: %s", path, ", ".join(unknown))
    return lut


def read_multilabel(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A label NIfTI (ours, or TotalSegmentator's with a label table) as uint8 "total" ids and its affine."""
    img = load_image(path)
    data = np.asanyarray(img.dataobj)
    if not np.issubdtype(data.dtype, np.integer):
        rounded = np.rint(data)
        if np.any(rounded != data):
            raise InputError("label map holds non-integer values", path)
        data = rounded.astype(np.int64)
    table = read_label_table(img)
    if table is None:
        return data, img.affine.copy()  # ours: already class ids (validated by metrics.check_label_ids)
    if data.size and (data.min() < 0 or data.max() >= 1 << 16):
        raise InputError(f"label values {data.min()}..{data.max()} out of range", path)
    lut = names_to_total_lut(table, path)
    if data.size and data.max() >= lut.size:
        raise InputError(f"label value {int(data.max())} has no entry in the file's label table", path)
    return lut[data.astype(np.intp, copy=False)], img.affine.copy()


def read_mask_folder(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """A folder of TotalSegmentator ``<name>.nii.gz`` binary masks as one uint8 "total" id map and affine."""
    ids = total_class_ids()
    masks = sorted(p for p in Path(folder).glob("*.nii*") if _stem(p) in ids)
    if not masks:
        raise InputError("no <class>.nii.gz masks of TotalSegmentator 'total' classes in this folder", folder)
    labels, affine, shape = None, None, None
    for path in masks:
        img = load_image(path)
        if labels is None:
            shape, affine = img.shape, img.affine.copy()
            labels = np.zeros(shape, dtype=np.uint8)
        elif img.shape != shape or not np.allclose(img.affine, affine, atol=1e-3):
            raise InputError(f"mask grid differs from {masks[0].name}'s", path)
        labels[np.asanyarray(img.dataobj) > 0] = ids[_stem(path)]
    return labels, affine


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".nii"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def read_labels_any(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Labels from any of the three formats (folder of masks, multilabel with table, plain ids)."""
    path = Path(path)
    if path.is_dir():
        return read_mask_folder(path)
    return read_multilabel(path)
