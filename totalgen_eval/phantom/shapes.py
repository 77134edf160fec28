"""Analytic solids the phantom is built from: exact volumes (mm^3), surface areas (mm^2), point tests.

Coordinates are NIfTI RAS+ world mm: x grows toward the patient's right (``RIGHT``), y anterior, z superior.
``inside`` takes arrays that broadcast against each other (the renderer passes x[:, None, None],
y[None, :, None], z[None, None, :]).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.special import elliprg

# The patient's sides as signs of x (RAS+: x grows toward the patient's right).
RIGHT = 1.0
LEFT = -1.0
SIDES: dict[str, float] = {"right": RIGHT, "left": LEFT}  # right first: parts and segments keep this order


@dataclass(frozen=True)
class Ellipsoid:
    """Axis-aligned ellipsoid: centre (mm) and semi-axes (mm) along x, y, z."""

    center: tuple[float, float, float]
    axes: tuple[float, float, float]

    def bbox(self) -> tuple[np.ndarray, np.ndarray]:
        c, a = np.asarray(self.center), np.asarray(self.axes)
        return c - a, c + a

    def inside(self, x, y, z) -> np.ndarray:
        (cx, cy, cz), (ax, ay, az) = self.center, self.axes
        return ((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2 + ((z - cz) / az) ** 2 <= 1.0

    @property
    def volume_mm3(self) -> float:
        a, b, c = self.axes
        return 4.0 / 3.0 * math.pi * a * b * c

    @property
    def surface_mm2(self) -> float:
        """Exact area via Carlson's R_G: S = 4 pi abc R_G(1/a^2, 1/b^2, 1/c^2)."""
        a, b, c = self.axes
        return float(4.0 * math.pi * a * b * c * elliprg(1 / a**2, 1 / b**2, 1 / c**2))

    def half_width(self, normal: np.ndarray) -> float:
        """Support half-width along a unit ``normal``: max over the solid of n.(p - centre)."""
        return float(np.sqrt(np.sum((np.asarray(self.axes) * normal) ** 2)))

    def xy_outline(self, k: int = 64) -> np.ndarray:
        """Points (k, 2) on the boundary of the projection onto the x-y plane."""
        t = np.linspace(0, 2 * np.pi, k, endpoint=False)
        return np.stack([self.center[0] + self.axes[0] * np.cos(t), self.center[1] + self.axes[1] * np.sin(t)], 1)

    @property
    def z_range(self) -> tuple[float, float]:
        return self.center[2] - self.axes[2], self.center[2] + self.axes[2]


@dataclass(frozen=True)
class ZCylinder:
    """Elliptic cylinder along z: centre (x, y), semi-axes (x, y) mm, z in [z0, z1) (half-open)."""

    center_xy: tuple[float, float]
    axes_xy: tuple[float, float]
    z0: float
    z1: float

    def bbox(self) -> tuple[np.ndarray, np.ndarray]:
        (cx, cy), (ax, ay) = self.center_xy, self.axes_xy
        return np.array([cx - ax, cy - ay, self.z0]), np.array([cx + ax, cy + ay, self.z1])

    def inside(self, x, y, z) -> np.ndarray:
        (cx, cy), (ax, ay) = self.center_xy, self.axes_xy
        return (((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2 <= 1.0) & (z >= self.z0) & (z < self.z1)

    @property
    def volume_mm3(self) -> float:
        return math.pi * self.axes_xy[0] * self.axes_xy[1] * (self.z1 - self.z0)

    @property
    def surface_mm2(self) -> float:
        """Lateral area (Ramanujan's ellipse perimeter, exact for circles) plus both caps."""
        a, b = self.axes_xy
        h = ((a - b) / (a + b)) ** 2
        perimeter = math.pi * (a + b) * (1 + 3 * h / (10 + math.sqrt(4 - 3 * h)))
        return perimeter * (self.z1 - self.z0) + 2 * math.pi * a * b

    def xy_outline(self, k: int = 64) -> np.ndarray:
        t = np.linspace(0, 2 * np.pi, k, endpoint=False)
        (cx, cy), (ax, ay) = self.center_xy, self.axes_xy
        return np.stack([cx + ax * np.cos(t), cy + ay * np.sin(t)], 1)

    @property
    def z_range(self) -> tuple[float, float]:
        return self.z0, self.z1


@dataclass(frozen=True)
class ArchTube:
    """Half torus (z >= zc) in the plane x = x0: tube radius r around a circle of radius R centred (yc, zc).

    Its two end discs lie in the plane z = zc, so straight z-cylinders attach below it without overlap.
    Volume by Pappus: pi r^2 * pi R.
    """

    x0: float
    yc: float
    zc: float
    R: float
    r: float

    def bbox(self) -> tuple[np.ndarray, np.ndarray]:
        return (np.array([self.x0 - self.r, self.yc - self.R - self.r, self.zc]),
                np.array([self.x0 + self.r, self.yc + self.R + self.r, self.zc + self.R + self.r]))

    def inside(self, x, y, z) -> np.ndarray:
        rho = np.sqrt((y - self.yc) ** 2 + (z - self.zc) ** 2)
        return ((rho - self.R) ** 2 + (x - self.x0) ** 2 <= self.r**2) & (z >= self.zc)

    @property
    def volume_mm3(self) -> float:
        return math.pi * self.r**2 * math.pi * self.R

    @property
    def surface_mm2(self) -> float:
        return 2 * math.pi * self.r * math.pi * self.R + 2 * math.pi * self.r**2

    def xy_outline(self, k: int = 64) -> np.ndarray:
        lo, hi = self.bbox()
        return np.array([[lo[0], lo[1]], [hi[0], lo[1]], [hi[0], hi[1]], [lo[0], hi[1]]])

    @property
    def z_range(self) -> tuple[float, float]:
        return self.zc, self.zc + self.R + self.r


@dataclass(frozen=True)
class ZSuperCylinder:
    """Prism along z over a superellipse |x/a|^p + |y/b|^p <= 1 (p = 2: ellipse; larger p: squarer);
    z in [z0, z1). Used for the body outline (a torso cross-section is a rounded rectangle)."""

    center_xy: tuple[float, float]
    axes_xy: tuple[float, float]
    z0: float
    z1: float
    power: float = 2.0

    def bbox(self) -> tuple[np.ndarray, np.ndarray]:
        (cx, cy), (ax, ay) = self.center_xy, self.axes_xy
        return np.array([cx - ax, cy - ay, self.z0]), np.array([cx + ax, cy + ay, self.z1])

    def inside(self, x, y, z) -> np.ndarray:
        (cx, cy), (ax, ay) = self.center_xy, self.axes_xy
        return ((np.abs((x - cx) / ax) ** self.power + np.abs((y - cy) / ay) ** self.power <= 1.0)
                & (z >= self.z0) & (z < self.z1))

    def radius(self, x, y) -> np.ndarray:
        """Normalised superellipse radius: < 1 inside the cross-section."""
        (cx, cy), (ax, ay) = self.center_xy, self.axes_xy
        return (np.abs((x - cx) / ax) ** self.power + np.abs((y - cy) / ay) ** self.power) ** (1 / self.power)

    @property
    def z_range(self) -> tuple[float, float]:
        return self.z0, self.z1


Shape = Ellipsoid | ZCylinder | ArchTube | ZSuperCylinder
