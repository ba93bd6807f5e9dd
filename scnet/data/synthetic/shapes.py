"""The synthetic dataset's object classes: a shape, a typical colour, and how to draw one.

Every shape is made of polygons rasterised by pycocotools, the same code that decodes a COCO
polygon, so a fully visible polygonal object can be stored as its polygon and read back to exactly
the pixels that were painted.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from scnet.data.masks import polygons_to_mask

# Vertices on round outlines; enough that circles and ellipses look round at a few hundred pixels.
_ROUND_VERTICES = 48


@dataclass(frozen=True)
class ShapeClass:
    name: str
    category_id: int
    rgb: tuple[int, int, int]


# Category ids are deliberately non-contiguous, like COCO's, so the label <-> category id mapping is
# exercised end to end at smoke scale. Label k (index in sorted ids) is the k-th entry here.
CLASSES: tuple[ShapeClass, ...] = (
    ShapeClass("circle", 1, (220, 40, 40)),
    ShapeClass("square", 2, (40, 170, 60)),
    ShapeClass("triangle", 4, (40, 80, 225)),
    ShapeClass("ellipse", 5, (235, 200, 35)),
    ShapeClass("ring", 7, (205, 55, 205)),
    ShapeClass("cross", 9, (35, 200, 215)),
)


@dataclass(frozen=True)
class Outline:
    """A shape at the origin: polygons that are filled, and holes cut out of them (rings only)."""

    fill: list[np.ndarray]
    holes: list[np.ndarray]

    @property
    def vertices(self) -> np.ndarray:
        return np.concatenate(self.fill)

    def moved(self, dx: float, dy: float) -> "Outline":
        shift = np.array([dx, dy])
        return Outline([p + shift for p in self.fill], [p + shift for p in self.holes])

    def coco_polygons(self) -> list[list[float]]:
        """Flat `[x0, y0, x1, y1, ...]` lists rounded to 1/100 px, exactly what gets rasterised."""
        return [[round(float(v), 2) for v in poly.reshape(-1)] for poly in self.fill]

    def rasterise(self, height: int, width: int) -> np.ndarray:
        mask = polygons_to_mask(self.coco_polygons(), height, width).astype(bool)
        if self.holes:
            holes = [[round(float(v), 2) for v in p.reshape(-1)] for p in self.holes]
            mask &= ~polygons_to_mask(holes, height, width).astype(bool)
        return mask


def _rotate(points: np.ndarray, angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return points @ np.array([[c, s], [-s, c]])


def _ellipse(rx: float, ry: float, angle: float) -> np.ndarray:
    t = np.linspace(0.0, 2 * math.pi, _ROUND_VERTICES, endpoint=False)
    return _rotate(np.stack([rx * np.cos(t), ry * np.sin(t)], axis=1), angle)


def outline(name: str, size: float, rng: np.random.Generator) -> Outline:
    """An outline of class `name` about `size` pixels across, randomly rotated and proportioned."""
    radius = size / 2
    if name == "circle":
        return Outline([_ellipse(radius, radius, 0.0)], [])
    if name == "square":
        half = radius / math.sqrt(2)
        corners = np.array([[-half, -half], [half, -half], [half, half], [-half, half]])
        return Outline([_rotate(corners, rng.uniform(0, math.pi / 2))], [])
    if name == "triangle":
        t = np.array([0.0, 2 * math.pi / 3, 4 * math.pi / 3]) + rng.uniform(0, 2 * math.pi / 3)
        return Outline([np.stack([radius * np.cos(t), radius * np.sin(t)], axis=1)], [])
    if name == "ellipse":
        return Outline([_ellipse(radius, radius * rng.uniform(0.4, 0.6), rng.uniform(0, math.pi))], [])
    if name == "ring":
        inner = radius * rng.uniform(0.45, 0.6)
        return Outline([_ellipse(radius, radius, 0.0)], [_ellipse(inner, inner, 0.0)])
    if name == "cross":
        a, t = radius * 0.95, radius * rng.uniform(0.28, 0.38)
        arm = [[t, -t], [a, -t], [a, t], [t, t], [t, a], [-t, a], [-t, t], [-a, t], [-a, -t], [-t, -t], [-t, -a], [t, -a]]
        return Outline([_rotate(np.array(arm, dtype=float), rng.uniform(0, math.pi / 2))], [])
    raise ValueError(f"unknown shape {name!r}; known: {[c.name for c in CLASSES]}")
