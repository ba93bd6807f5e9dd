"""COCO 2017 instances (and any dataset in the same layout) as `(image, target, meta)` samples.

Layout: `root/annotations/instances_<split>2017.json`, images in `root/<split>2017/`, optional
COCO-stuff maps in `root/stuffthingmaps/<split>2017/<image stem>.png` (see `scnet.data.semantic` for the
values the semantic targets take).

Rules, as MMDetection 3.3.0 applies them to COCO (`CocoDataset.parse_data_info`, `LoadAnnotations`,
`filter_cfg=dict(filter_empty_gt=True, min_size=32)`):
* labels are 0-based indices into the sorted category ids (`label_to_category_id` maps back);
* annotations with `"ignore": true`, a box of width or height < 1, `area` <= 0, or a box that does not
  overlap the image are not trained on (counted in `stats`); they stay in `coco`, the ground truth COCO
  evaluation sees, as MMDetection's CocoMetric evaluates the file as written;
* crowd annotations (`iscrowd=1`), and instances without a usable mask (no polygon of >= 3 points,
  an RLE without `counts`/`size`), become *ignored regions*: their boxes are in the target as
  `ignored_boxes` / `ignored_labels`, never as instances; in derived semantic maps crowds are 255;
* in evaluation splits, polygons with fewer than 3 points (or an odd number of coordinates) are
  removed, and annotations left without a polygon are removed from `coco` too, so COCO evaluation
  never sees what pycocotools cannot rasterise (see `scnet.data.ground_truth`);
* in training (`training=True`, the default for split "train") an image is skipped when the JSON has
  no annotation at all for it, or when its shorter side is under 32 pixels; an image whose
  annotations were all dropped or ignored is kept (it trains on background, as in MMDetection); in
  evaluation every image of the JSON is kept, in JSON order.

Pixels go through `scnet.data.pipeline` (OpenCV decode, uint8 resize, nearest masks; see there).

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
from pycocotools.coco import COCO
from torch import Tensor

from scnet.data import semantic as sem
from scnet.data.errors import DatasetError
from scnet.data.ground_truth import usable_ground_truth
from scnet.data.location import missing_dataset_problem
from scnet.data.masks import decode_segmentation, usable_polygons
from scnet.data.pipeline import DEFAULT_SCALE, Transform, build_transforms, pack
from scnet.data.schema import check_coco_instances
from scnet.data.sample_seeds import sample_generator
from scnet.image_io import ImageError, read_bgr
from scnet.messages import path_kind, printable

logger = logging.getLogger(__name__)

SEMANTIC_MODES = ("auto", "stuff", "derived", None)
MIN_TRAIN_IMAGE_SIDE = 32  # MMDetection's filter_cfg min_size for COCO training


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

        # Training reads every annotation (an unusable mask makes an ignored region, as in MMDetection);
        # evaluation splits get the cleaned ground truth that COCOeval can rasterise.
        self.coco, unusable_polygons = _load_coco(self.ann_file, clean=not self.training)
        category_ids = sorted(self.coco.cats)
        self.label_to_category_id: list[int] = category_ids
        self.category_id_to_label: dict[int, int] = {cid: label for label, cid in enumerate(category_ids)}
        self.class_names: list[str] = [self.coco.cats[cid]["name"] for cid in category_ids]
        self.num_classes = len(category_ids)

        self.stats = {"degenerate_boxes_dropped": 0, "unusable_masks_ignored": 0,
                      "unusable_polygons_dropped": unusable_polygons,
                      "crowd_ignored": 0, "empty_images_skipped": 0, "small_images_skipped": 0}
        self.image_ids: list[int] = []
        self._instance_ids: list[list[int]] = []
        self._ignored_ids: list[list[int]] = []
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
            annotations = self.coco.imgToAnns.get(image_id, [])
            instances, ignored = [], []
            for ann in annotations:
                if ann.get("ignore", False):
                    continue
                if _degenerate(ann, info["width"], info["height"]):
                    self.stats["degenerate_boxes_dropped"] += 1
                elif ann.get("iscrowd", 0):
                    ignored.append(ann["id"])
                    self.stats["crowd_ignored"] += 1
                elif not self._usable_mask(ann, image_id):
                    ignored.append(ann["id"])
                    self.stats["unusable_masks_ignored"] += 1
                else:
                    instances.append(ann["id"])
            if self.training:
                if not annotations:
                    self.stats["empty_images_skipped"] += 1
                    continue
                if min(info["width"], info["height"]) < MIN_TRAIN_IMAGE_SIDE:
                    self.stats["small_images_skipped"] += 1
                    continue
            self.image_ids.append(image_id)
            self._instance_ids.append(instances)
            self._ignored_ids.append(ignored)

    def _usable_mask(self, ann: dict[str, Any], image_id: int) -> bool:
        try:
            return _usable_mask(ann.get("segmentation"))
        except (TypeError, ValueError) as exc:
            raise DatasetError(f"{self.ann_file}: annotation id {ann['id']} (image id {image_id}): field "
                               f"'segmentation' holds a polygon coordinate that is not a number ({exc}); fix "
                               "the polygon") from exc

    def _check_image_files(self) -> None:
        if not self.image_dir.is_dir():
            kind = path_kind(self.image_dir)
            raise DatasetError(f"{self.image_dir}: image folder {'not found' if kind == 'nothing' else 'is ' + kind} "
                               f"(needed by {self.ann_file}); "
                               f"put the {self.split}2017 images there")
        names = [self.coco.imgs[i]["file_name"] for i in self.image_ids]
        missing = _missing_files(self.image_dir, names)
        if missing:
            raise DatasetError(
                f"{self.image_dir}: {len(missing)} image file(s) named in {self.ann_file} field "
                f"'images[].file_name' are missing, e.g. {', '.join(map(printable, missing[:5]))}; add the images or "
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
                                   f"are missing, e.g. {', '.join(map(printable, missing[:5]))}; add them or remove the folder "
                                   "to derive semantic targets from the instance masks")
        return mode

    def _report_drops(self) -> None:
        if self.stats["degenerate_boxes_dropped"]:
            logger.warning("%s: dropped %d annotation(s) whose box has width or height < 1, area <= 0, or lies "
                           "outside the image (not trained on; COCO evaluation still counts them)", self.ann_file,
                           self.stats["degenerate_boxes_dropped"])
        if self.stats["unusable_masks_ignored"]:
            logger.warning("%s: %d annotation(s) have no usable mask (no polygon of >= 3 points); they are "
                           "ignored regions, not instances", self.ann_file, self.stats["unusable_masks_ignored"])
        if self.stats["unusable_polygons_dropped"]:
            logger.warning("%s: %d annotation(s) without a polygon of >= 3 points are left out of the evaluation "
                           "ground truth (pycocotools cannot rasterise them)", self.ann_file,
                           self.stats["unusable_polygons_dropped"])
        skipped = self.stats["empty_images_skipped"] + self.stats["small_images_skipped"]
        if skipped:
            logger.info("%s: skipped %d image(s) for training: %d without annotations, %d with a side under %d px",
                        self.ann_file, skipped, self.stats["empty_images_skipped"],
                        self.stats["small_images_skipped"], MIN_TRAIN_IMAGE_SIDE)

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

    def index_of(self, image_id: int) -> int:
        """The sample index of COCO image id `image_id` (DatasetError when this split does not use it)."""
        if not hasattr(self, "_index_by_id"):
            self._index_by_id = {image_id: index for index, image_id in enumerate(self.image_ids)}
        if image_id not in self._index_by_id:
            reason = ("not in the JSON" if image_id not in self.coco.imgs else
                      "skipped for training (no annotations, or a side under "
                      f"{MIN_TRAIN_IMAGE_SIDE} px)")
            raise DatasetError(f"{self.ann_file}: image id {image_id} is {reason}; give another image id")
        return self._index_by_id[image_id]

    def aspect_groups(self) -> list[int]:
        """Per sample, MMDetection's aspect-ratio bucket from the JSON size: 0 if width < height, else 1."""
        return [0 if self.coco.imgs[i]["width"] < self.coco.imgs[i]["height"] else 1 for i in self.image_ids]

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Tensor], dict[str, Any]]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        info = self.image_info(index)
        height, width = info["height"], info["width"]
        image = self._load_image(info)
        annotations = [self.coco.anns[i] for i in self._instance_ids[index]]
        ignored = [self.coco.anns[i] for i in self._ignored_ids[index]]
        masks = self._decode_masks(annotations, info)
        target: dict[str, np.ndarray] = {
            "boxes": _boxes_xyxy(annotations),
            "labels": self._labels(annotations),
            "masks": masks,
            "ignored_boxes": _boxes_xyxy(ignored),
            "ignored_labels": self._labels(ignored),
        }
        if self.semantic_source is not None:
            target["semantic_seg"] = self._semantic_map(index, info, annotations, masks)
        meta: dict[str, Any] = {"image_id": info["id"], "file_name": info["file_name"],
                                "ori_shape": (height, width), "img_shape": (height, width),
                                "scale_factor": (1.0, 1.0), "flip": False}
        if self.transforms is not None:
            generator = sample_generator(self.seed, self.epoch, index)
            image, target, meta = self.transforms(image, target, meta, generator)
        return pack(image, target, meta)

    # ------------------------------------------------------------------ loading
    def _labels(self, annotations: list[dict[str, Any]]) -> np.ndarray:
        return np.array([self.category_id_to_label[a["category_id"]] for a in annotations], dtype=np.int64)

    def _load_image(self, info: dict[str, Any]) -> np.ndarray:
        path = self.image_dir / info["file_name"]
        try:
            pixels = read_bgr(path)
        except ImageError as exc:
            raise DatasetError(f"{exc} (image id {info['id']} of {self.ann_file}; replace the file or remove "
                               "the image from the JSON)") from exc
        if pixels.shape[:2] != (info["height"], info["width"]):
            raise DatasetError(f"{path}: image decodes (EXIF orientation applied, as MMDetection reads it) to "
                               f"{pixels.shape[1]}x{pixels.shape[0]} but {self.ann_file} says "
                               f"'width'={info['width']}, 'height'={info['height']} for image id {info['id']}; "
                               "fix the JSON or the image")
        return pixels

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
        """`[H, W]` at the original size: uint8 (as MMDetection reads stuff maps), uint16 only for
        derived maps of more than 254 classes."""
        if self.semantic_source == "stuff":
            path = sem.stuff_map_path(self.root, self.split, info["file_name"])
            assert self.num_semantic_classes is not None
            values = sem.load_stuff_map(path, info["height"], info["width"], self.num_semantic_classes)
        else:
            crowd = [self._decode(self.coco.anns[i], info) for i in self._ignored_ids[index]
                     if self.coco.anns[i].get("iscrowd", 0) and _usable_mask(self.coco.anns[i]["segmentation"])]
            labels = [self.category_id_to_label[a["category_id"]] for a in annotations]
            values = sem.derive_semantic_map(info["height"], info["width"], zip(masks, labels), crowd)
        return values.astype(np.uint8 if int(values.max(initial=0)) <= 255 else np.uint16)


def load_sample(root: str | os.PathLike[str], split: str, image_id: int, *, flip: bool,
                scale: tuple[int, int] | None = DEFAULT_SCALE, semantic: str | None = "auto",
                training: bool | None = None) -> tuple[Tensor, dict[str, Tensor], dict[str, Any]]:
    """One image of a split through the training pipeline with the flip forced on or off.

    For inspecting one training step (`scnet.train_step`): the same sample `CocoInstances` would
    give in training when its random flip comes out as `flip`.
    """
    transforms = build_transforms(train=True, scale=scale, flip_prob=1.0 if flip else 0.0)
    dataset = CocoInstances(root, split, transforms, training=training, semantic=semantic)
    image, target, meta = dataset[dataset.index_of(image_id)]
    return image, target, dict(meta, flip=bool(flip))


def _load_coco(path: Path, *, clean: bool) -> tuple[COCO, int]:
    """The checked annotation file as a pycocotools index, with polygons cleaned when `clean` (see
    `usable_ground_truth`), and how many annotations the cleaning removed."""
    if not path.is_file():
        kind = path_kind(path)
        raise DatasetError(f"{path}: annotation file {'not found' if kind == 'nothing' else 'is ' + kind}; "
                           "expected the layout "
                           "root/annotations/instances_<split>2017.json (make a synthetic one with "
                           "`python -m scnet.data.synthetic --out ROOT`)")
    try:
        with path.open("rb") as handle:
            data = json.load(handle)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise DatasetError(f"{path}: cannot read it as JSON ({exc}); is it a COCO instances file?") from exc
    check_coco_instances(data, path)
    removed = 0
    if clean:
        data["annotations"], removed = usable_ground_truth(data["annotations"])
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress lines
        coco.createIndex()
    return coco, removed


def _degenerate(ann: dict[str, Any], width: int, height: int) -> bool:
    """MMDetection's drop rule: no overlap with the image, area <= 0, or width or height < 1."""
    x, y, w, h = ann["bbox"]
    overlap_w = max(0.0, min(x + w, width) - max(x, 0.0))
    overlap_h = max(0.0, min(y + h, height) - max(y, 0.0))
    return overlap_w * overlap_h == 0 or ann["area"] <= 0 or w < 1 or h < 1


def _usable_mask(segmentation: Any) -> bool:
    """MMDetection's `LoadAnnotations._process_masks`: otherwise the instance becomes an ignored region."""
    if isinstance(segmentation, list):
        return bool(usable_polygons(segmentation))
    return (isinstance(segmentation, dict) and segmentation.get("size") is not None
            and isinstance(segmentation.get("counts"), (list, str)))


def _boxes_xyxy(annotations: list[dict[str, Any]]) -> np.ndarray:
    """`[x, y, x + w, y + h]` as float32, unclipped (the resize step clips, as MMDetection's does)."""
    boxes = np.array([a["bbox"] for a in annotations], dtype=np.float64).reshape(-1, 4)
    boxes[:, 2:] += boxes[:, :2]
    return boxes.astype(np.float32)


def _missing_files(folder: Path, names: list[str]) -> list[str]:
    """Names absent from `folder`, with one directory listing instead of a stat per file."""
    present = set(os.listdir(folder))
    return [n for n in names if n not in present and not ("/" in n and _is_file(folder / n))]


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except (OSError, ValueError):  # a name too long for the filesystem, a NUL byte: not there
        return False
