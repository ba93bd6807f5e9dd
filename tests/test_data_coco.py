"""CocoInstances on tiny hand-built COCO datasets: the edge cases COCO has and MMDetection handles."""
from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from scnet.data import CocoInstances, DatasetError, collate
from scnet.data.masks import encode_mask

W, H = 40, 32  # MMDetection's training filter skips images with a side under 32 px
CATEGORIES = [{"id": 10, "name": "ten"}, {"id": 3, "name": "three"}, {"id": 7, "name": "seven"}]


def box_mask(x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    """Binary [H, W] mask of pixel columns x0..x1-1 and rows y0..y1-1."""
    mask = np.zeros((H, W), dtype=np.uint8)
    mask[y0:y1, x0:x1] = 1
    return mask


def uncompressed_rle(mask: np.ndarray) -> dict[str, Any]:
    """COCO's uncompressed RLE: run lengths over the column-major pixels, starting with a zero run."""
    flat = mask.flatten(order="F")
    counts, value, run = [], 0, 0
    for pixel in flat:
        if pixel == value:
            run += 1
        else:
            counts.append(run)
            value, run = pixel, 1
    counts.append(run)
    return {"size": [H, W], "counts": [int(c) for c in counts]}


def xywh(mask: np.ndarray) -> list[float]:
    return [float(v) for v in mask_utils.toBbox(mask_utils.encode(np.asfortranarray(mask)))]


def annotation(ann_id: int, image_id: int, category_id: int, mask: np.ndarray, segmentation: Any,
               iscrowd: int = 0, bbox: list[float] | None = None) -> dict[str, Any]:
    return {"id": ann_id, "image_id": image_id, "category_id": category_id, "iscrowd": iscrowd,
            "bbox": bbox if bbox is not None else xywh(mask), "area": float(mask.sum()),
            "segmentation": segmentation}


POLY_MASK = box_mask(5, 5, 15, 15)  # pycocotools rasterises this polygon to exactly these pixels
RLE_MASK = box_mask(20, 18, 30, 25)
RAW_RLE_MASK = box_mask(2, 20, 8, 28)
CROWD_MASK = box_mask(28, 0, 40, 12)
OVERLAP_IN_CROWD = box_mask(30, 2, 34, 6)


def coco_json() -> dict[str, Any]:
    poly = [5.0, 5.0, 15.0, 5.0, 15.0, 15.0, 5.0, 15.0]
    annotations = [
        annotation(1, 1, 10, POLY_MASK, [poly]),
        annotation(2, 1, 3, RLE_MASK, encode_mask(RLE_MASK)),
        annotation(3, 1, 7, RAW_RLE_MASK, uncompressed_rle(RAW_RLE_MASK)),
        annotation(4, 1, 3, CROWD_MASK, uncompressed_rle(CROWD_MASK), iscrowd=1),
        annotation(5, 1, 7, OVERLAP_IN_CROWD, encode_mask(OVERLAP_IN_CROWD)),
        # degenerate: 0.5 px wide
        annotation(6, 1, 10, box_mask(1, 1, 2, 2), encode_mask(box_mask(1, 1, 2, 2)), bbox=[1.0, 1.0, 0.5, 4.0]),
        # image 2 has only a crowd region; image 3 has nothing
        annotation(7, 2, 3, CROWD_MASK, uncompressed_rle(CROWD_MASK), iscrowd=1),
    ]
    images = [{"id": i, "file_name": f"img{i}.png", "width": W, "height": H} for i in (1, 2, 3)]
    return {"images": images, "annotations": annotations, "categories": CATEGORIES}


def write_dataset(root: Path, data: Any, split: str = "train", images: bool = True) -> Path:
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / "annotations" / f"instances_{split}2017.json").write_text(json.dumps(data))
    folder = root / f"{split}2017"
    folder.mkdir(exist_ok=True)
    if images:
        rng = np.random.default_rng(0)
        for info in data["images"]:
            pixels = rng.integers(0, 256, size=(info["height"], info["width"], 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / info["file_name"])
    return root


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return write_dataset(tmp_path / "coco", coco_json())


def test_labels_are_indices_of_sorted_category_ids(root: Path) -> None:
    ds = CocoInstances(root, "train", semantic=None)
    assert ds.label_to_category_id == [3, 7, 10]
    assert ds.class_names == ["three", "seven", "ten"]
    _, target, meta = ds[0]
    assert meta["image_id"] == 1
    # annotations 1 (cat 10), 2 (cat 3), 3 (cat 7), 5 (cat 7); crowd 4 and degenerate 6 are gone
    assert target["labels"].tolist() == [2, 0, 1, 1]


def test_polygon_compressed_and_uncompressed_rle_decode_to_their_pixels(root: Path) -> None:
    _, target, _ = CocoInstances(root, "train", semantic=None)[0]
    expected = np.stack([POLY_MASK, RLE_MASK, RAW_RLE_MASK, OVERLAP_IN_CROWD])
    assert target["masks"].dtype == torch.uint8
    np.testing.assert_array_equal(target["masks"].numpy(), expected)
    assert target["boxes"].tolist() == [[5, 5, 15, 15], [20, 18, 30, 25], [2, 20, 8, 28], [30, 2, 34, 6]]


def test_image_is_uint8_rgb_of_the_file(root: Path) -> None:
    image, _, meta = CocoInstances(root, "train", semantic=None)[0]
    pixels = np.asarray(Image.open(root / "train2017" / "img1.png"))
    assert image.dtype == torch.uint8 and image.shape == (3, H, W)
    np.testing.assert_array_equal(image.permute(1, 2, 0).numpy(), pixels)
    assert meta["ori_shape"] == meta["img_shape"] == (H, W)
    assert meta["scale_factor"] == (1.0, 1.0) and meta["flip"] is False


def test_crowd_is_not_a_target_and_is_ignore_in_derived_semantic_map(root: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = CocoInstances(root, "train", semantic="derived")
    assert ds.stats["crowd_ignored"] == 2
    assert ds[0][1]["ignored_boxes"].tolist() == [[28, 0, 40, 12]]
    assert ds[0][1]["ignored_labels"].tolist() == [0]
    assert ds.num_semantic_classes == ds.num_classes + 1 == 4
    _, target, _ = ds[0]
    semantic = target["semantic_seg"].numpy()
    assert semantic.dtype == np.uint8
    crowd_only = CROWD_MASK.astype(bool) & ~OVERLAP_IN_CROWD.astype(bool)
    assert (semantic[crowd_only] == 255).all()
    assert (semantic[OVERLAP_IN_CROWD.astype(bool)] == 1 + 1).all()  # category 7 -> label 1 -> value 2
    assert (semantic[POLY_MASK.astype(bool)] == 2 + 1).all()
    assert (semantic[RLE_MASK.astype(bool)] == 0 + 1).all()
    covered = CROWD_MASK | POLY_MASK | RLE_MASK | RAW_RLE_MASK
    assert (semantic[~covered.astype(bool)] == 0).all()


def test_degenerate_boxes_are_dropped_with_a_count(root: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="scnet.data.coco"):
        ds = CocoInstances(root, "train", semantic=None)
    assert ds.stats["degenerate_boxes_dropped"] == 1
    assert "dropped 1 annotation" in caplog.text


def test_training_skips_images_without_annotations_evaluation_keeps_them(root: Path) -> None:
    """MMDetection's filter_empty_gt looks at the JSON's annotations: image 2 (a crowd region only) is
    kept for training, with no instances and one ignored region; image 3 (nothing) is skipped."""
    train = CocoInstances(root, "train", semantic=None)
    assert train.image_ids == [1, 2]
    assert train.stats["empty_images_skipped"] == 1
    _, crowd_only, _ = train[1]
    assert crowd_only["boxes"].shape == (0, 4) and crowd_only["ignored_boxes"].shape == (1, 4)
    evaluation = CocoInstances(root, "train", training=False, semantic=None)
    assert evaluation.image_ids == [1, 2, 3]
    _, target, meta = evaluation[2]
    assert meta["image_id"] == 3
    assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)
    assert target["masks"].shape == (0, H, W)


def test_val_split_defaults_to_evaluation_rules(tmp_path: Path) -> None:
    root = write_dataset(tmp_path / "coco", coco_json(), split="val")
    ds = CocoInstances(root, "val", semantic=None)
    assert not ds.training and len(ds) == 3
    assert sorted(ds.coco.getImgIds()) == [1, 2, 3]


def test_missing_image_is_reported_up_front(tmp_path: Path) -> None:
    root = write_dataset(tmp_path / "coco", coco_json())
    (root / "train2017" / "img1.png").unlink()
    with pytest.raises(DatasetError, match=r"img1\.png") as info:
        CocoInstances(root, "train")
    assert "file_name" in str(info.value)


def test_missing_annotation_file_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"instances_train2017\.json"):
        CocoInstances(tmp_path, "train")


@pytest.mark.parametrize("content, field", [
    ("[1, 2, 3]", "images"),
    ('{"images": [], "annotations": []}', "categories"),
    ('{"images": {}, "annotations": [], "categories": []}', "images"),
    ("{not json", "JSON"),
])
def test_non_coco_json_is_rejected_naming_the_file(tmp_path: Path, content: str, field: str) -> None:
    root = write_dataset(tmp_path / "coco", coco_json())
    ann_file = root / "annotations" / "instances_train2017.json"
    ann_file.write_text(content)
    with pytest.raises(DatasetError) as info:
        CocoInstances(root, "train")
    assert str(ann_file) in str(info.value) and field in str(info.value)


def test_unknown_category_is_rejected_naming_the_annotation(tmp_path: Path) -> None:
    data = coco_json()
    data["annotations"][1]["category_id"] = 99
    root = write_dataset(tmp_path / "coco", data)
    with pytest.raises(DatasetError, match=r"annotations\[1\] \(id 2\).*'category_id' = 99"):
        CocoInstances(root, "train")


@pytest.mark.parametrize("field, value, message", [
    ("image_id", 42, "'image_id' = 42"),
    ("bbox", [1, 2, 3], "'bbox'"),
    ("segmentation", {"counts": [5, 7], "size": [H, W]}, "summing to height"),
    ("segmentation", {"counts": "abc", "size": [H + 1, W]}, "segmentation.size"),
])
def test_malformed_annotation_fields_are_named(tmp_path: Path, field: str, value: Any, message: str) -> None:
    data = coco_json()
    data["annotations"][0][field] = value
    root = write_dataset(tmp_path / "coco", data)
    with pytest.raises(DatasetError, match=r"annotations\[0\] \(id 1\)") as info:
        CocoInstances(root, "train")
    assert message in str(info.value)


def test_unreadable_image_is_reported_when_loaded(root: Path) -> None:
    (root / "train2017" / "img1.png").write_bytes(b"this is not a png")
    ds = CocoInstances(root, "train", semantic=None)  # existence is all the constructor checks
    with pytest.raises(DatasetError, match=r"img1\.png.*not a readable image"):
        ds[0]


def test_image_size_disagreeing_with_json_is_reported(root: Path) -> None:
    Image.new("RGB", (W + 1, H)).save(root / "train2017" / "img1.png")
    with pytest.raises(DatasetError, match=r"img1\.png.*'width'=40"):
        CocoInstances(root, "train", semantic=None)[0]


@pytest.mark.parametrize("segmentation", [
    [[5.0, 5.0, 15.0, 5.0]],            # two points: pycocotools would read a box
    [[5.0, 5.0, 15.0, 5.0, 15.0]],      # odd number of coordinates
    [],                                 # no polygon at all
])
def test_instance_without_usable_mask_becomes_an_ignored_region(tmp_path: Path, segmentation: Any) -> None:
    """MMDetection's LoadAnnotations sets ignore_flag on such an instance: its box is an ignored region."""
    data = coco_json()
    data["annotations"][0]["segmentation"] = segmentation
    ds = CocoInstances(write_dataset(tmp_path / "coco", data), "train", semantic=None)
    assert ds.stats["unusable_masks_ignored"] == 1
    _, target, _ = ds[0]
    assert target["labels"].tolist() == [0, 1, 1]
    assert target["ignored_boxes"].tolist() == [[5, 5, 15, 15], [28, 0, 40, 12]]
    assert target["ignored_labels"].tolist() == [2, 0]


def test_zero_area_and_ignore_flagged_annotations_are_dropped(tmp_path: Path) -> None:
    data = coco_json()
    data["annotations"][1]["area"] = 0.0
    data["annotations"][2]["ignore"] = True
    ds = CocoInstances(write_dataset(tmp_path / "coco", data), "train", semantic=None)
    assert ds[0][1]["labels"].tolist() == [2, 1]


def test_training_skips_images_with_a_side_under_32_pixels(tmp_path: Path) -> None:
    data = coco_json()
    data["images"][0]["height"] = 31
    for ann in data["annotations"]:
        ann["segmentation"] = [[1.0, 1.0, 5.0, 1.0, 5.0, 5.0]]
    root = write_dataset(tmp_path / "coco", data)
    train = CocoInstances(root, "train", semantic=None)
    assert train.image_ids == [2] and train.stats["small_images_skipped"] == 1
    assert CocoInstances(root, "train", training=False, semantic=None).image_ids == [1, 2, 3]


def test_derived_semantic_warns_once_per_dataset(root: Path) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        CocoInstances(root, "train")
        CocoInstances(root, "train", training=False)
    messages = [str(w.message) for w in caught if "derived from the instance masks" in str(w.message)]
    assert len(messages) == 1


def write_stuff_maps(root: Path, values: np.ndarray, split: str = "train") -> None:
    folder = root / "stuffthingmaps" / f"{split}2017"
    folder.mkdir(parents=True, exist_ok=True)
    for i in (1, 2, 3):
        Image.fromarray(values).save(folder / f"img{i}.png")


def test_stuff_maps_pass_through_with_183_classes(root: Path) -> None:
    values = np.full((H, W), 255, dtype=np.uint8)
    values[:, :10] = 0
    values[:, 10:20] = 181
    write_stuff_maps(root, values)
    ds = CocoInstances(root, "train")
    assert ds.semantic_source == "stuff" and ds.num_semantic_classes == 183
    assert ds[0][1]["semantic_seg"].dtype == torch.uint8
    np.testing.assert_array_equal(ds[0][1]["semantic_seg"].numpy(), values)


def test_dataset_info_declares_the_stuff_map_class_count(root: Path) -> None:
    values = np.zeros((H, W), dtype=np.uint8)
    values[0, 0] = 5
    write_stuff_maps(root, values)
    (root / "dataset_info.json").write_text(json.dumps({"num_semantic_classes": 4}))
    ds = CocoInstances(root, "train")
    assert ds.num_semantic_classes == 4
    with pytest.raises(DatasetError, match="value 5 is outside 0..3"):
        ds[0]


def test_missing_stuff_map_is_reported_up_front(root: Path) -> None:
    write_stuff_maps(root, np.zeros((H, W), dtype=np.uint8))
    (root / "stuffthingmaps" / "train2017" / "img1.png").unlink()
    with pytest.raises(DatasetError, match=r"semantic map.*img1\.png"):
        CocoInstances(root, "train")


def test_collate_batches_into_lists_through_a_dataloader(root: Path) -> None:
    ds = CocoInstances(root, "train", training=False, semantic=None)
    loader = torch.utils.data.DataLoader(ds, batch_size=2, collate_fn=collate)
    images, targets, metas = next(iter(loader))
    assert [m["image_id"] for m in metas] == [1, 2]
    assert len(images) == len(targets) == 2 and images[0].shape == (3, H, W)
    with pytest.raises(TypeError, match=r"batch\[0\]"):
        collate([images[0]])


@pytest.mark.parametrize("bad", ["five", None])
def test_polygon_with_a_non_number_coordinate_is_named(tmp_path: Path, bad: Any) -> None:
    data = coco_json()
    data["annotations"][0]["segmentation"] = [[5.0, 5.0, 15.0, bad, 15.0, 15.0]]
    with pytest.raises(DatasetError, match=r"annotations\[0\] \(id 1\): field 'segmentation"):
        CocoInstances(write_dataset(tmp_path / "coco", data), "train", semantic=None)
