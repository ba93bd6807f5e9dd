"""Compose one synthetic image: textured background, objects painted back to front, exact visibility.

Objects are painted in depth order, each over the ones before it; an object's mask is what remains
visible of it at the end, so masks never overlap and together with the background they tile the
image. A placement is rejected when it would hide too much of an object already there, so
occlusions stay partial and every object keeps something to learn from.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from scnet.data.synthetic.shapes import CLASSES, Outline, outline

PLACEMENT_TRIES = 30


@dataclass(frozen=True)
class RenderSettings:
    width: int
    height: int
    min_objects: int = 3
    max_objects: int = 8
    min_visible_fraction: float = 0.4
    min_visible_pixels: int = 16

    @property
    def size_range(self) -> tuple[float, float]:
        """Object extents from small (COCO 'small': < 32x32 px) to large, relative to the short side."""
        short = min(self.width, self.height)
        return max(12.0, 0.09 * short), 0.9 * short


@dataclass
class PlacedObject:
    label: int
    outline: Outline
    area_full: int
    visible: np.ndarray  # bool [H, W]: what is left to see of it


@dataclass
class RenderedImage:
    pixels: np.ndarray  # uint8 [H, W, 3] RGB
    semantic: np.ndarray  # uint8 [H, W]: 0 background, label + 1
    objects: list[PlacedObject]  # back to front, only those still visible

    def fully_visible(self, obj: PlacedObject) -> bool:
        return int(obj.visible.sum()) == obj.area_full


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Grey-ish texture: smooth blotches plus, on most images, stripes or a checkerboard."""
    base = rng.uniform(70, 190) + rng.uniform(-15, 15, size=3)
    grid = rng.normal(0.0, 1.0, size=(int(rng.integers(3, 9)), int(rng.integers(3, 9)))).astype(np.float32)
    blotches = np.asarray(Image.fromarray(grid).resize((width, height), Image.Resampling.BICUBIC)) * 22.0
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    pattern = np.zeros((height, width), dtype=np.float32)
    kind = rng.integers(0, 3)
    period = rng.uniform(8, 24)
    if kind == 1:
        theta = rng.uniform(0, math.pi)
        pattern = 10.0 * np.sin(2 * math.pi * (xs * math.cos(theta) + ys * math.sin(theta)) / period)
    elif kind == 2:
        pattern = 8.0 * np.sign(np.sin(2 * math.pi * xs / period) * np.sin(2 * math.pi * ys / period))
    return base[None, None, :] + (blotches + pattern)[..., None]


def _paint(canvas: np.ndarray, mask: np.ndarray, label: int, center: tuple[float, float], size: float,
           rng: np.random.Generator) -> None:
    """Class colour with jitter and a soft linear shading, so colour alone is a strong but noisy cue."""
    colour = np.array(CLASSES[label].rgb, dtype=np.float32) + rng.uniform(-25, 25, size=3)
    ys, xs = np.nonzero(mask)
    phi, amplitude = rng.uniform(0, 2 * math.pi), rng.uniform(0, 20)
    shade = amplitude * ((xs - center[0]) * math.cos(phi) + (ys - center[1]) * math.sin(phi)) / (size / 2)
    canvas[ys, xs] = colour[None, :] + shade[:, None]


def _try_place(shape: Outline, settings: RenderSettings, placed: list[PlacedObject],
               rng: np.random.Generator) -> tuple[Outline, np.ndarray, tuple[float, float]] | None:
    low, high = shape.vertices.min(axis=0), shape.vertices.max(axis=0)
    x_range = (-low[0], settings.width - high[0])
    y_range = (-low[1], settings.height - high[1])
    if x_range[0] > x_range[1] or y_range[0] > y_range[1]:
        return None
    for _ in range(PLACEMENT_TRIES):
        center = (float(rng.uniform(*x_range)), float(rng.uniform(*y_range)))
        moved = shape.moved(*center)
        mask = moved.rasterise(settings.height, settings.width)
        if mask.sum() < settings.min_visible_pixels:
            return None
        if all(_still_visible(obj, mask, settings) for obj in placed):
            return moved, mask, center
    return None


def _still_visible(obj: PlacedObject, cover: np.ndarray, settings: RenderSettings) -> bool:
    left = int((obj.visible & ~cover).sum())
    return left >= settings.min_visible_pixels and left >= settings.min_visible_fraction * obj.area_full


def render_image(rng: np.random.Generator, settings: RenderSettings) -> RenderedImage:
    """One image with `min_objects`..`max_objects` objects (fewer if they do not fit)."""
    height, width = settings.height, settings.width
    canvas = _background(rng, height, width)
    placed: list[PlacedObject] = []
    wanted = int(rng.integers(settings.min_objects, settings.max_objects + 1))
    min_size, max_size = settings.size_range
    for _ in range(wanted):
        label = int(rng.integers(len(CLASSES)))
        size = float(math.exp(rng.uniform(math.log(min_size), math.log(max_size))))
        result = _try_place(outline(CLASSES[label].name, size, rng), settings, placed, rng)
        if result is None:
            continue
        moved, mask, center = result
        for obj in placed:
            obj.visible &= ~mask
        _paint(canvas, mask, label, center, size, rng)
        placed.append(PlacedObject(label, moved, int(mask.sum()), mask.copy()))
    canvas += rng.normal(0.0, 5.0, size=canvas.shape)
    pixels = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
    visible = [obj for obj in placed if obj.visible.any()]  # fully hidden objects are not annotated
    semantic = np.zeros((height, width), dtype=np.uint8)
    for obj in visible:
        semantic[obj.visible] = obj.label + 1
    return RenderedImage(pixels, semantic, visible)
