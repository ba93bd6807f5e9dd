"""Semantic-segmentation targets for HTC's / SCNet's semantic branch.

Values this module outputs (int64 maps, one value per pixel):

* COCO-stuff `stuffthingmaps` (when `root/stuffthingmaps/<split>2017/` exists): the PNG values are
  passed through unchanged, i.e. 0..181 = COCO-stuff id - 1 (things 0..89 with COCO's gaps, stuff
  91..181) and 255 = unlabeled/ignore. Like MMDetection we declare 183 semantic classes
  (`COCO_STUFF_SEMANTIC_CLASSES`), unless `root/dataset_info.json` says otherwise (see below).
* Derived maps (no stuff maps): 0 = background, k + 1 = thing label k (k = index in the sorted
  category ids), 255 = ignore (crowd regions not covered by a non-crowd instance), so
  `num_semantic_classes = num_classes + 1`.
* The synthetic dataset writes stuffthingmaps with the derived encoding (0 = background, k + 1 =
  class k) and records `"num_semantic_classes": num_classes + 1` in `root/dataset_info.json`; any
  dataset may use that file to declare its own class count for its stuff maps.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, Iterable

import numpy as np
from PIL import Image

from scnet.data.errors import DatasetError

COCO_STUFF_SEMANTIC_CLASSES = 183
IGNORE_INDEX = 255
DATASET_INFO_FILE = "dataset_info.json"

_warned_roots: set[str] = set()


def stuff_map_dir(root: Path, split: str) -> Path:
    return root / "stuffthingmaps" / f"{split}2017"


def stuff_map_path(root: Path, split: str, file_name: str) -> Path:
    """COCO-stuff names each map after its image: `000000000139.jpg` -> `000000000139.png`."""
    return stuff_map_dir(root, split) / Path(file_name).with_suffix(".png")


def read_dataset_info(root: Path) -> dict[str, Any]:
    """`root/dataset_info.json` as a dict, or {} when the dataset has none."""
    path = root / DATASET_INFO_FILE
    if not path.exists():
        return {}
    try:
        info = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{path}: cannot read it as JSON ({exc}); fix or delete the file") from exc
    if not isinstance(info, dict):
        raise DatasetError(f"{path}: expected a JSON object, got {type(info).__name__}; fix or delete the file")
    return info


def stuff_semantic_classes(root: Path) -> int:
    """How many semantic classes the dataset's stuff maps use: dataset_info.json's word, else 183."""
    info = read_dataset_info(root)
    if "num_semantic_classes" not in info:
        return COCO_STUFF_SEMANTIC_CLASSES
    value = info["num_semantic_classes"]
    if not isinstance(value, int) or isinstance(value, bool) or not 2 <= value <= IGNORE_INDEX:
        raise DatasetError(f"{root / DATASET_INFO_FILE}: field 'num_semantic_classes' must be an integer in "
                           f"2..255, got {value!r}; fix the value or delete the field (COCO-stuff default: 183)")
    return value


def warn_derived_once(root: Path, split: str, num_classes: int) -> None:
    """Say once per dataset root that the semantic branch trains on thing classes only."""
    key = str(root.resolve())
    if key in _warned_roots:
        return
    _warned_roots.add(key)
    warnings.warn(
        f"no COCO-stuff maps at {stuff_map_dir(root, split)}: semantic targets are derived from the "
        f"instance masks (thing classes only; 0 = background, label k -> k + 1, 255 = crowd), "
        f"num_semantic_classes = {num_classes + 1}. Add COCO-stuff 'stuffthingmaps' for the paper's "
        "183-class semantic branch.", UserWarning, stacklevel=3)


def load_stuff_map(path: Path, height: int, width: int, num_semantic_classes: int) -> np.ndarray:
    """Read a stuffthingmaps PNG as int64 `[H, W]`, checking its size and values against the dataset."""
    try:
        with Image.open(path) as image:
            values = np.array(image)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DatasetError(f"{path}: cannot read the semantic map ({exc}); replace the file") from exc
    if values.ndim != 2:
        raise DatasetError(f"{path}: a semantic map must be a single-channel PNG, got shape {values.shape}")
    if values.shape != (height, width):
        raise DatasetError(f"{path}: semantic map is {values.shape[1]}x{values.shape[0]} but its image is "
                           f"{width}x{height} (annotation 'width'/'height'); regenerate the map")
    values = values.astype(np.int64)
    bad = (values >= num_semantic_classes) & (values != IGNORE_INDEX)
    if bad.any():
        raise DatasetError(f"{path}: value {int(values[bad][0])} is outside 0..{num_semantic_classes - 1} and not "
                           f"{IGNORE_INDEX} (ignore); fix the map or 'num_semantic_classes' in {DATASET_INFO_FILE}")
    return values


def derive_semantic_map(height: int, width: int, instances: Iterable[tuple[np.ndarray, int]],
                        crowd_masks: Iterable[np.ndarray]) -> np.ndarray:
    """Semantic map from instance masks: crowd first as ignore, then instances largest to smallest.

    Painting small objects last keeps them visible where COCO's masks overlap; crowd pixels stay
    ignore only where no individual instance claims them.
    """
    semantic = np.zeros((height, width), dtype=np.int64)
    for mask in crowd_masks:
        semantic[mask.astype(bool)] = IGNORE_INDEX
    ordered = sorted(instances, key=lambda item: -int(item[0].sum()))
    for mask, label in ordered:
        semantic[mask.astype(bool)] = label + 1
    return semantic
