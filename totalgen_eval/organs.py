"""Canonical evaluation organs and the TotalSegmentator "total" (v2) classes they are made of.

Label maps everywhere in the project (phantoms, every segmentation backend) hold TotalSegmentator
class ids; this table is the one place that says which ids make which organ.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

# TotalSegmentator v2 "total" class ids used here, as in totalsegmentator.map_to_binary.class_map["total"].
CLASSES: dict[int, str] = {
    1: "spleen",
    2: "kidney_right",
    3: "kidney_left",
    5: "liver",
    10: "lung_upper_lobe_left",
    11: "lung_lower_lobe_left",
    12: "lung_upper_lobe_right",
    13: "lung_middle_lobe_right",
    14: "lung_lower_lobe_right",
    21: "urinary_bladder",
    51: "heart",
    52: "aorta",
    80: "gluteus_maximus_left",
    81: "gluteus_maximus_right",
    88: "iliopsoas_left",
    89: "iliopsoas_right",
    90: "brain",
}

N_TOTAL_CLASSES = 117  # ids 1..117 are valid TotalSegmentator "total" v2 classes


@dataclass(frozen=True)
class Organ:
    """A canonical organ: its name, the classes it unites, and a short note for reports."""

    name: str
    classes: tuple[int, ...]
    note: str = ""


ORGANS: tuple[Organ, ...] = (
    Organ("brain", (90,)),
    Organ("lungs", (10, 11, 12, 13, 14), "five lobes"),
    Organ("heart", (51,)),
    Organ("aorta", (52,), "blood pool"),
    Organ("liver", (5,)),
    Organ("spleen", (1,)),
    Organ("kidneys", (2, 3), "left + right"),
    Organ("urinary_bladder", (21,)),
    Organ("muscle", (80, 81, 88, 89), "gluteus maximus + iliopsoas"),
)

ORGAN_NAMES: tuple[str, ...] = tuple(o.name for o in ORGANS)
PAPER_ORGANS: tuple[str, ...] = ("liver", "heart", "kidneys", "spleen")  # evaluated in Yoon et al.


def organ(name: str) -> Organ:
    """The organ called ``name``; ValueError naming the valid ones otherwise."""
    for o in ORGANS:
        if o.name == name:
            return o
    raise ValueError(f"unknown organ {name!r}; choose from {', '.join(ORGAN_NAMES)}")


def organ_classes(organs: Sequence[str] = ORGAN_NAMES) -> list[int]:
    """The TotalSegmentator "total" class ids the given organs are made of, in organ order."""
    return [c for name in organs for c in organ(name).classes]


def parse_organs(spec: str | None) -> tuple[str, ...]:
    """Organ names from a comma list such as ``"liver,spleen"``; None or "all" gives all nine."""
    if spec is None or spec.strip() in ("", "all"):
        return ORGAN_NAMES
    names = tuple(s.strip() for s in spec.split(",") if s.strip())
    for n in names:
        organ(n)
    return names


def class_to_organ_lut(organs: tuple[str, ...] = ORGAN_NAMES, size: int = 256) -> np.ndarray:
    """Lookup table (uint8, length ``size``): class id -> 1-based index into ``organs``, 0 elsewhere."""
    lut = np.zeros(size, dtype=np.uint8)
    for i, name in enumerate(organs, start=1):
        for c in organ(name).classes:
            lut[c] = i
    return lut


def organ_label_map(labels: np.ndarray, organs: tuple[str, ...] = ORGAN_NAMES) -> np.ndarray:
    """Class-id label map -> organ-index map (uint8; 0 background, i = organs[i-1])."""
    if labels.size and (labels.min() < 0 or labels.max() > 255):
        raise ValueError(f"label ids must lie in 0..255, found {labels.min()}..{labels.max()}")
    return class_to_organ_lut(organs)[labels.astype(np.intp, copy=False)]
