"""Where each organ goes: a subject's analytic anatomy from demographics and organ truth.

Organ solids are sized so their analytic volume equals the subject's truth volume exactly; they are
placed at heights that are fractions of body height (below the head vertex) and kept apart by
construction with separating planes (x, y, z planes, or an oblique plane between liver/spleen and
the kidneys below them, found from the ellipsoids' support functions). The body (head, neck,
thorax, abdomen, pelvis, legs; lean core plus a fat layer) is grown where needed so it always
contains the organs with a wall around them. Bones (skull, spine, ribs, femurs) are cosmetic (label 0).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import numpy as np
from scipy.optimize import brentq

from .shapes import ArchTube, Ellipsoid, Shape, ZCylinder, ZSuperCylinder

TOP_MARGIN_MM = 20.0  # head vertex below the canvas top (z = 0)
GAP_MM = 5.0  # minimum clearance between neighbouring organs
WALL_MM = 15.0  # lean tissue between organs and the fat layer
CANVAS_MARGIN_MM = 6.0  # the body stays this far inside the canvas faces (x, y)
TORSO_POWER = 3.0  # torso cross-sections are superellipses |x/a|^p + |y/b|^p <= 1 (rounded rectangles)

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
class BodySegment:
    """A stretch of body: outer outline and lean core (fat between them)."""

    name: str
    outer: Shape
    core: Shape
    visceral: Shape | None = None  # abdomen/pelvis: the cavity inside the muscular wall (fat-marbled)


@dataclass(frozen=True)
class Anatomy:
    """A subject's analytic anatomy (mm, canvas RAS+ coordinates)."""

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


def build_anatomy(demo: Mapping, volumes_ml: Mapping[str, float],
                  fov_mm: tuple[float, float, float] = (448.0, 320.0, 1152.0)) -> Anatomy:
    """The analytic anatomy of one subject.

    ``demo``: age, sex, height_m, weight_kg; ``volumes_ml``: organ -> truth volume (mL) for the nine
    canonical organs. Organ solids reproduce these volumes exactly (``Anatomy.organ_volume_mm3``).
    The torso is clipped to ``fov_mm`` less CANVAS_MARGIN_MM (fat first, then lean wall) so that very
    large subjects still fit the canvas.
    """
    H = float(demo["height_m"]) * 1000.0
    sex = str(demo["sex"])
    bmi = float(demo["weight_kg"]) / float(demo["height_m"]) ** 2
    s = (H / 1750.0) ** 0.6 * (bmi / 25.0) ** 0.15 * (1.0 if sex == "M" else 0.94)  # lean-core scale
    V = {k: float(v) * 1000.0 for k, v in volumes_ml.items()}  # mm^3
    zv = -TOP_MARGIN_MM
    parts: list[OrganPart] = []

    # head and brain -----------------------------------------------------------------------------
    b_ax = _scaled_axes(BASE_AXES["brain"], V["brain"])
    head_axes = b_ax + np.array([14.0, 16.0, 30.0])
    head_cz = zv - head_axes[2]
    brain = Ellipsoid((0.0, 5.0, head_cz + 10.0), tuple(b_ax))
    head = Ellipsoid((0.0, 5.0, head_cz), tuple(head_axes))
    parts.append(OrganPart("brain", LABEL["brain"], brain))
    head_bottom = head_cz - head_axes[2]
    z_sh = min(zv - 0.175 * H, head_bottom - 40.0)  # top of the thorax (shoulders)

    # thorax: heart, lungs (x-separated from the heart), aorta -------------------------------------
    lung_r_ax = _scaled_axes(BASE_AXES["lung"], RIGHT_LUNG_SHARE * V["lungs"])
    lung_l_ax = _scaled_axes(BASE_AXES["lung"], (1 - RIGHT_LUNG_SHARE) * V["lungs"])
    z_apex = z_sh - 25.0
    h_ax = _scaled_axes(BASE_AXES["heart"], V["heart"])
    lung_bottom_r, lung_bottom_l = z_apex - 2 * lung_r_ax[2], z_apex - 2 * lung_l_ax[2]
    hx, hy = 12.0, 15.0
    hz = max(lung_bottom_r, lung_bottom_l) + 10.0 + h_ax[2]
    heart = Ellipsoid((hx, hy, hz), tuple(h_ax))
    lung_r = Ellipsoid((hx - h_ax[0] - GAP_MM - lung_r_ax[0], -5.0, z_apex - lung_r_ax[2]), tuple(lung_r_ax))
    lung_l = Ellipsoid((hx + h_ax[0] + GAP_MM + lung_l_ax[0], -5.0, z_apex - lung_l_ax[2]), tuple(lung_l_ax))
    parts += [OrganPart("heart", LABEL["heart"], heart), OrganPart("lungs", 0, lung_r, "right"),
              OrganPart("lungs", 0, lung_l, "left")]
    z_dia = min(lung_bottom_r, lung_bottom_l, hz - h_ax[2]) - GAP_MM  # diaphragm: abdomen below

    # aorta: ascending cylinder above the heart, arch (half torus), descending cylinder behind the heart
    x_ao, y_asc = hx, hy
    z_asc0 = hz + h_ax[2] + GAP_MM
    L_asc = 40.0 * H / 1750.0
    z_c = z_asc0 + L_asc
    z_bif = zv - 0.42 * H

    def aorta_geometry(r: float):
        y_desc = hy - h_ax[1] - GAP_MM - r
        R = (y_asc - y_desc) / 2.0
        return y_desc, R, L_asc + math.pi * R + (z_c - z_bif)

    r_ao = brentq(lambda r: math.pi * r * r * aorta_geometry(r)[2] - V["aorta"], 1.0, 60.0, xtol=1e-12)
    y_desc, R_arch, _ = aorta_geometry(r_ao)
    aorta = [ZCylinder((x_ao, y_asc), (r_ao, r_ao), z_asc0, z_c), ArchTube(x_ao, (y_asc + y_desc) / 2, z_c, R_arch, r_ao),
             ZCylinder((x_ao, y_desc), (r_ao, r_ao), z_bif, z_c)]
    parts += [OrganPart("aorta", LABEL["aorta"], a) for a in aorta]

    # spine and iliopsoas (beside the spine, behind the aorta: y-separated) -------------------------
    r_spine = 16.0 * H / 1750.0
    y_spine = y_desc - r_ao - 3.0 - r_spine
    ps_ax = _scaled_axes(BASE_AXES["iliopsoas"], (1 - GLUTEUS_SHARE) * V["muscle"] / 2)
    y_ps = y_desc - r_ao - GAP_MM - ps_ax[1]
    ps_med = r_spine + 4.0
    ps_lat = ps_med + 2 * ps_ax[0]
    z_ps = z_dia - 40.0 - ps_ax[2]
    psoas_r = Ellipsoid((-(ps_med + ps_ax[0]), y_ps, z_ps), tuple(ps_ax))
    psoas_l = Ellipsoid((ps_med + ps_ax[0], y_ps, z_ps), tuple(ps_ax))
    parts += [OrganPart("muscle", LABEL["iliopsoas_right"], psoas_r), OrganPart("muscle", LABEL["iliopsoas_left"], psoas_l)]

    # liver (right, medial edge left of the aorta, in front of the psoas), spleen (left, lateral) -----
    bl_ax = _scaled_axes(BASE_AXES["urinary_bladder"], V["urinary_bladder"])
    l_ax = _scaled_axes(BASE_AXES["liver"], V["liver"])
    liver = Ellipsoid((x_ao - r_ao - GAP_MM - l_ax[0], y_ps + ps_ax[1] + GAP_MM + l_ax[1], z_dia - l_ax[2]), tuple(l_ax))
    sp_ax = _scaled_axes(BASE_AXES["spleen"], V["spleen"])
    sp_med = max(x_ao + r_ao, ps_lat, bl_ax[0]) + GAP_MM
    sp_med = max(sp_med, lung_l.center[0] + lung_l_ax[0] - 10.0 - 2 * sp_ax[0])
    spleen = Ellipsoid((sp_med + sp_ax[0], -30.0, z_dia - sp_ax[2]), tuple(sp_ax))
    parts += [OrganPart("liver", LABEL["liver"], liver), OrganPart("spleen", LABEL["spleen"], spleen)]

    # kidneys: lateral to the psoas (x-separated), below-behind liver / spleen (oblique plane) --------
    k_ax = _scaled_axes(BASE_AXES["kidney"], V["kidneys"] / 2)
    kx = max(ps_lat, bl_ax[0], x_ao + r_ao) + GAP_MM + k_ax[0]
    ky = y_ps + 20.0
    kz_r = min(_z_below_plane(liver, k_ax, -kx, ky, 65.0), z_dia - 10.0 - k_ax[2])
    kz_l = min(_z_below_plane(spleen, k_ax, kx, ky, 65.0), z_dia - 10.0 - k_ax[2])
    parts += [OrganPart("kidneys", LABEL["kidney_right"], Ellipsoid((-kx, ky, kz_r), tuple(k_ax))),
              OrganPart("kidneys", LABEL["kidney_left"], Ellipsoid((kx, ky, kz_l), tuple(k_ax)))]

    # pelvis: bladder (front of the aorta/psoas: y-separated; below the liver), gluteus (lateral to
    # bladder and psoas: x-separated; below liver, spleen and kidneys) ---------------------------------
    upper_bottom = min(liver.z_range[0], spleen.z_range[0], kz_r - k_ax[2], kz_l - k_ax[2]) - GAP_MM
    z_floor = zv - 0.50 * H
    bl_z = min(z_floor + bl_ax[2], liver.z_range[0] - GAP_MM - bl_ax[2])
    bladder = Ellipsoid((0.0, y_desc + r_ao + GAP_MM + bl_ax[1], bl_z), tuple(bl_ax))
    g_ax = _scaled_axes(BASE_AXES["gluteus"], GLUTEUS_SHARE * V["muscle"] / 2)
    g_med = max(bl_ax[0], ps_lat, x_ao + r_ao) + GAP_MM
    gz = min(zv - 0.48 * H, upper_bottom - g_ax[2])
    glut_r = Ellipsoid((-(g_med + g_ax[0]), y_spine + 25.0, gz), tuple(g_ax))
    glut_l = Ellipsoid((g_med + g_ax[0], y_spine + 25.0, gz), tuple(g_ax))
    parts += [OrganPart("urinary_bladder", LABEL["urinary_bladder"], bladder),
              OrganPart("muscle", LABEL["gluteus_maximus_right"], glut_r),
              OrganPart("muscle", LABEL["gluteus_maximus_left"], glut_l)]

    # body -----------------------------------------------------------------------------------------
    t = fat_thickness_mm(bmi, sex)
    organ_shapes = [p.shape for p in parts if p.organ != "brain"]
    z_crotch = min(zv - 0.54 * H, min(sh.z_range[0] for sh in organ_shapes) - 10.0)
    spine = ZCylinder((0.0, y_spine), (r_spine, r_spine), z_crotch + 60.0, head_bottom + 40.0)
    z_iliac = min(zv - 0.43 * H, z_dia - 40.0)
    segments = []
    z_top = max(z_sh, max(sh.z_range[1] for sh in organ_shapes) + WALL_MM)  # thorax top: above the arch
    for name, z0, z1, anthro in (("thorax", z_dia, z_top, (150.0 * s, 100.0 * s)),
                                 ("abdomen", z_iliac, z_dia, (140.0 * s, 100.0 * s)),
                                 ("pelvis", z_crotch, z_iliac, ((150.0 if sex == "M" else 160.0) * s, 105.0 * s))):
        inner = _overlapping(organ_shapes + [spine], z0, z1)
        tk = t * (0.6 if name == "thorax" else 1.0)
        outer, core = _torso_section(anthro, inner, tk, fov_mm[:2], z0, z1)
        visceral = None
        if name != "thorax":
            (a_c, b_c), wall = core.axes_xy, min(WALL_MM, 0.5 * min(core.axes_xy))
            visceral = ZSuperCylinder(core.center_xy, (a_c - wall, b_c - wall), z0, z1, core.power)
        segments.append(BodySegment(name, outer, core, visceral))
    r_neck = 55.0 * s
    neck_z1 = head_cz
    segments.append(BodySegment("neck", ZCylinder((0.0, 0.0), (r_neck + 0.4 * t, r_neck + 0.4 * t), z_top, neck_z1),
                                ZCylinder((0.0, 0.0), (r_neck, r_neck), z_top, neck_z1)))
    segments.append(BodySegment("head", head, head))
    a_pel = segments[2].core.axes_xy[0]
    r_leg = 0.48 * a_pel
    z_leg_end = min(zv - 0.60 * H, z_crotch - 50.0)
    femurs = []
    y_pel = segments[2].core.center_xy[1]
    r_max = min(fov_mm[0] / 2 - 0.5 * a_pel, fov_mm[1] / 2 - abs(y_pel)) - CANVAS_MARGIN_MM
    r_leg, r_leg_outer = min(r_leg, r_max), min(r_leg + 0.8 * t, r_max)
    for side in (-1.0, 1.0):
        c = (side * 0.5 * a_pel, y_pel)
        segments.append(BodySegment(f"leg_{'right' if side < 0 else 'left'}",
                                    ZCylinder(c, (r_leg_outer, r_leg_outer), z_leg_end, z_crotch),
                                    ZCylinder(c, (r_leg, r_leg), z_leg_end, z_crotch)))
        femurs.append(("femur", ZCylinder(c, (13.0, 13.0), z_leg_end, z_crotch + 60.0)))
        femurs.append(("femur", Ellipsoid((c[0], c[1], z_crotch + 60.0), (24.0, 24.0, 24.0))))  # femoral head

    bones: list[tuple[str, Shape]] = [
        ("skull_outer", Ellipsoid(brain.center, tuple(b_ax + 9.0))),
        ("skull_inner", Ellipsoid(brain.center, tuple(b_ax + 2.0))),
        ("spine", spine),
        ("rib_zone", segments[0].core),
        ("pelvis_zone", segments[2].core),
        *femurs,
    ]
    return Anatomy(tuple(parts), tuple(segments), tuple(bones), zv, visceral_fat_fraction(bmi, sex))
