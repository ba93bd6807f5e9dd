"""A synthetic COCO-format instance-segmentation dataset for smoke-scale runs: coloured shapes on texture.

Six classes (circle, square, triangle, ellipse, ring, cross; category ids 1, 2, 4, 5, 7, 9), each
with a typical colour plus jitter, sizes from COCO-small to large, partial occlusions with masks of
what stays visible, polygons for fully visible polygonal objects and RLE for the rest, and a semantic
map per image. `python -m scnet.data.synthetic --out data/shapes --seed 0` writes it.
"""
from scnet.data.synthetic.generate import (
    FORMAT_VERSION,
    SyntheticParams,
    ensure_synthetic,
    existing_dataset_problem,
    generate_synthetic,
)
from scnet.data.synthetic.shapes import CLASSES

__all__ = ["CLASSES", "FORMAT_VERSION", "SyntheticParams", "ensure_synthetic", "existing_dataset_problem",
           "generate_synthetic"]
