"""COCO segmentations (polygons, uncompressed RLE, compressed RLE) <-> binary masks.

All rasterisation goes through pycocotools, so a polygon written by the synthetic generator and read
back here covers exactly the same pixels, and masks agree with what COCO evaluation measures.
"""
from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils


def usable_polygons(segmentation: list[Any]) -> list[list[float]]:
    """Polygons pycocotools can rasterise: an even number of coordinates, at least three points.

    pycocotools reads a first entry of exactly four numbers as a box, so shorter polygons are dropped
    here (as MMDetection does) instead of silently turning into rectangles.
    """
    return [list(map(float, poly)) for poly in segmentation
            if isinstance(poly, (list, tuple)) and len(poly) >= 6 and len(poly) % 2 == 0]


def segmentation_to_rle(segmentation: Any, height: int, width: int) -> dict[str, Any]:
    """One compressed RLE for any COCO segmentation of an image of `height` x `width`."""
    if isinstance(segmentation, list):
        polygons = usable_polygons(segmentation)
        if not polygons:
            raise ValueError("segmentation has no polygon with at least 3 points")
        return mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
    if isinstance(segmentation, dict):
        if isinstance(segmentation.get("counts"), list):  # uncompressed RLE
            return mask_utils.frPyObjects(segmentation, height, width)
        counts = segmentation["counts"]
        return {"size": list(segmentation["size"]),
                "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
    raise ValueError(f"segmentation must be a list of polygons or an RLE dict, got {type(segmentation).__name__}")


def decode_segmentation(segmentation: Any, height: int, width: int) -> np.ndarray:
    """The binary mask `uint8 [height, width]` of a COCO segmentation."""
    rle = segmentation_to_rle(segmentation, height, width)
    with warnings.catch_warnings():
        # pycocotools 2.0.x's Cython decoder trips a NumPy 2 DeprecationWarning on every call.
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=r"__array__ implementation")
        mask = mask_utils.decode(rle)
    return np.ascontiguousarray(mask, dtype=np.uint8)


def encode_mask(mask: np.ndarray) -> dict[str, Any]:
    """A JSON-ready compressed RLE (`counts` as text) of a binary `[H, W]` mask."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def polygons_to_mask(polygons: list[list[float]], height: int, width: int) -> np.ndarray:
    """Rasterise polygons exactly as `decode_segmentation` will when they are read back."""
    return decode_segmentation(polygons, height, width)


def mask_box_xywh(mask: np.ndarray) -> list[float]:
    """The tight COCO box `[x, y, w, h]` of a binary mask; pixel i spans [i, i + 1)."""
    ys, xs = np.nonzero(mask)
    if xs.size == 0:
        return [0.0, 0.0, 0.0, 0.0]
    x0, y0 = int(xs.min()), int(ys.min())
    return [float(x0), float(y0), float(xs.max() + 1 - x0), float(ys.max() + 1 - y0)]
