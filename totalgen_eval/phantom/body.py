"""The body around the organs: stature, torso stretches (lean core plus a fat layer), neck, head and legs.

Coordinates as in ``shapes`` (RAS+ mm). The torso is cut into thorax, abdomen and pelvis at levels that are
fractions of body height below the head vertex, moved where the organs need it; each stretch's lean core is
the anthropometric superellipse grown until it holds the organs with a WALL_MM wall, and everything stays
CANVAS_MARGIN_MM inside the canvas (fat gives way first, then the wall).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import numpy as np

from .shapes import SIDES, Ellipsoid, Shape, ZCylinder, ZSuperCylinder

TOP_MARGIN_MM = 20.0  # head vertex below the canvas top (z = 0)
WALL_MM = 15.0  # lean tissue between organs and the fat layer
CANVAS_MARGIN_MM = 6.0  # the body stays this far inside the canvas faces (x, y)
TORSO_POWER = 3.0  # torso cross-sections are superellipses |x/a|^p + |y/b|^p <= 1 (rounded rectangles)

# Levels: at least this fraction of body height below the head vertex (organs may push them lower)
ILIAC_CREST_LEVEL = 0.43  # abdomen / pelvis boundary
CROTCH_LEVEL = 0.54  # pelvis / legs boundary
LEG_END_LEVEL = 0.60  # the thighs end here (the canvas shows head to mid-thigh)
ILIAC_BELOW_DIAPHRAGM_MM = 40.0  # the abdomen is at least this long
CROTCH_BELOW_ORGANS_MM = 10.0

# Body scale: lengths "at reference height" scale with height; the lean core with ``Stature.lean_scale``
REFERENCE_HEIGHT_MM = 1750.0
REFERENCE_BMI = 25.0
LEAN_HEIGHT_EXP = 0.6
LEAN_BMI_EXP = 0.15
LEAN_FEMALE_FACTOR = 0.94
CORE_HALF_WIDTH_MM: dict[str, tuple[float, float]] = {  # lean core (x, y) at lean scale 1
    "thorax": (150.0, 100.0), "abdomen": (140.0, 100.0), "pelvis": (150.0, 105.0)}
FEMALE_PELVIS_HALF_WIDTH_MM = 160.0  # women's pelvis core is wider (x)
THORAX_FAT_SHARE = 0.6  # of the trunk's fat layer
NECK_RADIUS_MM = 55.0  # lean neck at lean scale 1
NECK_FAT_SHARE = 0.4  # of the trunk's fat layer

# Legs (mm, or shares of the pelvis core's half width)
LEG_MIN_LENGTH_MM = 50.0
LEG_OFFSET_SHARE = 0.5  # leg axes this far from the midline
LEG_RADIUS_SHARE = 0.48  # lean leg radius
LEG_FAT_SHARE = 0.8  # of the trunk's fat layer
HIP_ABOVE_CROTCH_MM = 60.0  # femoral heads (and the spine's bottom) above the crotch
FEMUR_RADIUS_MM = 13.0
FEMORAL_HEAD_RADIUS_MM = 24.0


@dataclass(frozen=True)
class BodySegment:
    """A stretch of body: outer outline and lean core (fat between them)."""

    name: str
    outer: Shape
    core: Shape
    visceral: Shape | None = None  # abdomen/pelvis: the cavity inside the muscular wall (fat-marbled)


@dataclass(frozen=True)
class Stature:
    """What placement needs of the demographics: height (mm), sex, BMI (kg/m^2), lean-core scale, vertex z (mm)."""

    height_mm: float
    sex: str
    bmi: float
    lean_scale: float
    vertex_z: float = -TOP_MARGIN_MM

    def level(self, fraction: float) -> float:
        """z (mm) a ``fraction`` of body height below the head vertex."""
        return self.vertex_z - fraction * self.height_mm

    def at_height(self, length_mm: float) -> float:
        """A length given at reference height (mm), scaled with body height."""
        return length_mm * self.height_mm / REFERENCE_HEIGHT_MM


def stature(demo: Mapping) -> Stature:
    """Stature of ``demo`` (sex "M"/"F", height_m, weight_kg); the lean core grows with height and BMI."""
    height_mm = float(demo["height_m"]) * 1000.0
    sex = str(demo["sex"])
    bmi = float(demo["weight_kg"]) / float(demo["height_m"]) ** 2
    scale = ((height_mm / REFERENCE_HEIGHT_MM) ** LEAN_HEIGHT_EXP * (bmi / REFERENCE_BMI) ** LEAN_BMI_EXP
             * (1.0 if sex == "M" else LEAN_FEMALE_FACTOR))
    return Stature(height_mm, sex, bmi, scale)


@dataclass(frozen=True)
class TrunkLevels:
    """z (mm) of the torso's boundaries, top to bottom."""

    top: float  # thorax top: above the aortic arch
    diaphragm: float
    iliac: float
    crotch: float


def _outline_points(shapes: list[Shape]) -> np.ndarray:
    return np.concatenate([s.xy_outline() for s in shapes]) if shapes else np.zeros((0, 2))


def _fit_core(anthro: tuple[float, float], pts: np.ndarray, wall: float, power: float,
              y0: float | None = None) -> tuple[float, float, float]:
    """Core superellipse (y centre, semi-axis x, semi-axis y) in mm: the anthropometric one, widened and
    deepened just enough (smallest a + b on a search grid) that every outline point lies at least
    ``wall`` inside; centred in y on the points unless ``y0`` is given."""
    if not len(pts):
        return 0.0 if y0 is None else y0, anthro[0], anthro[1]
    a0, b0 = anthro[0] - wall, anthro[1] - wall
    if y0 is None:
        y0 = float(pts[:, 1].max() + pts[:, 1].min()) / 2
    x, y = np.abs(pts[:, 0]), np.abs(pts[:, 1] - y0)
    best = None
    for a in np.linspace(max(a0, x.max() * 1.001), max(a0, x.max() * 1.001) * 2.0, 101):
        b = max(b0, float((y / (1.0 - (x / a) ** power) ** (1.0 / power)).max()))
        if best is None or a + b < best[0] + best[1]:
            best = (a, b)
    return y0, best[0] + wall, best[1] + wall


def _torso_section(anthro: tuple[float, float], shapes: list[Shape], fat_mm: float, fov_xy: tuple[float, float],
                   z0: float, z1: float) -> tuple[ZSuperCylinder, ZSuperCylinder]:
    """(outer, core) of a torso stretch: the core holds the shapes with a WALL_MM wall, the fat layer
    lies outside it; both are kept CANVAS_MARGIN_MM inside the canvas (fat gives way first, then the
    wall, then the cross-section gets squarer so the organs stay inside the core)."""
    pts = _outline_points(shapes)
    y0, a, b = _fit_core(anthro, pts, WALL_MM, TORSO_POWER)
    x_lim, y_lim = fov_xy[0] / 2 - CANVAS_MARGIN_MM, fov_xy[1] / 2 - CANVAS_MARGIN_MM
    if abs(y0) + b > y_lim:  # re-centre towards the canvas middle and fit again
        y0 = float(np.clip(y0, -max(y_lim - b, 0.0), max(y_lim - b, 0.0)))
        y0, a, b = _fit_core(anthro, pts, WALL_MM, TORSO_POWER, y0)
    a_c, b_c = min(a, x_lim), min(b, y_lim - abs(y0))
    power = TORSO_POWER
    while len(pts) and power < 12 and (np.abs(pts[:, 0] / a_c) ** power
                                        + np.abs((pts[:, 1] - y0) / b_c) ** power).max() > 0.98:
        power += 1.0
    outer = (min(a + fat_mm, x_lim), min(b + fat_mm, y_lim - abs(y0)))
    return (ZSuperCylinder((0.0, y0), outer, z0, z1, power), ZSuperCylinder((0.0, y0), (a_c, b_c), z0, z1, power))


def _overlapping(shapes: list[Shape], z0: float, z1: float) -> list[Shape]:
    return [s for s in shapes if s.z_range[0] < z1 and s.z_range[1] > z0]


def fat_thickness_mm(bmi: float, sex: str) -> float:
    """Subcutaneous fat layer (mm) of the trunk: grows with BMI and saturates; women +15%."""
    t = 5.0 + 30.0 * math.tanh((bmi - 22.0) / 12.0)
    return max(2.0, t) * (1.15 if sex == "F" else 1.0)


def visceral_fat_fraction(bmi: float, sex: str) -> float:
    """Share of fat in the abdominal cavity's background tissue: rises with BMI, higher in men."""
    return float(np.clip(0.15 + 0.015 * (bmi - 25.0) + (0.05 if sex == "M" else 0.0), 0.05, 0.5))


def trunk_levels(st: Stature, organ_shapes: list[Shape], z_shoulders: float, z_diaphragm: float) -> TrunkLevels:
    """Boundaries (z, mm) of thorax, abdomen and pelvis: the anthropometric levels, moved to hold the organs."""
    top = max(z_shoulders, max(s.z_range[1] for s in organ_shapes) + WALL_MM)
    iliac = min(st.level(ILIAC_CREST_LEVEL), z_diaphragm - ILIAC_BELOW_DIAPHRAGM_MM)
    crotch = min(st.level(CROTCH_LEVEL), min(s.z_range[0] for s in organ_shapes) - CROTCH_BELOW_ORGANS_MM)
    return TrunkLevels(top, z_diaphragm, iliac, crotch)


def torso_segment(name: str, z0: float, z1: float, st: Stature, shapes: list[Shape], fat_mm: float,
                  fov_xy: tuple[float, float]) -> BodySegment:
    """One torso stretch holding the ``shapes`` it overlaps; abdomen and pelvis get a visceral cavity."""
    half_x, half_y = CORE_HALF_WIDTH_MM[name]
    if name == "pelvis" and st.sex != "M":
        half_x = FEMALE_PELVIS_HALF_WIDTH_MM
    fat = fat_mm * (THORAX_FAT_SHARE if name == "thorax" else 1.0)
    outer, core = _torso_section((half_x * st.lean_scale, half_y * st.lean_scale), _overlapping(shapes, z0, z1),
                                 fat, fov_xy, z0, z1)
    if name == "thorax":
        return BodySegment(name, outer, core)
    (a, b), wall = core.axes_xy, min(WALL_MM, 0.5 * min(core.axes_xy))
    return BodySegment(name, outer, core, ZSuperCylinder(core.center_xy, (a - wall, b - wall), z0, z1, core.power))


def body_segments(st: Stature, levels: TrunkLevels, head: Ellipsoid, shapes: list[Shape], fat_mm: float,
                  fov_xy: tuple[float, float]) -> list[BodySegment]:
    """Thorax, abdomen, pelvis (holding ``shapes``), neck and head."""
    stretches = (("thorax", levels.diaphragm, levels.top), ("abdomen", levels.iliac, levels.diaphragm),
                 ("pelvis", levels.crotch, levels.iliac))
    segments = [torso_segment(name, z0, z1, st, shapes, fat_mm, fov_xy) for name, z0, z1 in stretches]
    r_neck = NECK_RADIUS_MM * st.lean_scale
    r_outer = r_neck + NECK_FAT_SHARE * fat_mm
    neck_top = head.center[2]
    segments.append(BodySegment("neck", ZCylinder((0.0, 0.0), (r_outer, r_outer), levels.top, neck_top),
                                ZCylinder((0.0, 0.0), (r_neck, r_neck), levels.top, neck_top)))
    segments.append(BodySegment("head", head, head))
    return segments


def legs(st: Stature, pelvis: BodySegment, z_crotch: float, fat_mm: float, fov_mm: tuple[float, float, float]
         ) -> tuple[list[BodySegment], list[tuple[str, Shape]]]:
    """(leg segments, femur solids), right then left, below the pelvis and inside the canvas."""
    half_width, y = pelvis.core.axes_xy[0], pelvis.core.center_xy[1]
    z_end = min(st.level(LEG_END_LEVEL), z_crotch - LEG_MIN_LENGTH_MM)
    r_max = min(fov_mm[0] / 2 - LEG_OFFSET_SHARE * half_width, fov_mm[1] / 2 - abs(y)) - CANVAS_MARGIN_MM
    r_leg = LEG_RADIUS_SHARE * half_width
    r_leg, r_outer = min(r_leg, r_max), min(r_leg + LEG_FAT_SHARE * fat_mm, r_max)
    z_hip = z_crotch + HIP_ABOVE_CROTCH_MM
    segments, femurs = [], []
    for side, sign in SIDES.items():
        c = (sign * LEG_OFFSET_SHARE * half_width, y)
        segments.append(BodySegment(f"leg_{side}", ZCylinder(c, (r_outer, r_outer), z_end, z_crotch),
                                    ZCylinder(c, (r_leg, r_leg), z_end, z_crotch)))
        femurs.append(("femur", ZCylinder(c, (FEMUR_RADIUS_MM, FEMUR_RADIUS_MM), z_end, z_hip)))
        femurs.append(("femur", Ellipsoid((c[0], c[1], z_hip), (FEMORAL_HEAD_RADIUS_MM,) * 3)))
    return segments, femurs
