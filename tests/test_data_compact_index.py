"""The compact training index gives the same samples as pycocotools' dicts (issue 11, item 9)."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from scnet.data import CocoInstances, build_transforms, ensure_synthetic
from scnet.data.compact_index import AnnotationTable, CompactCOCO, Ragged, compact_dataset


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return ensure_synthetic(tmp_path_factory.mktemp("data") / "shapes", seed=3, train=12, val=2, size=(96, 64))


def _same(a, b) -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            _same(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _same(x, y)
    else:
        assert a == b and type(a) is type(b)


def test_compacted_training_dataset_yields_identical_samples(shapes):
    transforms = build_transforms(train=True, scale=(96, 64))
    full = CocoInstances(shapes, split="train", transforms=transforms, seed=4)
    compact = compact_dataset(CocoInstances(shapes, split="train", transforms=transforms, seed=4))
    assert isinstance(compact.coco, CompactCOCO) and isinstance(compact._instance_ids, Ragged)
    assert len(compact) == len(full) and compact.image_ids == full.image_ids
    for epoch in (0, 1):
        full.set_epoch(epoch)
        compact.set_epoch(epoch)
        for index in range(len(full)):
            assert compact.image_info(index) == {k: full.image_info(index)[k]
                                                 for k in ("id", "file_name", "width", "height")}
            _same(full[index], compact[index])
    with pytest.raises(AttributeError, match="keeps only imgs, anns and cats"):
        compact.coco.getAnnIds


def test_annotation_table_round_trips_polygons_rles_and_crowds():
    anns = [{"id": 7, "image_id": 1, "category_id": 3, "bbox": [0.1, 2.25, 10.0, 3.3333333333333335],
             "area": 12.5, "iscrowd": 0, "segmentation": [[0.1, 2.25, 10.1, 2.25, 5.0, 5.583333333333333]]},
            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [1, 1, 2, 2], "area": 4, "iscrowd": 1,
             "segmentation": {"size": [4, 4], "counts": [5, 2, 2, 2, 5]}},
            {"id": 9, "image_id": 2, "category_id": 1, "bbox": [0, 0, 1, 1], "iscrowd": 0,
             "segmentation": {"size": [3, 3], "counts": "1;1"}}]
    table = AnnotationTable(copy.deepcopy(anns))
    assert sorted(table) == [2, 7, 9] and len(table) == 3
    for ann in anns:
        got = table[ann["id"]]
        assert got["segmentation"] == ann["segmentation"]
        assert json.dumps(got["segmentation"]) == json.dumps(ann["segmentation"])  # same types, same digits
        assert got["bbox"] == [float(v) for v in ann["bbox"]] and got["iscrowd"] == ann["iscrowd"]
        assert table[np.int64(ann["id"])] == got
    with pytest.raises(KeyError):
        table[8]
    ragged = Ragged([[3, 1], [], [2]])
    assert [ragged[i] for i in range(len(ragged))] == [[3, 1], [], [2]] and ragged[-1] == [2]
