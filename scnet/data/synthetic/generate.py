"""Write a synthetic dataset in the COCO layout, deterministically and atomically.

The whole dataset is built in a hidden temporary folder next to the destination and renamed into
place at the end, so a reader never sees half a dataset and two concurrent writers cannot mix their
files: the second rename fails, and the second writer then finds the first one's identical dataset.
`root/dataset_info.json` records the parameters (the dataset's identity) and tells `CocoInstances`
how many semantic classes the stuffthingmaps use (0 = background, k + 1 = class k).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from scnet.data.errors import DatasetError
from scnet.data.masks import encode_mask, mask_box_xywh
from scnet.data.semantic import DATASET_INFO_FILE, read_dataset_info
from scnet.data.synthetic.render import RenderedImage, RenderSettings, render_image
from scnet.data.synthetic.shapes import CLASSES

logger = logging.getLogger(__name__)

GENERATOR_NAME = "scnet.data.synthetic"
# Bump when the generator's output changes for the same parameters, so stale caches are noticed.
FORMAT_VERSION = 1
_SPLIT_CODES = {"train": 0, "val": 1}
_FIRST_IMAGE_ID = {"train": 1, "val": 1_000_001}  # unique across splits, like COCO's


# Bounds that keep a typo (--size 25600 19200, --train 3000000) from filling the disk or the memory:
# each image is rendered whole in memory, and the defaults are 256x192 and 300 + 50 images.
MIN_EDGE, MAX_EDGE = 32, 4096
MAX_IMAGES = 200_000
MAX_OBJECTS = 100


@dataclass(frozen=True)
class SyntheticParams:
    """Everything that determines the generated files; equal params give byte-identical datasets."""

    seed: int = 0
    train: int = 300
    val: int = 50
    width: int = 256
    height: int = 192
    min_objects: int = 3
    max_objects: int = 8

    def __post_init__(self) -> None:
        wrong_type = [f"{name}={value!r}" for name, value in asdict(self).items()
                      if isinstance(value, bool) or not isinstance(value, int)]
        if wrong_type:
            raise ValueError(f"synthetic dataset parameters: {', '.join(wrong_type)} must be integers")
        problems = []
        if not 0 <= self.seed < 2**63:
            problems.append(f"seed={self.seed} must be in 0..2**63-1")
        if not (1 <= self.train <= MAX_IMAGES and 1 <= self.val <= MAX_IMAGES):
            problems.append(f"train={self.train} and val={self.val} must both be in 1..{MAX_IMAGES}")
        if not (MIN_EDGE <= self.width <= MAX_EDGE and MIN_EDGE <= self.height <= MAX_EDGE):
            problems.append(f"size {self.width}x{self.height} must be between {MIN_EDGE}x{MIN_EDGE} and "
                            f"{MAX_EDGE}x{MAX_EDGE} (--size W H)")
        if not 1 <= self.min_objects <= self.max_objects <= MAX_OBJECTS:
            problems.append(f"objects per image {self.min_objects}..{self.max_objects} must satisfy "
                            f"1 <= min_objects <= max_objects <= {MAX_OBJECTS}")
        if problems:
            raise ValueError("synthetic dataset parameters: " + "; ".join(problems))

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def dataset_info(params: SyntheticParams, counts: dict[str, dict[str, int]]) -> dict[str, Any]:
    return {
        "generator": GENERATOR_NAME,
        "format_version": FORMAT_VERSION,
        "params": params.to_dict(),
        "num_classes": len(CLASSES),
        "num_semantic_classes": len(CLASSES) + 1,
        "semantic_values": "stuffthingmaps PNGs: 0 = background, k + 1 = class label k "
                           "(k = index in sorted category ids), 255 = ignore (unused here)",
        "categories": [{"id": c.category_id, "name": c.name, "rgb": list(c.rgb)} for c in CLASSES],
        "splits": counts,
    }


def _image_record(image_id: int, params: SyntheticParams) -> dict[str, Any]:
    return {"id": image_id, "file_name": f"{image_id:012d}.jpg", "width": params.width, "height": params.height}


def _annotations(rendered: RenderedImage, image_id: int, first_id: int) -> list[dict[str, Any]]:
    """Fully visible polygonal objects keep their polygon; anything occluded or holed becomes RLE."""
    records = []
    for offset, obj in enumerate(rendered.objects):
        if rendered.fully_visible(obj) and not obj.outline.holes:
            segmentation: Any = obj.outline.coco_polygons()
        else:
            segmentation = encode_mask(obj.visible)
        records.append({
            "id": first_id + offset, "image_id": image_id, "category_id": CLASSES[obj.label].category_id,
            "bbox": mask_box_xywh(obj.visible), "area": int(obj.visible.sum()), "iscrowd": 0,
            "segmentation": segmentation,
        })
    return records


def _write_split(tmp_root: Path, split: str, count: int, params: SyntheticParams, progress: bool) -> dict[str, int]:
    settings = RenderSettings(params.width, params.height, params.min_objects, params.max_objects)
    image_folder = tmp_root / f"{split}2017"
    map_folder = tmp_root / "stuffthingmaps" / f"{split}2017"
    image_folder.mkdir(parents=True)
    map_folder.mkdir(parents=True)
    images, annotations = [], []
    for index in tqdm(range(count), desc=f"synthetic {split}", unit="img", disable=not progress):
        rng = np.random.default_rng(np.random.SeedSequence([params.seed, _SPLIT_CODES[split], index]))
        rendered = render_image(rng, settings)
        record = _image_record(_FIRST_IMAGE_ID[split] + index, params)
        Image.fromarray(rendered.pixels).save(image_folder / record["file_name"], format="JPEG", quality=95,
                                              subsampling=0)
        Image.fromarray(rendered.semantic).save(map_folder / Path(record["file_name"]).with_suffix(".png"))
        images.append(record)
        annotations.extend(_annotations(rendered, record["id"], len(annotations) + 1))
    coco = {
        "info": {"description": "SCNet harness synthetic shapes", "version": str(FORMAT_VERSION),
                 "params": params.to_dict()},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [{"id": c.category_id, "name": c.name, "supercategory": "shape"} for c in CLASSES],
    }
    (tmp_root / "annotations").mkdir(exist_ok=True)
    (tmp_root / "annotations" / f"instances_{split}2017.json").write_text(json.dumps(coco, separators=(",", ":")))
    return {"images": len(images), "annotations": len(annotations)}


def existing_dataset_problem(root: Path, params: SyntheticParams) -> str | None:
    """None when `root` holds the complete dataset `params` describes, else why it does not."""
    info_path = root / DATASET_INFO_FILE
    if not info_path.is_file():
        return f"it has no {DATASET_INFO_FILE}, so it is not a synthetic dataset made by {GENERATOR_NAME}"
    try:
        info = read_dataset_info(root)
    except DatasetError as exc:
        return str(exc)
    if info.get("generator") != GENERATOR_NAME or info.get("format_version") != FORMAT_VERSION:
        return (f"it was made by generator {info.get('generator')!r} format {info.get('format_version')!r}, "
                f"not {GENERATOR_NAME!r} format {FORMAT_VERSION}")
    if info.get("params") != params.to_dict():
        return f"it was generated with {info.get('params')}, not {params.to_dict()}"
    for split, count in (("train", params.train), ("val", params.val)):
        folder = root / f"{split}2017"
        found = len(os.listdir(folder)) if folder.is_dir() else 0
        if found != count or not (root / "annotations" / f"instances_{split}2017.json").is_file():
            return f"it is incomplete: {folder} holds {found} of {count} images or its JSON is missing"
    return None


def generate_synthetic(out: str | os.PathLike[str], *, seed: int = 0, train: int = 300, val: int = 50,
                       size: tuple[int, int] = (256, 192), min_objects: int = 3, max_objects: int = 8,
                       progress: bool = True) -> Path:
    """Write the synthetic dataset to `out` (COCO layout, `size` = (width, height)) and return its path.

    If `out` already holds the identical dataset nothing is written; if it holds anything else
    (another dataset, other files) a `DatasetError` says so and nothing is touched.
    """
    params = SyntheticParams(seed=seed, train=train, val=val, width=size[0], height=size[1],
                             min_objects=min_objects, max_objects=max_objects)
    out = Path(out)
    if _reusable(out, params):
        logger.info("%s already holds the synthetic dataset %s; nothing to do", out, params.to_dict())
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_root = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        counts = {split: _write_split(tmp_root, split, count, params, progress)
                  for split, count in (("train", params.train), ("val", params.val))}
        (tmp_root / DATASET_INFO_FILE).write_text(json.dumps(dataset_info(params, counts), indent=2) + "\n")
        os.chmod(tmp_root, 0o755)  # mkdtemp makes it private; the dataset should read like any folder
        try:
            os.rename(tmp_root, out)  # atomic; replaces only a missing or empty `out`
        except OSError:
            if _reusable(out, params):  # a concurrent writer finished first with the same dataset
                return out
            raise
    finally:
        if tmp_root.exists():
            shutil.rmtree(tmp_root, ignore_errors=True)
    return out


def _reusable(out: Path, params: SyntheticParams) -> bool:
    """True if `out` holds this dataset; False if it is absent or an empty folder; raise otherwise."""
    if not out.exists():
        return False
    if not out.is_dir():
        raise DatasetError(f"{out}: exists and is not a folder; choose another --out")
    if not any(out.iterdir()):
        return False
    problem = existing_dataset_problem(out, params)
    if problem is None:
        return True
    raise DatasetError(f"{out}: refusing to overwrite an existing folder: {problem}. Delete it or choose "
                       "another output folder")


def ensure_synthetic(root: str | os.PathLike[str], seed: int = 0, **kwargs: Any) -> Path:
    """The synthetic dataset at `root`, generated on first use and reused afterwards.

    Keyword arguments are those of `generate_synthetic` (train, val, size, min_objects, max_objects,
    progress). Safe for concurrent callers: each builds in its own temporary folder and only an
    atomic rename publishes a dataset. A cached dataset made with other parameters is an error, not
    silently reused.
    """
    kwargs.setdefault("progress", False)
    return generate_synthetic(root, seed=seed, **kwargs)
