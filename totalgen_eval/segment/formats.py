"""Organ label maps in the three formats a cohort may hold, read as TotalSegmentator "total" class ids.

1. Ours: one NIfTI whose voxel values already are "total" class ids (phantoms, every backend of ours).
2. A TotalSegmentator multilabel NIfTI (``ml=True``): voxel values are keys of a label table stored as XML
   in a NIfTI extension (written by ``totalsegmentator.nifti_ext_header``); names are mapped to "total" ids.
3. A TotalSegmentator output folder: one binary ``<class name>.nii.gz`` mask per class.

Arrays are (i, j, k) with their affine; results are uint8.

Every label file this tool writes gets a colour table beside it (``write_label_table``: ``<name>.ctbl``, the
3D Slicer format, ``id name R G B A`` per line), so viewers show organ names instead of bare ids.
"""
from __future__ import annotations

import colorsys
import logging
import xml.etree.ElementTree as ET
from pathlib import Path

import nibabel as nib
import numpy as np

from ..errors import InputError
from ..organs import CLASSES
from ..provenance import atomic_path
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


# colour tables beside label files ---------------------------------------------------------------------
#: RGB of the evaluation organs' classes (Slicer-like anatomical colours); other classes get spread hues.
ORGAN_COLOURS: dict[str, tuple[int, int, int]] = {
    "spleen": (157, 108, 162), "kidney_right": (185, 102, 83), "kidney_left": (185, 102, 83),
    "liver": (221, 130, 101), "lung_upper_lobe_left": (172, 138, 115), "lung_lower_lobe_left": (172, 138, 115),
    "lung_upper_lobe_right": (197, 165, 145), "lung_middle_lobe_right": (197, 165, 145),
    "lung_lower_lobe_right": (197, 165, 145), "urinary_bladder": (222, 198, 101), "heart": (206, 110, 84),
    "aorta": (224, 97, 76), "brain": (250, 250, 225), "gluteus_maximus_left": (192, 104, 88),
    "gluteus_maximus_right": (192, 104, 88), "iliopsoas_left": (177, 122, 101), "iliopsoas_right": (177, 122, 101),
}


def class_colour(class_id: int, name: str) -> tuple[int, int, int]:
    """RGB (0-255) of a class: ORGAN_COLOURS, else a hue spread by the golden ratio over the id (stable)."""
    if name in ORGAN_COLOURS:
        return ORGAN_COLOURS[name]
    r, g, b = colorsys.hsv_to_rgb((class_id * 0.618033988749895) % 1.0, 0.55, 0.9)
    return int(round(255 * r)), int(round(255 * g)), int(round(255 * b))


def label_table_path(label_path: str | Path) -> Path:
    """``<name>.ctbl`` beside ``<name>.nii.gz`` (or ``<name>.nii``)."""
    label_path = Path(label_path)
    return label_path.with_name(_stem(label_path) + ".ctbl")


def label_table_lines(ids: list[int] | None = None) -> list[str]:
    """The lines of a Slicer colour table for TotalSegmentator "total" classes (``ids``: only these; default all
    known): ``0 background 0 0 0 0`` then ``id name R G B 255``."""
    names = {cid: name for name, cid in total_class_ids().items()}
    wanted = sorted(names) if ids is None else sorted({int(i) for i in ids if int(i) != 0})
    lines = ["0 background 0 0 0 0"]
    for cid in wanted:
        name = names.get(cid, f"class_{cid}")
        lines.append(f"{cid} {name} {' '.join(map(str, class_colour(cid, name)))} 255")
    return lines


def write_label_table(label_path: str | Path, ids: list[int] | None = None) -> Path:
    """Write the colour/name table of a label file beside it (``label_table_path``), atomically; returns its path.

    Example: ``write_label_table("cases/p0_labels.nii.gz")`` writes ``cases/p0_labels.ctbl`` whose line
    ``5 liver 221 130 101 255`` makes 3D Slicer show "liver" for voxels of value 5.
    """
    path = label_table_path(label_path)
    lines = label_table_lines(ids)
    header = [f"# Color table file {path.name}", f"# {len(lines)} values"]
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(header + lines) + "\n")
    return path
