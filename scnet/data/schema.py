"""Structural check of a COCO instances JSON, done once before any training starts.

Errors name the file, the entry (list index and id) and the field, so a broken annotation file fails
in seconds with a message that says what to fix, instead of hours later inside a data-loader worker.
"""
from __future__ import annotations

import math
from pathlib import Path, PurePosixPath
from typing import Any

from scnet.data.errors import DatasetError
from scnet.data.rle import compressed_rle_problem
from scnet.messages import describe

_TOP_LEVEL = ("images", "annotations", "categories")
_NUMBER_TYPES = frozenset((int, float))  # exact types: bool, a subclass of int, is not a coordinate


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)) and math.isfinite(value)


# The longest file or folder name Linux filesystems store (NAME_MAX).
MAX_NAME_BYTES = 255


def _where(path: Path, kind: str, index: int, entry: Any) -> str:
    ident = entry.get("id") if isinstance(entry, dict) else None
    return f"{path}: {kind}[{index}]" + (f" (id {ident})" if ident is not None else "")


def _preview(ids: list[Any], limit: int = 8) -> str:
    shown = ", ".join(str(i) for i in sorted(ids)[:limit])
    return shown + (", ..." if len(ids) > limit else "")


def check_coco_instances(data: Any, path: Path) -> None:
    """Raise `DatasetError` at the first entry that breaks the COCO instances format."""
    if not isinstance(data, dict) or not all(k in data for k in _TOP_LEVEL):
        found = sorted(data)[:10] if isinstance(data, dict) else type(data).__name__
        raise DatasetError(
            f"{path}: not a COCO instances file: expected a JSON object with fields {list(_TOP_LEVEL)}, "
            f"found {found}; point the dataset at an instances_<split>2017.json file")
    for key in _TOP_LEVEL:
        if not isinstance(data[key], list):
            raise DatasetError(f"{path}: field '{key}' must be a list, got {type(data[key]).__name__}")
    category_ids = _check_categories(data["categories"], path)
    image_sizes = _check_images(data["images"], path)
    _check_annotations(data["annotations"], path, image_sizes, category_ids)


def _check_categories(categories: list[Any], path: Path) -> set[int]:
    if not categories:
        raise DatasetError(f"{path}: field 'categories' is empty; a detection dataset needs at least one category")
    seen: set[int] = set()
    for index, category in enumerate(categories):
        where = _where(path, "categories", index, category)
        if not isinstance(category, dict) or not _is_int(category.get("id")):
            raise DatasetError(f"{where}: field 'id' must be an integer")
        if not isinstance(category.get("name"), str):
            raise DatasetError(f"{where}: field 'name' must be a string")
        if category["id"] in seen:
            raise DatasetError(f"{where}: field 'id' repeats category id {category['id']}; ids must be unique")
        seen.add(category["id"])
    return seen


def _check_images(images: list[Any], path: Path) -> dict[int, tuple[int, int]]:
    sizes: dict[int, tuple[int, int]] = {}
    for index, image in enumerate(images):
        where = _where(path, "images", index, image)
        if not isinstance(image, dict) or not _is_int(image.get("id")):
            raise DatasetError(f"{where}: field 'id' must be an integer")
        if image["id"] in sizes:
            raise DatasetError(f"{where}: field 'id' repeats image id {image['id']}; ids must be unique")
        if not isinstance(image.get("file_name"), str) or not image["file_name"]:
            raise DatasetError(f"{where}: field 'file_name' must be a non-empty string")
        name = PurePosixPath(image["file_name"].replace("\\", "/"))
        if name.is_absolute() or ".." in name.parts:
            raise DatasetError(f"{where}: field 'file_name' = {describe(image['file_name'])} must be a path inside "
                               "the split's image folder (no leading '/', no '..')")
        if "\0" in image["file_name"] or any(len(part.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES
                                             for part in name.parts):
            raise DatasetError(f"{where}: field 'file_name' = {describe(image['file_name'])} holds a NUL byte or a "
                               f"name of over {MAX_NAME_BYTES} bytes, which no filesystem stores; fix the entry")
        for key in ("height", "width"):
            if not _is_int(image.get(key)) or image[key] < 1:
                raise DatasetError(f"{where}: field '{key}' must be a positive integer, got {image.get(key)!r}")
        sizes[image["id"]] = (image["height"], image["width"])
    return sizes


def _check_annotations(annotations: list[Any], path: Path, image_sizes: dict[int, tuple[int, int]],
                       category_ids: set[int]) -> None:
    seen: set[Any] = set()
    for index, ann in enumerate(annotations):
        where = _where(path, "annotations", index, ann)
        if not isinstance(ann, dict) or not _is_int(ann.get("id")):
            raise DatasetError(f"{where}: each annotation must be an object with an integer 'id'")
        if ann["id"] in seen:
            raise DatasetError(f"{where}: field 'id' repeats annotation id {ann['id']}; ids must be unique")
        seen.add(ann["id"])
        if not _is_int(ann.get("image_id")) or ann["image_id"] not in image_sizes:
            raise DatasetError(f"{where}: field 'image_id' = {ann.get('image_id')!r} is not the id of any entry "
                               "in 'images'; fix the annotation or add the image")
        if not _is_int(ann.get("category_id")) or ann["category_id"] not in category_ids:
            raise DatasetError(
                f"{where}: field 'category_id' = {ann.get('category_id')!r} is not in 'categories' "
                f"(ids {_preview(list(category_ids))}); fix the annotation or add the category")
        bbox = ann.get("bbox")
        if not isinstance(bbox, list) or len(bbox) != 4 or not all(_is_number(v) for v in bbox):
            raise DatasetError(f"{where}: field 'bbox' must be [x, y, width, height] of 4 finite numbers, got {bbox!r}")
        if not _is_number(ann.get("area")):
            raise DatasetError(f"{where}: field 'area' must be a finite number (COCO evaluation needs it), "
                               f"got {ann.get('area')!r}")
        if ann.get("iscrowd", 0) not in (0, 1):
            raise DatasetError(f"{where}: field 'iscrowd' must be 0 or 1, got {ann.get('iscrowd')!r}")
        _check_segmentation(ann.get("segmentation"), where, image_sizes[ann["image_id"]])


def _check_segmentation(segmentation: Any, where: str, image_size: tuple[int, int]) -> None:
    if isinstance(segmentation, list):
        _check_polygons(segmentation, where)
        return
    if not isinstance(segmentation, dict) or "counts" not in segmentation or "size" not in segmentation:
        raise DatasetError(f"{where}: field 'segmentation' must be a list of polygons or an RLE object with "
                           f"'counts' and 'size', got {type(segmentation).__name__}")
    height, width = image_size
    size = segmentation["size"]
    if not isinstance(size, list) or [height, width] != size or not all(_is_int(v) for v in size):
        raise DatasetError(f"{where}: field 'segmentation.size' = {size!r} differs from its "
                           f"image's [height, width] = {[height, width]}")
    counts = segmentation["counts"]
    if isinstance(counts, list):
        if not all(_is_int(c) and c >= 0 for c in counts) or sum(counts) != height * width:
            raise DatasetError(f"{where}: field 'segmentation.counts' (uncompressed RLE) must be non-negative "
                               f"integers summing to height*width = {height * width}")
    elif isinstance(counts, str):
        problem = compressed_rle_problem(counts, height, width)
        if problem is not None:
            raise DatasetError(f"{where}: field 'segmentation.counts' is not a valid compressed RLE: {problem}; "
                               "re-encode the mask with pycocotools.mask.encode")
    else:
        raise DatasetError(f"{where}: field 'segmentation.counts' must be a string (compressed RLE) or a list "
                           f"of integers, got {type(counts).__name__}")


def _check_polygons(polygons: list[Any], where: str) -> None:
    """Every coordinate a finite number. Polygons with fewer than 3 points are legal here: the loader
    drops them, as MMDetection does (see `scnet.data.masks.usable_polygons`)."""
    for index, polygon in enumerate(polygons):
        if not isinstance(polygon, list):
            raise DatasetError(f"{where}: field 'segmentation[{index}]' must be a list of numbers "
                               f"[x1, y1, x2, y2, ...], got {type(polygon).__name__}")
        # One type test per number and one sum: cheap enough for COCO's ~20 million coordinates.
        if not _NUMBER_TYPES.issuperset(map(type, polygon)) or not math.isfinite(sum(polygon)):
            bad = next((repr(v) for v in polygon if not _is_number(v)), "coordinates whose sum overflows")
            raise DatasetError(f"{where}: field 'segmentation[{index}]' holds {bad}; polygon coordinates must "
                               "be finite numbers [x1, y1, x2, y2, ...]")
