"""The ground truth that both training and COCO evaluation see: polygons pycocotools can rasterise.

pycocotools raises on a polygon of fewer than 3 points when COCOeval rasterises the ground truth
(`frPyObjects` reads a first entry of 4 numbers as a box, and of 2 as nothing it knows), so an
annotation our loader drops for its polygons would otherwise crash mask evaluation after all the
training, or count as an object no detector could match. MMDetection's loader keeps only polygons
with an even number of coordinates and at least 3 points and ignores an instance left with none;
its CocoMetric reads the raw file and so has no defined behaviour for these (pycocotools fails).

Decision: one cleaned ground truth, used by the loader *and* handed to COCOeval. Each polygon
segmentation keeps only its usable polygons; an annotation left without any is removed (and
counted). Everything else is kept exactly as written, including annotations with a box of width or
height < 1: the loader does not train on those (MMDetection's rule) but MMDetection's CocoMetric
evaluates them as objects, and so do we, so COCO AP stays MMDetection's.
"""
from __future__ import annotations

from typing import Any

from scnet.data.masks import usable_polygons


def usable_ground_truth(annotations: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
    """The annotations with polygon segmentations reduced to usable polygons, minus those left with
    none, and how many were removed. Expects annotations already checked by `check_coco_instances`."""
    kept: list[dict[str, Any]] = []
    removed = 0
    for ann in annotations:
        segmentation = ann["segmentation"]
        if isinstance(segmentation, list):
            polygons = usable_polygons(segmentation)
            if not polygons:
                removed += 1
                continue
            if len(polygons) != len(segmentation):
                ann = {**ann, "segmentation": polygons}
        kept.append(ann)
    return kept, removed
