"""A training split's annotation index in a few numpy arrays instead of pycocotools' Python dicts.

pycocotools keeps every image and annotation of train2017 as Python dicts, lists and floats:
about a million objects per process, several GB per training rank, and every DataLoader worker
(forked from its rank) slowly copies the pages it touches, because reading a Python object writes
its reference count. `compact_dataset` replaces the index of a built `CocoInstances` with flat
arrays (ids, sizes, boxes, categories; file names and segmentations as byte blobs with offsets),
which workers read without writing. The dataset's samples are unchanged: `coco.imgs[id]` and
`coco.anns[id]` still give dicts, built on access with the same values (segmentations round-trip
exactly through JSON). Evaluation keeps the full COCO object, which COCOeval needs.

The measurement behind it is in benchmarks/README.md (`benchmarks/index_memory.py`).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import gc
import json
import sys
from collections.abc import Iterable, Mapping
from typing import Any, Iterator

import numpy as np


class _Blob:
    """Byte strings packed into one uint8 array with offsets."""

    def __init__(self, items: Iterable[bytes]) -> None:
        parts = list(items)
        lengths = np.fromiter((len(p) for p in parts), dtype=np.int64, count=len(parts))
        self.offsets = np.zeros(len(parts) + 1, dtype=np.int64)
        np.cumsum(lengths, out=self.offsets[1:])
        self.data = np.frombuffer(b"".join(parts), dtype=np.uint8) if parts else np.zeros(0, np.uint8)

    def __getitem__(self, position: int) -> bytes:
        return self.data[self.offsets[position]:self.offsets[position + 1]].tobytes()

    @property
    def nbytes(self) -> int:
        return self.data.nbytes + self.offsets.nbytes


class Ragged:
    """A list of int lists as values + offsets: `ragged[i]` is the i-th list (an int64 array)."""

    def __init__(self, lists: Iterable[Iterable[int]]) -> None:
        lists = [np.asarray(list(items), dtype=np.int64) for items in lists]
        self.offsets = np.zeros(len(lists) + 1, dtype=np.int64)
        np.cumsum([len(items) for items in lists], out=self.offsets[1:])
        self.values = np.concatenate(lists) if lists else np.zeros(0, np.int64)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, index: int) -> list[int]:
        if not -len(self) <= index < len(self):
            raise IndexError(index)
        index %= len(self)
        return self.values[self.offsets[index]:self.offsets[index + 1]].tolist()

    @property
    def nbytes(self) -> int:
        return self.values.nbytes + self.offsets.nbytes


class _Table(Mapping):
    """Rows keyed by a sorted int64 id column (binary search, no dict)."""

    def __init__(self, ids: np.ndarray) -> None:
        self._order = np.argsort(ids, kind="stable")
        self._sorted = ids[self._order]

    def _position(self, key: Any) -> int:
        try:
            key = int(key)
        except (TypeError, ValueError):
            raise KeyError(key) from None
        at = int(np.searchsorted(self._sorted, key))
        if at >= len(self._sorted) or self._sorted[at] != key:
            raise KeyError(key)
        return int(self._order[at])

    def __len__(self) -> int:
        return len(self._sorted)

    def __iter__(self) -> Iterator[int]:
        return iter(self._sorted.tolist())


class ImageTable(_Table):
    """`imgs[image_id]` -> {"id", "file_name", "width", "height"} (the fields the dataset reads)."""

    def __init__(self, infos: list[dict[str, Any]]) -> None:
        self.ids = np.array([info["id"] for info in infos], dtype=np.int64)
        self.widths = np.array([info["width"] for info in infos], dtype=np.int32)
        self.heights = np.array([info["height"] for info in infos], dtype=np.int32)
        self.file_names = _Blob(info["file_name"].encode("utf-8") for info in infos)
        super().__init__(self.ids)

    def __getitem__(self, image_id: Any) -> dict[str, Any]:
        at = self._position(image_id)
        return {"id": int(self.ids[at]), "file_name": self.file_names[at].decode("utf-8"),
                "width": int(self.widths[at]), "height": int(self.heights[at])}

    @property
    def nbytes(self) -> int:
        return self.ids.nbytes + self.widths.nbytes + self.heights.nbytes + self.file_names.nbytes


class AnnotationTable(_Table):
    """`anns[ann_id]` -> {"id", "image_id", "category_id", "bbox", "iscrowd", "area", "segmentation"}."""

    def __init__(self, anns: list[dict[str, Any]]) -> None:
        self.ids = np.array([a["id"] for a in anns], dtype=np.int64)
        self.image_ids = np.array([a["image_id"] for a in anns], dtype=np.int64)
        self.category_ids = np.array([a["category_id"] for a in anns], dtype=np.int64)
        self.boxes = np.array([a["bbox"] for a in anns], dtype=np.float64).reshape(-1, 4)
        self.areas = np.array([a.get("area", 0.0) for a in anns], dtype=np.float64)
        self.crowd = np.array([a.get("iscrowd", 0) for a in anns], dtype=np.int8)
        # repr-exact floats: json.loads gives back the very values json.load read.
        self.segmentations = _Blob(json.dumps(a["segmentation"], separators=(",", ":")).encode("utf-8")
                                   for a in anns)
        super().__init__(self.ids)

    def __getitem__(self, ann_id: Any) -> dict[str, Any]:
        at = self._position(ann_id)
        return {"id": int(self.ids[at]), "image_id": int(self.image_ids[at]),
                "category_id": int(self.category_ids[at]), "bbox": self.boxes[at].tolist(),
                "area": float(self.areas[at]), "iscrowd": int(self.crowd[at]),
                "segmentation": json.loads(self.segmentations[at])}

    @property
    def nbytes(self) -> int:
        return (self.ids.nbytes + self.image_ids.nbytes + self.category_ids.nbytes + self.boxes.nbytes
                + self.areas.nbytes + self.crowd.nbytes + self.segmentations.nbytes)


class CompactCOCO:
    """The part of pycocotools' COCO a training `CocoInstances` reads: imgs, anns, cats."""

    def __init__(self, imgs: ImageTable, anns: AnnotationTable, cats: dict[int, dict[str, Any]]) -> None:
        self.imgs, self.anns, self.cats = imgs, anns, cats

    @property
    def nbytes(self) -> int:
        return self.imgs.nbytes + self.anns.nbytes

    def __getattr__(self, name: str) -> Any:
        raise AttributeError(f"CompactCOCO has no {name!r}: a compacted (training) dataset keeps only imgs, anns "
                             "and cats; evaluate with a dataset built without compact_dataset")


def compact_dataset(dataset: Any) -> Any:
    """Swap `dataset.coco` (a pycocotools COCO) and its per-image id lists for the compact index,
    keeping only the images and annotations the dataset uses; returns the dataset."""
    coco = dataset.coco
    image_ids = list(dataset.image_ids)
    instance_ids, ignored_ids = dataset._instance_ids, dataset._ignored_ids
    used = sorted({int(i) for ids in (*instance_ids, *ignored_ids) for i in ids})
    compact = CompactCOCO(ImageTable([coco.imgs[i] for i in image_ids]),
                          AnnotationTable([coco.anns[i] for i in used]),
                          {int(k): dict(v) for k, v in coco.cats.items()})
    dataset._instance_ids = Ragged(instance_ids)
    dataset._ignored_ids = Ragged(ignored_ids)
    dataset.coco = compact
    del coco, instance_ids, ignored_ids
    gc.collect()
    release_freed_memory()
    return dataset


def release_freed_memory() -> bool:
    """Hand memory freed by the dropped dicts back to the system (glibc's malloc_trim), so the
    rank's resident size falls to what it holds; False where libc is not glibc."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.malloc_trim(0))
    except (OSError, AttributeError):
        return False
