"""COCO 2017 instances (and any dataset in the same layout) as `(image, target, meta)` samples.

Layout: `root/annotations/instances_<split>2017.json`, images in `root/<split>2017/`, optional
COCO-stuff maps in `root/stuffthingmaps/<split>2017/<image stem>.png` (see `scnet.data.semantic` for the
values the semantic targets take).

Rules, as MMDetection applies them to COCO:
* labels are 0-based indices into the sorted category ids (`label_to_category_id` maps back);
* crowd annotations (`iscrowd=1`) are never targets; in derived semantic maps they are ignore (255);
* annotations whose box has width or height < 1, lies outside the image, or whose area is <= 0 are
  not trained on (they stay in `coco`, the ground truth COCO evaluation sees, as in MMDetection);
* polygons with fewer than 3 points (or an odd number of coordinates) are removed, and annotations
  left without a polygon are removed from `coco` too, so COCO evaluation never sees what training
  cannot (see `scnet.data.ground_truth`); both are counted in `stats`;
* in training (`training=True`, the default for split "train") images left without any instance
  are skipped; in evaluation every image of the JSON is kept, in JSON order.

Everything that can be checked without decoding pixels (JSON structure, category ids, image files
present, stuff maps present) is checked in the constructor; unreadable image contents are reported
when the image is loaded, naming the file.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from pycocotools.coco import COCO
from torch import Tensor

from scnet.data import semantic as sem
from scnet.data.errors import DatasetError
from scnet.data.ground_truth import usable_ground_truth
from scnet.data.location import missing_dataset_problem
from scnet.data.masks import decode_segmentation
from scnet.data.schema import check_coco_instances
from scnet.data.seeding import sample_generator
from scnet.data.transforms import Transform

logger = logging.getLogger(__name__)

SEMANTIC_MODES = ("auto", "stuff", "derived", None)


def annotation_path(root: Path, split: str) -> Path:
    return root / "annotations" / f"instances_{split}2017.json"


def image_dir(root: Path, split: str) -> Path:
    return root / f"{split}2017"


class CocoInstances(torch.utils.data.Dataset):
    """One split of a COCO-format instance-segmentation dataset.

    Args:
        root: dataset root (see the module docstring for the layout).
        split: "train", "val", or any `<name>` with `instances_<name>2017.json`.
        transforms: called as `transforms(image, target, meta, generator)`; see `build_transforms`.
        training: training rules (skip images without instances); default `split == "train"`.
        semantic: "auto" (stuff maps if present, else derived from instance masks with a one-time
            warning), "stuff" (require stuff maps), "derived", or None (no `semantic_seg` target).
        seed: base seed of the per-sample generators handed to `transforms`; with `set_epoch`, each
            sample's random choices depend only on (seed, epoch, index).
    """

    def __init__(self, root: str | os.PathLike[str], split: str = "train", transforms: Transform | None = None, *,
                 training: bool | None = None, semantic: str | None = "auto", seed: int = 0):
        if semantic not in SEMANTIC_MODES:
            raise ValueError(f"semantic={semantic!r} must be one of {SEMANTIC_MODES}")
        self.root = Path(root)
        self.split = split
        self.transforms = transforms
        self.training = split == "train" if training is None else bool(training)
        self.seed = int(seed)
        self.epoch = 0
        self.ann_file = annotation_path(self.root, split)
        self.image_dir = image_dir(self.root, split)
        if not self.root.is_dir():  # a mistyped root: say so, not "annotation file not found"
            raise DatasetError(str(missing_dataset_problem(self.root)))

        self.coco, unusable_polygons = _load_coco(self.ann_file)
        category_ids = sorted(self.coco.cats)
        self.label_to_category_id: list[int] = category_ids
        self.category_id_to_label: dict[int, int] = {cid: label for label, cid in enumerate(category_ids)}
        self.class_names: list[str] = [self.coco.cats[cid]["name"] for cid in category_ids]
        self.num_classes = len(category_ids)

        self.stats = {"degenerate_boxes_dropped": 0, "unusable_polygons_dropped": unusable_polygons,
                      "crowd_ignored": 0, "empty_images_skipped": 0}
        self.image_ids: list[int] = []
        self._instance_ids: list[list[int]] = []
        self._crowd_ids: list[list[int]] = []
        self._index_annotations()
        self._check_image_files()

        self.semantic_source = self._resolve_semantic(semantic)
        self.num_semantic_classes: int | None = {
            "stuff": lambda: sem.stuff_semantic_classes(self.root),
            "derived": lambda: self.num_classes + 1,
            None: lambda: None,
        }[self.semantic_source]()
        self._report_drops()

    # ------------------------------------------------------------------ construction
    def _index_annotations(self) -> None:
        for image_id in self.coco.getImgIds():
            info = self.coco.imgs[image_id]
            instances, crowd = [], []
            for ann in self.coco.imgToAnns.get(image_id, []):
                if _degenerate(ann, info["width"], info["height"]):
                    self.stats["degenerate_boxes_dropped"] += 1
                elif ann.get("iscrowd", 0):
                    crowd.append(ann["id"])
                    self.stats["crowd_ignored"] += 1
                else:
                    instances.append(ann["id"])
            if self.training and not instances:
                self.stats["empty_images_skipped"] += 1
                continue
            self.image_ids.append(image_id)
            self._instance_ids.append(instances)
            self._crowd_ids.append(crowd)

    def _check_image_files(self) -> None:
        if not self.image_dir.is_dir():
            raise DatasetError(f"{self.image_dir}: image folder not found (needed by {self.ann_file}); "
                               f"put the {self.split}2017 images there")
        names = [self.coco.imgs[i]["file_name"] for i in self.image_ids]
        missing = _missing_files(self.image_dir, names)
        if missing:
            raise DatasetError(
                f"{self.image_dir}: {len(missing)} image file(s) named in {self.ann_file} field "
                f"'images[].file_name' are missing, e.g. {', '.join(missing[:5])}; add the images or "
                "remove their entries from the JSON")

    def _resolve_semantic(self, mode: str | None) -> str | None:
        stuff_dir = sem.stuff_map_dir(self.root, self.split)
        if mode == "auto":
            mode = "stuff" if stuff_dir.is_dir() else "derived"
            if mode == "derived":
                sem.warn_derived_once(self.root, self.split, self.num_classes)
        if mode == "stuff":
            if not stuff_dir.is_dir():
                raise DatasetError(f"{stuff_dir}: COCO-stuff map folder not found (semantic='stuff'); add the "
                                   "stuffthingmaps or use semantic='derived'")
            maps = [sem.stuff_map_path(self.root, self.split, self.coco.imgs[i]["file_name"]).name
                    for i in self.image_ids]
            missing = _missing_files(stuff_dir, maps)
            if missing:
                raise DatasetError(f"{stuff_dir}: {len(missing)} semantic map(s) for images of {self.ann_file} "
                                   f"are missing, e.g. {', '.join(missing[:5])}; add them or remove the folder "
                                   "to derive semantic targets from the instance masks")
        return mode

    def _report_drops(self) -> None:
        dropped = self.stats["degenerate_boxes_dropped"] + self.stats["unusable_polygons_dropped"]
        if dropped:
            logger.warning("%s: dropped %d annotation(s): %d with a box of width or height < 1, outside the "
                           "image or of area <= 0 (not trained on), %d whose polygons all have < 3 points "
                           "(removed, also from evaluation)", self.ann_file, dropped,
                           self.stats["degenerate_boxes_dropped"], self.stats["unusable_polygons_dropped"])
        if self.stats["empty_images_skipped"]:
            logger.info("%s: skipped %d image(s) without instances for training", self.ann_file,
                        self.stats["empty_images_skipped"])

    # ------------------------------------------------------------------ access
    def __len__(self) -> int:
        return len(self.image_ids)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose random choices `__getitem__` makes; call before iterating the epoch.

        With DataLoader workers, call it before creating the epoch's iterator and do not use
        `persistent_workers` (workers hold a copy of the dataset made when they start).
        """
        self.epoch = int(epoch)

    def instance_ids(self, index: int) -> list[int]:
        """Ids of the annotations sample `index` trains on / is evaluated against (no crowd, no dropped)."""
        return list(self._instance_ids[index])

    def image_info(self, index: int) -> dict[str, Any]:
        """The JSON `images` entry of sample `index` (id, file_name, width, height)."""
        return self.coco.imgs[self.image_ids[index]]

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Tensor], dict[str, Any]]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        info = self.image_info(index)
        height, width = info["height"], info["width"]
        image = self._load_image(info)
        annotations = [self.coco.anns[i] for i in self._instance_ids[index]]
        masks = self._decode_masks(annotations, info)
        target: dict[str, Tensor] = {
            "boxes": _boxes_xyxy(annotations, width, height),
            "labels": torch.tensor([self.category_id_to_label[a["category_id"]] for a in annotations],
                                   dtype=torch.int64),
            "masks": torch.from_numpy(masks),
        }
        if self.semantic_source is not None:
            target["semantic_seg"] = torch.from_numpy(self._semantic_map(index, info, annotations, masks))
        meta: dict[str, Any] = {"image_id": info["id"], "file_name": info["file_name"],
                                "ori_shape": (height, width), "img_shape": (height, width),
                                "scale_factor": (1.0, 1.0), "flip": False}
        if self.transforms is not None:
            generator = sample_generator(self.seed, self.epoch, index)
            image, target, meta = self.transforms(image, target, meta, generator)
        return image, target, meta

    # ------------------------------------------------------------------ loading
    def _load_image(self, info: dict[str, Any]) -> Tensor:
        path = self.image_dir / info["file_name"]
        try:
            with Image.open(path) as opened:
                opened.load()
                pixels = np.asarray(opened.convert("RGB"))
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            raise DatasetError(f"{path}: cannot read the image ({exc}); replace the file or remove image id "
                               f"{info['id']} from {self.ann_file}") from exc
        if pixels.shape[:2] != (info["height"], info["width"]):
            raise DatasetError(f"{path}: image is {pixels.shape[1]}x{pixels.shape[0]} but {self.ann_file} says "
                               f"'width'={info['width']}, 'height'={info['height']} for image id {info['id']}; "
                               "fix the JSON or the image")
        return torch.from_numpy(pixels.copy()).permute(2, 0, 1).float()

    def _decode(self, ann: dict[str, Any], info: dict[str, Any]) -> np.ndarray:
        try:
            return decode_segmentation(ann["segmentation"], info["height"], info["width"])
        except Exception as exc:  # pycocotools raises assorted types for malformed input
            raise DatasetError(f"{self.ann_file}: annotation id {ann['id']} (image id {info['id']}): field "
                               f"'segmentation' cannot be decoded ({exc}); fix the polygon or RLE") from exc

    def _decode_masks(self, annotations: list[dict[str, Any]], info: dict[str, Any]) -> np.ndarray:
        if not annotations:
            return np.zeros((0, info["height"], info["width"]), dtype=np.uint8)
        return np.stack([self._decode(ann, info) for ann in annotations])

    def _semantic_map(self, index: int, info: dict[str, Any], annotations: list[dict[str, Any]],
                      masks: np.ndarray) -> np.ndarray:
        if self.semantic_source == "stuff":
            path = sem.stuff_map_path(self.root, self.split, info["file_name"])
            assert self.num_semantic_classes is not None
            return sem.load_stuff_map(path, info["height"], info["width"], self.num_semantic_classes)
        crowd = [self._decode(self.coco.anns[i], info) for i in self._crowd_ids[index]]
        labels = [self.category_id_to_label[a["category_id"]] for a in annotations]
        return sem.derive_semantic_map(info["height"], info["width"], zip(masks, labels), crowd)


def _load_coco(path: Path) -> tuple[COCO, int]:
    """The checked annotation file as a pycocotools index, with polygons cleaned (see
    `usable_ground_truth`), and how many annotations the cleaning removed."""
    if not path.is_file():
        raise DatasetError(f"{path}: annotation file not found; expected the layout "
                           "root/annotations/instances_<split>2017.json (make a synthetic one with "
                           "`python -m scnet.data.synthetic --out ROOT`)")
    try:
        with path.open("rb") as handle:
            data = json.load(handle)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise DatasetError(f"{path}: cannot read it as JSON ({exc}); is it a COCO instances file?") from exc
    check_coco_instances(data, path)
    data["annotations"], removed = usable_ground_truth(data["annotations"])
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress lines
        coco.createIndex()
    return coco, removed


def _degenerate(ann: dict[str, Any], width: int, height: int) -> bool:
    """MMDetection's test: width or height < 1, no overlap with the image, or area <= 0."""
    x, y, w, h = ann["bbox"]
    overlap_w = max(0.0, min(x + w, width) - max(x, 0.0))
    overlap_h = max(0.0, min(y + h, height) - max(y, 0.0))
    return w < 1 or h < 1 or overlap_w * overlap_h == 0 or ann["area"] <= 0


def _boxes_xyxy(annotations: list[dict[str, Any]], width: int, height: int) -> Tensor:
    boxes = torch.tensor([a["bbox"] for a in annotations], dtype=torch.float32).reshape(-1, 4)
    boxes[:, 2:] += boxes[:, :2]
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
    return boxes


def _missing_files(folder: Path, names: list[str]) -> list[str]:
    """Names absent from `folder`, with one directory listing instead of a stat per file."""
    present = set(os.listdir(folder))
    return [n for n in names if n not in present and not ("/" in n and (folder / n).is_file())]
