"""Demographic vocabulary shared by every layer: sex codes, DICOM ages, age groups."""
from __future__ import annotations

import math
import re
from typing import Sequence

import numpy as np
import pandas as pd

DEFAULT_AGE_BINS: tuple[float, ...] = (18, 40, 60, 80)
AGE_BIN_PRESETS: dict[str, tuple[float, ...]] = {
    "default": DEFAULT_AGE_BINS,
    "paper": (65,),  # Yoon et al.: <=65 / >65
    "decades": (20, 30, 40, 50, 60, 70, 80, 90),
}
SEXES = ("F", "M")

_DICOM_AGE = re.compile(r"^\s*(\d{1,3})\s*([DWMY]?)\s*$", re.IGNORECASE)
_UNIT_YEARS = {"Y": 1.0, "M": 1 / 12, "W": 7 / 365.25, "D": 1 / 365.25, "": 1.0}


def parse_age(value: object) -> float:
    """Age in years from a DICOM age string (``"057Y"``, ``"006M"``) or a number; NaN if missing.

    Raises ValueError for text that is neither.
    """
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return math.nan
    if isinstance(value, (int, float, np.integer, np.floating)):
        return float(value)
    text = str(value).strip()
    if text == "" or text.lower() in ("nan", "na", "none"):
        return math.nan
    try:
        return float(text)
    except ValueError:
        pass
    m = _DICOM_AGE.match(text)
    if not m:
        raise ValueError(f"unparseable age {text!r} (expected years or a DICOM age such as '057Y')")
    return int(m.group(1)) * _UNIT_YEARS[m.group(2).upper()]


def parse_sex(value: object) -> str:
    """``"M"`` or ``"F"`` from M/F/male/female/1/0 (the paper's coding: F=0, M=1); ValueError otherwise."""
    text = str(value).strip().upper()
    if text in ("M", "MALE", "1", "1.0"):
        return "M"
    if text in ("F", "FEMALE", "0", "0.0"):
        return "F"
    raise ValueError(f"unknown sex {value!r} (expected M or F)")


AGE_RANGE_YEARS = (0.0, 120.0)
HEIGHT_RANGE_M = (0.5, 2.5)
WEIGHT_RANGE_KG = (2.0, 400.0)


def demographic_problem(age: float = math.nan, height_m: float = math.nan, weight_kg: float = math.nan) -> str | None:
    """The first implausible value among age (years, 0-120), height (m, 0.5-2.5) and weight (kg, 2-400), said
    in words (a height that reads as centimetres says so); None when all are plausible or missing (NaN).
    """
    for value, (low, high), what, unit in ((age, AGE_RANGE_YEARS, "age", "years"),
                                           (height_m, HEIGHT_RANGE_M, "height_m", "m"),
                                           (weight_kg, WEIGHT_RANGE_KG, "weight_kg", "kg")):
        if value is None or (isinstance(value, float) and math.isnan(value)):
            continue
        value = float(value)
        if math.isfinite(value) and low <= value <= high:
            continue
        hint = ""
        if what == "height_m" and 50 <= value <= 250:
            hint = f" (cm? {value:g} cm is {value / 100:g} m)"
        elif what == "height_m" and 500 <= value <= 2500:
            hint = f" (mm? {value:g} mm is {value / 1000:g} m)"
        return f"implausible {what} {value:g}: expected {low:g}-{high:g} {unit}{hint}"
    return None


def check_demographics(age: float = math.nan, height_m: float = math.nan, weight_kg: float = math.nan) -> None:
    """ValueError (one line) for an age, height or weight outside its plausible range (see demographic_problem)."""
    problem = demographic_problem(age, height_m, weight_kg)
    if problem:
        raise ValueError(problem)


def parse_age_bins(spec: str | Sequence[float] | None) -> tuple[float, ...]:
    """Age-bin edges from a preset name (``default``, ``paper``, ``decades``) or ``"18,40,60,80"``."""
    if spec is None:
        return DEFAULT_AGE_BINS
    if not isinstance(spec, str):
        edges = tuple(float(x) for x in spec)
    elif spec in AGE_BIN_PRESETS:
        return AGE_BIN_PRESETS[spec]
    else:
        try:
            edges = tuple(float(x) for x in spec.split(",") if x.strip())
        except ValueError:
            raise ValueError(f"age bins {spec!r}: expected a preset ({', '.join(AGE_BIN_PRESETS)}) "
                             "or comma-separated edges such as 18,40,60,80") from None
    if not edges or any(b <= a for a, b in zip(edges, edges[1:])):
        raise ValueError(f"age bins {spec!r} must be increasing")
    return edges


def _fmt(x: float) -> str:
    return f"{x:g}"


def age_group_labels(bins: Sequence[float]) -> list[str]:
    """Labels of the groups that ``bins`` make, youngest first.

    One edge ``(65,)`` gives ``["<=65", ">65"]`` (the paper's split); more give
    ``["<18", "18-40", "40-60", "60-80", "80+"]`` (left-closed intervals).
    """
    bins = tuple(bins)
    if len(bins) == 1:
        return [f"<={_fmt(bins[0])}", f">{_fmt(bins[0])}"]
    return ([f"<{_fmt(bins[0])}"] + [f"{_fmt(a)}-{_fmt(b)}" for a, b in zip(bins, bins[1:])]
            + [f"{_fmt(bins[-1])}+"])


def age_group(ages: pd.Series | Sequence[float], bins: Sequence[float] = DEFAULT_AGE_BINS) -> pd.Series:
    """The age-group label of each age (years); NaN ages give NaN. Labels as in :func:`age_group_labels`."""
    ages = pd.Series(ages, dtype=float)
    bins = tuple(bins)
    labels = age_group_labels(bins)
    if len(bins) == 1:
        idx = np.where(ages <= bins[0], 0, 1)
    else:
        idx = np.searchsorted(np.asarray(bins), ages.to_numpy(), side="right")
    out = pd.Series([labels[i] for i in idx], index=ages.index, dtype=object)
    out[ages.isna()] = np.nan
    return out
