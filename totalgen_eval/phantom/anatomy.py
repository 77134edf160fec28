"""Where each organ goes: a subject's analytic anatomy from demographics and organ truth.

Coordinates are NIfTI RAS+ world mm: x grows toward the patient's right (``RIGHT``), y anterior, z superior,
so the liver, the right kidney, the right lung and every ``*_right`` structure lie at x > 0, the spleen and
every ``*_left`` one at x < 0, and the heart just left of the midline.

Organ solids are sized so their analytic volume equals the subject's truth volume exactly; they are
placed at levels that are fractions of body height below the head vertex (``*_LEVEL``) and kept apart by
construction with separating planes (x, y, z planes, or an oblique plane between liver/spleen and
the kidneys below them, found from the ellipsoids' support functions). The body (head, neck,
thorax, abdomen, pelvis, legs; lean core plus a fat layer) is grown where needed so it always
contains the organs with a wall around them. Bones (skull, spine, ribs, femurs) are cosmetic (label 0).

``build_anatomy`` runs one step per body region, top to bottom: head, thorax, aorta, retroperitoneum
(spine, iliopsoas), upper abdomen (liver, spleen), kidneys, pelvis (bladder, gluteus), then the body
outline, the legs and the bones around them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import numpy as np
from scipy.optimize import brentq

from .body import (HIP_ABOVE_CROTCH_MM, BodySegment, Stature, body_segments, fat_thickness_mm, legs,
                   stature, trunk_levels, visceral_fat_fraction)
from .shapes import LEFT, RIGHT, SIDES, ArchTube, Ellipsoid, Shape, ZCylinder

GAP_MM = 5.0  # minimum clearance between neighbouring organs

# Reference shapes (semi-axes x, y, z in mm); each is scaled isotropically to its truth volume.
BASE_AXES: dict[str, tuple[float, float, float]] = {
    "brain": (68, 85, 58),
    "lung": (48, 80, 110),
    "heart": (45, 45, 60),
    "liver": (80, 62, 65),
    "spleen": (30, 45, 55),
    "kidney": (28, 25, 55),
    "urinary_bladder": (50, 42, 45),
    "gluteus": (50, 40, 80),
    "iliopsoas": (25, 28, 100),
}
RIGHT_LUNG_SHARE = 0.53  # of the lungs volume; left 0.47
GLUTEUS_SHARE = 0.70  # of the muscle volume (both sides); iliopsoas 0.30

# Levels: at least this fraction of body height below the head vertex (organs may push them lower)
SHOULDER_LEVEL = 0.175  # top of the thorax
AORTIC_BIFURCATION_LEVEL = 0.42
GLUTEUS_LEVEL = 0.48  # gluteus maximus centres
PELVIC_FLOOR_LEVEL = 0.50  # the bladder's bottom

# Head (mm)
SCALP_MM = (14.0, 16.0, 30.0)  # head semi-axes minus brain semi-axes
HEAD_Y_MM = 5.0  # brain and head centres, anterior of the midline
BRAIN_RAISE_MM = 10.0  # brain centre above the head centre
NECK_MIN_MM = 40.0  # head bottom to shoulders, at least
SKULL_OUTER_MM, SKULL_INNER_MM = 9.0, 2.0  # skull shell around the brain

# Thorax (mm)
LUNG_APEX_DROP_MM = 25.0  # lung apices below the shoulders
LUNG_Y_MM = -5.0
HEART_LEFT_MM = 12.0  # heart centre left of the midline
HEART_Y_MM = 15.0  # anterior
HEART_ABOVE_LUNG_BASE_MM = 10.0  # heart bottom above the higher lung base
ASCENDING_AORTA_MM = 40.0  # at reference height

# Retroperitoneum, abdomen and pelvis (mm)
SPINE_RADIUS_MM = 16.0  # at reference height
SPINE_ABOVE_HEAD_BOTTOM_MM = 40.0  # the spine's top; its bottom is at the hips
AORTA_SPINE_GAP_MM = 3.0
PSOAS_SPINE_GAP_MM = 4.0
PSOAS_TOP_DROP_MM = 40.0  # iliopsoas top below the diaphragm
SPLEEN_Y_MM = -30.0
SPLEEN_UNDER_LUNG_MM = 10.0  # the spleen's lateral edge reaches this far inside the left lung's
KIDNEY_ANTERIOR_OF_PSOAS_MM = 20.0  # kidney centre y minus iliopsoas centre y
KIDNEY_PLANE_TILT_DEG = 65.0  # plane between liver / spleen and the kidney below it
KIDNEY_BELOW_DIAPHRAGM_MM = 10.0  # kidney top below the diaphragm, at least
GLUTEUS_ANTERIOR_OF_SPINE_MM = 25.0

# TotalSegmentator "total" v2 class ids
LABEL = {"spleen": 1, "kidney_right": 2, "kidney_left": 3, "liver": 5, "urinary_bladder": 21, "heart": 51,
         "aorta": 52, "gluteus_maximus_left": 80, "gluteus_maximus_right": 81, "iliopsoas_left": 88,
         "iliopsoas_right": 89, "brain": 90}
LUNG_LOBES = {"left": {"upper": 10, "lower": 11}, "right": {"upper": 12, "middle": 13, "lower": 14}}


@dataclass(frozen=True)
class OrganPart:
    """One solid of an organ, painted with one TS class id (or split into lung lobes when ``lung_side``)."""

    organ: str
    label: int
    shape: Shape
    lung_side: str | None = None


@dataclass(frozen=True)
class Anatomy:
    """A subject's analytic anatomy (mm, RAS+ world coordinates: x toward the patient's right)."""

    parts: tuple[OrganPart, ...]
    body: tuple[BodySegment, ...]
    bones: tuple[tuple[str, Shape], ...]  # (kind, solid): skull_outer/inner, spine, femur, rib_zone, pelvis_zone
    vertex_z: float
    visceral_fat: float = 0.0  # fraction of fat in the abdominal/pelvic cavity background

    def organ_volume_mm3(self, organ: str) -> float:
        """Analytic volume of an organ (sum of its disjoint solids)."""
        return sum(p.shape.volume_mm3 for p in self.parts if p.organ == organ)

    def organ_surface_mm2(self, organ: str) -> float:
        """Sum of its solids' surface areas (an upper bound on the organ's surface)."""
        return sum(p.shape.surface_mm2 for p in self.parts if p.organ == organ)


def _scaled_axes(base_axes, volume_mm3: float) -> np.ndarray:
    """Semi-axes (mm) of the reference shape scaled isotropically to ``volume_mm3``."""
    k = (volume_mm3 / (4.0 / 3.0 * math.pi * np.prod(base_axes))) ** (1.0 / 3.0)
    return np.asarray(base_axes, float) * k


def _z_below_plane(upper: Ellipsoid, axes: np.ndarray, x: float, y: float, tilt_deg: float) -> float:
    """Highest centre z for an ellipsoid (``axes``) at (x, y) kept behind/below ``upper``.

    The separating plane has normal n = (0, -sin t, -cos t) (posterior-inferior): the lower solid's
    minimum of n.p must exceed the upper solid's maximum by GAP_MM.
    """
    t = math.radians(tilt_deg)
    n = np.array([0.0, -math.sin(t), -math.cos(t)])
    upper_max = float(n @ np.asarray(upper.center)) + upper.half_width(n)
    h = float(np.sqrt(np.sum((axes * n) ** 2)))
    # n.c - h >= upper_max + gap, with n.c = -sin t * y - cos t * z
    return (-math.sin(t) * y - (upper_max + GAP_MM + h)) / math.cos(t)


@dataclass(frozen=True)
class Head:
    """Brain, head outline and the shoulders' level (mm)."""

    brain: Ellipsoid
    outline: Ellipsoid
    z_shoulders: float  # top of the thorax

    @property
    def bottom(self) -> float:
        return self.outline.z_range[0]


@dataclass(frozen=True)
class Thorax:
    """Heart, lungs by side and the diaphragm's level (mm)."""

    heart: Ellipsoid
    lungs: dict[str, Ellipsoid]  # side -> lung
    z_diaphragm: float  # the abdomen lies below


@dataclass(frozen=True)
class Aorta:
    """The aorta's solids and where its descending part runs (mm)."""

    x: float
    y_descending: float
    radius: float
    tubes: tuple[Shape, ...]  # ascending, arch, descending

    @property
    def reach(self) -> float:
        """Farthest extent from the midline (mm), on the heart's side."""
        return abs(self.x) + self.radius


@dataclass(frozen=True)
class Retroperitoneum:
    """Spine (radius, y) and the iliopsoas muscles by side (mm)."""

    spine_radius: float
    spine_y: float
    psoas: dict[str, Ellipsoid]  # side -> iliopsoas
    psoas_lateral: float  # distance (mm) of the iliopsoas' lateral edges from the midline


def _head(st: Stature, brain_mm3: float) -> Head:
    """Brain inside a head ellipsoid at the vertex; the shoulders a neck below it."""
    brain_axes = _scaled_axes(BASE_AXES["brain"], brain_mm3)
    head_axes = brain_axes + np.array(SCALP_MM)
    head_cz = st.vertex_z - head_axes[2]
    brain = Ellipsoid((0.0, HEAD_Y_MM, head_cz + BRAIN_RAISE_MM), tuple(brain_axes))
    outline = Ellipsoid((0.0, HEAD_Y_MM, head_cz), tuple(head_axes))
    z_shoulders = min(st.level(SHOULDER_LEVEL), head_cz - head_axes[2] - NECK_MIN_MM)
    return Head(brain, outline, z_shoulders)


def _thorax(z_shoulders: float, volumes_mm3: Mapping[str, float]) -> Thorax:
    """Heart left of the midline above the lung bases; lungs beside it (x-separated), apices below the shoulders."""
    lung_axes = {"right": _scaled_axes(BASE_AXES["lung"], RIGHT_LUNG_SHARE * volumes_mm3["lungs"]),
                 "left": _scaled_axes(BASE_AXES["lung"], (1 - RIGHT_LUNG_SHARE) * volumes_mm3["lungs"])}
    z_apex = z_shoulders - LUNG_APEX_DROP_MM
    heart_axes = _scaled_axes(BASE_AXES["heart"], volumes_mm3["heart"])
    bases = [z_apex - 2 * axes[2] for axes in lung_axes.values()]
    heart_x = LEFT * HEART_LEFT_MM
    heart_z = max(bases) + HEART_ABOVE_LUNG_BASE_MM + heart_axes[2]
    heart = Ellipsoid((heart_x, HEART_Y_MM, heart_z), tuple(heart_axes))
    lungs = {side: Ellipsoid((heart_x + SIDES[side] * (heart_axes[0] + GAP_MM + axes[0]), LUNG_Y_MM, z_apex - axes[2]),
                             tuple(axes)) for side, axes in lung_axes.items()}
    return Thorax(heart, lungs, min(*bases, heart_z - heart_axes[2]) - GAP_MM)


def _aorta(heart: Ellipsoid, st: Stature, volume_mm3: float) -> Aorta:
    """Ascending cylinder above the heart, arch (half torus), descending cylinder behind the heart down to
    the bifurcation; the tube radius is solved so the three solids hold ``volume_mm3`` exactly."""
    x, y_asc = heart.center[0], heart.center[1]
    z_asc0 = heart.z_range[1] + GAP_MM
    length_asc = st.at_height(ASCENDING_AORTA_MM)
    z_arch = z_asc0 + length_asc
    z_bif = st.level(AORTIC_BIFURCATION_LEVEL)
    y_behind_heart = heart.center[1] - heart.axes[1] - GAP_MM

    def geometry(r: float) -> tuple[float, float, float]:  # descending y, arch radius, centre-line length
        y_desc = y_behind_heart - r
        arch_radius = (y_asc - y_desc) / 2.0
        return y_desc, arch_radius, length_asc + math.pi * arch_radius + (z_arch - z_bif)

    r = brentq(lambda r: math.pi * r * r * geometry(r)[2] - volume_mm3, 1.0, 60.0, xtol=1e-12)
    y_desc, arch_radius, _ = geometry(r)
    tubes = (ZCylinder((x, y_asc), (r, r), z_asc0, z_arch), ArchTube(x, (y_asc + y_desc) / 2, z_arch, arch_radius, r),
             ZCylinder((x, y_desc), (r, r), z_bif, z_arch))
    return Aorta(x, y_desc, r, tubes)


def _retroperitoneum(aorta: Aorta, z_diaphragm: float, st: Stature, muscle_mm3: float) -> Retroperitoneum:
    """Spine behind the aorta; iliopsoas on both sides of the spine, behind the aorta (y-separated)."""
    spine_radius = st.at_height(SPINE_RADIUS_MM)
    spine_y = aorta.y_descending - aorta.radius - AORTA_SPINE_GAP_MM - spine_radius
    axes = _scaled_axes(BASE_AXES["iliopsoas"], (1 - GLUTEUS_SHARE) * muscle_mm3 / 2)
    y = aorta.y_descending - aorta.radius - GAP_MM - axes[1]
    medial = spine_radius + PSOAS_SPINE_GAP_MM
    z = z_diaphragm - PSOAS_TOP_DROP_MM - axes[2]
    psoas = {side: Ellipsoid((sign * (medial + axes[0]), y, z), tuple(axes)) for side, sign in SIDES.items()}
    return Retroperitoneum(spine_radius, spine_y, psoas, medial + 2 * axes[0])


def _upper_abdomen(thorax: Thorax, aorta: Aorta, retro: Retroperitoneum, bladder_axes: np.ndarray,
                   volumes_mm3: Mapping[str, float]) -> tuple[Ellipsoid, Ellipsoid]:
    """(liver, spleen) under the diaphragm. Liver on the right, its medial edge a gap right of the aorta, in
    front of the iliopsoas; spleen on the left, lateral to aorta, iliopsoas and bladder, under the left lung."""
    z_diaphragm, psoas = thorax.z_diaphragm, retro.psoas["right"]
    liver_axes = _scaled_axes(BASE_AXES["liver"], volumes_mm3["liver"])
    liver = Ellipsoid((aorta.x + RIGHT * (aorta.radius + GAP_MM + liver_axes[0]),
                       psoas.center[1] + psoas.axes[1] + GAP_MM + liver_axes[1], z_diaphragm - liver_axes[2]),
                      tuple(liver_axes))
    spleen_axes = _scaled_axes(BASE_AXES["spleen"], volumes_mm3["spleen"])
    lung = thorax.lungs["left"]
    lung_edge = LEFT * lung.center[0] + lung.axes[0]  # the left lung's lateral edge, from the midline
    medial = max(aorta.reach, retro.psoas_lateral, bladder_axes[0]) + GAP_MM
    medial = max(medial, lung_edge - SPLEEN_UNDER_LUNG_MM - 2 * spleen_axes[0])
    spleen = Ellipsoid((LEFT * (medial + spleen_axes[0]), SPLEEN_Y_MM, z_diaphragm - spleen_axes[2]),
                       tuple(spleen_axes))
    return liver, spleen


def _kidneys(liver: Ellipsoid, spleen: Ellipsoid, aorta: Aorta, retro: Retroperitoneum, bladder_axes: np.ndarray,
             z_diaphragm: float, kidneys_mm3: float) -> dict[str, Ellipsoid]:
    """Side -> kidney: lateral to the iliopsoas (x-separated), below-behind liver / spleen (oblique plane)."""
    axes = _scaled_axes(BASE_AXES["kidney"], kidneys_mm3 / 2)
    lateral = max(retro.psoas_lateral, bladder_axes[0], aorta.reach) + GAP_MM + axes[0]
    y = retro.psoas["right"].center[1] + KIDNEY_ANTERIOR_OF_PSOAS_MM
    above = {"right": liver, "left": spleen}
    kidneys = {}
    for side, sign in SIDES.items():
        z = min(_z_below_plane(above[side], axes, sign * lateral, y, KIDNEY_PLANE_TILT_DEG),
                z_diaphragm - KIDNEY_BELOW_DIAPHRAGM_MM - axes[2])
        kidneys[side] = Ellipsoid((sign * lateral, y, z), tuple(axes))
    return kidneys


def _pelvis(st: Stature, upper: list[Ellipsoid], liver: Ellipsoid, aorta: Aorta, retro: Retroperitoneum,
            bladder_axes: np.ndarray, muscle_mm3: float) -> tuple[Ellipsoid, dict[str, Ellipsoid]]:
    """(bladder, side -> gluteus maximus). Bladder in front of the aorta / iliopsoas (y-separated), below the
    liver; gluteus lateral to bladder and iliopsoas (x-separated), below the ``upper`` abdominal organs."""
    upper_bottom = min(s.z_range[0] for s in upper) - GAP_MM
    z_bladder = min(st.level(PELVIC_FLOOR_LEVEL) + bladder_axes[2], liver.z_range[0] - GAP_MM - bladder_axes[2])
    bladder = Ellipsoid((0.0, aorta.y_descending + aorta.radius + GAP_MM + bladder_axes[1], z_bladder),
                        tuple(bladder_axes))
    axes = _scaled_axes(BASE_AXES["gluteus"], GLUTEUS_SHARE * muscle_mm3 / 2)
    medial = max(bladder_axes[0], retro.psoas_lateral, aorta.reach) + GAP_MM
    z = min(st.level(GLUTEUS_LEVEL), upper_bottom - axes[2])
    y = retro.spine_y + GLUTEUS_ANTERIOR_OF_SPINE_MM
    return bladder, {side: Ellipsoid((sign * (medial + axes[0]), y, z), tuple(axes)) for side, sign in SIDES.items()}


def _skull(brain: Ellipsoid) -> list[tuple[str, Shape]]:
    """The skull's outer and inner surfaces (its shell lies between them), around the brain."""
    axes = np.asarray(brain.axes)
    return [("skull_outer", Ellipsoid(brain.center, tuple(axes + SKULL_OUTER_MM))),
            ("skull_inner", Ellipsoid(brain.center, tuple(axes + SKULL_INNER_MM)))]


def build_anatomy(demo: Mapping, volumes_ml: Mapping[str, float],
                  fov_mm: tuple[float, float, float] = (448.0, 320.0, 1152.0)) -> Anatomy:
    """The analytic anatomy of one subject (RAS+ mm: the liver at x > 0).

    ``demo``: age, sex, height_m, weight_kg; ``volumes_ml``: organ -> truth volume (mL) for the nine
    canonical organs. Organ solids reproduce these volumes exactly (``Anatomy.organ_volume_mm3``).
    The torso is clipped to ``fov_mm`` less CANVAS_MARGIN_MM (fat first, then lean wall) so that very
    large subjects still fit the canvas.
    """
    st = stature(demo)
    v = {k: float(x) * 1000.0 for k, x in volumes_ml.items()}  # mm^3
    head = _head(st, v["brain"])
    thorax = _thorax(head.z_shoulders, v)
    aorta = _aorta(thorax.heart, st, v["aorta"])
    retro = _retroperitoneum(aorta, thorax.z_diaphragm, st, v["muscle"])
    bladder_axes = _scaled_axes(BASE_AXES["urinary_bladder"], v["urinary_bladder"])
    liver, spleen = _upper_abdomen(thorax, aorta, retro, bladder_axes, v)
    kidneys = _kidneys(liver, spleen, aorta, retro, bladder_axes, thorax.z_diaphragm, v["kidneys"])
    bladder, gluteus = _pelvis(st, [liver, spleen, *kidneys.values()], liver, aorta, retro, bladder_axes, v["muscle"])
    parts = [OrganPart("brain", LABEL["brain"], head.brain), OrganPart("heart", LABEL["heart"], thorax.heart),
             *(OrganPart("lungs", 0, lung, side) for side, lung in thorax.lungs.items()),
             *(OrganPart("aorta", LABEL["aorta"], tube) for tube in aorta.tubes),
             *(OrganPart("muscle", LABEL[f"iliopsoas_{side}"], p) for side, p in retro.psoas.items()),
             OrganPart("liver", LABEL["liver"], liver), OrganPart("spleen", LABEL["spleen"], spleen),
             *(OrganPart("kidneys", LABEL[f"kidney_{side}"], k) for side, k in kidneys.items()),
             OrganPart("urinary_bladder", LABEL["urinary_bladder"], bladder),
             *(OrganPart("muscle", LABEL[f"gluteus_maximus_{side}"], g) for side, g in gluteus.items())]
    organ_shapes = [p.shape for p in parts if p.organ != "brain"]
    levels = trunk_levels(st, organ_shapes, head.z_shoulders, thorax.z_diaphragm)
    spine = ZCylinder((0.0, retro.spine_y), (retro.spine_radius,) * 2, levels.crotch + HIP_ABOVE_CROTCH_MM,
                      head.bottom + SPINE_ABOVE_HEAD_BOTTOM_MM)
    fat = fat_thickness_mm(st.bmi, st.sex)
    segments = body_segments(st, levels, head.outline, organ_shapes + [spine], fat, fov_mm[:2])
    leg_segments, femurs = legs(st, segments[2], levels.crotch, fat, fov_mm)
    bones = [*_skull(head.brain), ("spine", spine), ("rib_zone", segments[0].core),
             ("pelvis_zone", segments[2].core), *femurs]
    return Anatomy(tuple(parts), tuple(segments + leg_segments), tuple(bones), st.vertex_z,
                   visceral_fat_fraction(st.bmi, st.sex))
