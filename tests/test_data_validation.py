"""Bad datasets are refused before training, naming the file, the entry and the field (issue 10).

Covers: polygon coordinates that are not numbers, malformed compressed RLEs, the cleaned ground truth
COCO evaluation sees, train/val category lists, empty evaluation splits, stuff-map headers, and a
mistyped dataset root that must not be filled with a synthetic dataset.
"""
from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from scnet.data import CocoInstances, DatasetError
from scnet.data.masks import encode_mask
from scnet.data.rle import compressed_rle_problem
from scnet.data.splits import check_run_splits
from scnet.engine.coco_eval import coco_metrics
from tests.test_data_coco import CATEGORIES, H, POLY_MASK, W, box_mask, coco_json, write_dataset, xywh

SQUARE = [5.0, 5.0, 15.0, 5.0, 15.0, 15.0, 5.0, 15.0]


def _with_segmentation(segmentation: Any, index: int = 0) -> dict[str, Any]:
    data = coco_json()
    data["annotations"][index]["segmentation"] = segmentation
    return data


# ------------------------------------------------------------------ polygons


@pytest.mark.parametrize("polygons, shown", [
    ([[5.0, 5.0, "15", 5.0, 15.0, 15.0]], "'15'"),
    ([[5.0, None, 15.0, 5.0, 15.0, 15.0]], "None"),
    ([SQUARE, [5.0, 5.0, True, 5.0, 15.0, 15.0]], "True"),
    ([[5.0, 5.0, math.nan, 5.0, 15.0, 15.0]], "nan"),
    ([[5.0, 5.0, [1.0], 5.0, 15.0, 15.0]], "[1.0]"),
    ([{"x": 1}], "dict"),
    ([SQUARE, "5 5 15 5 15 15"], "str"),
])
def test_polygon_coordinates_that_are_not_numbers_are_refused_naming_the_annotation(
        tmp_path: Path, polygons: list[Any], shown: str) -> None:
    root = write_dataset(tmp_path / "coco", _with_segmentation(polygons), images=False)
    with pytest.raises(DatasetError) as info:
        CocoInstances(root, "train", semantic=None)
    message = str(info.value)
    assert "instances_train2017.json: annotations[0] (id 1)" in message and "segmentation[" in message
    assert shown in message


# ------------------------------------------------------------------ compressed RLE


def test_rle_check_accepts_every_pycocotools_encoding_and_rejects_the_wrong_size() -> None:
    rng = np.random.default_rng(0)
    for _ in range(100):
        height, width = (int(v) for v in rng.integers(1, 40, size=2))
        mask = (rng.random((height, width)) < rng.random()).astype(np.uint8)
        counts = mask_utils.encode(np.asfortranarray(mask))["counts"].decode("ascii")
        assert compressed_rle_problem(counts, height, width) is None
        assert compressed_rle_problem(counts, height + 1, width) is not None


@pytest.mark.parametrize("counts, problem", [
    ("", "cover 0 pixels"),
    ("000", "cover 0 pixels"),        # pycocotools "decodes" this to garbage without an error
    ("zz", "alphabet"),
    ("0 1", "alphabet"),
    ("0a", "middle of a number"),     # 'a' sets the continuation bit and nothing follows
])
def test_malformed_compressed_rle_is_refused_up_front(tmp_path: Path, counts: str, problem: str) -> None:
    valid = encode_mask(box_mask(20, 18, 30, 25))
    assert compressed_rle_problem(valid["counts"], H, W) is None
    root = write_dataset(tmp_path / "coco", _with_segmentation({"size": [H, W], "counts": counts}, index=1),
                         images=False)
    with pytest.raises(DatasetError) as info:
        CocoInstances(root, "train", semantic=None)
    message = str(info.value)
    assert "annotations[1] (id 2)" in message and "'segmentation.counts' is not a valid compressed RLE" in message
    assert problem in message


def test_compressed_rle_with_extra_runs_is_refused(tmp_path: Path) -> None:
    counts = encode_mask(box_mask(20, 18, 30, 25))["counts"] + "1"
    root = write_dataset(tmp_path / "coco", _with_segmentation({"size": [H, W], "counts": counts}, index=1),
                         images=False)
    with pytest.raises(DatasetError, match=rf"runs cover \d+ pixels, not height\*width = {H}\*{W} = {H * W}"):
        CocoInstances(root, "train", semantic=None)


@pytest.mark.parametrize("size", [7, "30x40", [H, W, 3], [float(H), float(W)]])
def test_rle_size_that_is_not_two_integers_is_refused(tmp_path: Path, size: Any) -> None:
    segmentation = {"size": size, "counts": encode_mask(box_mask(20, 18, 30, 25))["counts"]}
    root = write_dataset(tmp_path / "coco", _with_segmentation(segmentation, index=1), images=False)
    with pytest.raises(DatasetError, match=r"annotations\[1\] \(id 2\): field 'segmentation.size'"):
        CocoInstances(root, "train", semantic=None)


# ------------------------------------------------------------------ what COCO evaluation sees


def _segm_ap(coco_gt: COCO, results: list[dict[str, Any]], image_ids: list[int]) -> float:
    coco_dt = coco_gt.loadRes(results)
    evaluator = COCOeval(coco_gt, coco_dt, iouType="segm")
    evaluator.params.imgIds = image_ids
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    return float(evaluator.stats[0])


def test_cocoeval_never_sees_an_annotation_the_loader_dropped_for_its_polygons(tmp_path: Path) -> None:
    data = coco_json()
    data["annotations"][0]["segmentation"] = [[5.0, 5.0, 15.0, 5.0]]  # two points
    data["annotations"][2]["segmentation"] = [[1.0, 1.0], SQUARE, [1.0, 2.0, 3.0]]  # one usable polygon
    raw = COCO()
    raw.dataset = copy.deepcopy(data)
    raw.createIndex()
    # A perfect detection of annotation 3, whose only usable polygon covers POLY_MASK.
    detection = {"image_id": 1, "category_id": 7, "score": 0.9, "segmentation": encode_mask(POLY_MASK)}
    with pytest.raises(Exception):  # pycocotools itself cannot rasterise the raw ground truth
        _segm_ap(raw, [dict(detection)], [1])

    ds = CocoInstances(write_dataset(tmp_path / "coco", data, split="val"), "val", semantic=None)
    assert 1 not in ds.coco.anns and ds.stats["unusable_polygons_dropped"] == 1
    assert ds.coco.anns[3]["segmentation"] == [SQUARE]
    assert 1 not in ds.instance_ids(0) and 3 in ds.instance_ids(0)
    metrics, _ = coco_metrics(ds.coco, [dict(detection, bbox=xywh(POLY_MASK))], [1])  # the run's evaluation
    assert metrics["segm"]["AP"] is not None and metrics["segm"]["AP"] > 0


def test_degenerate_boxes_are_not_trained_on_but_stay_in_the_evaluation_ground_truth(tmp_path: Path) -> None:
    """MMDetection's loader skips them; its CocoMetric evaluates the file as written, so they count."""
    data = coco_json()
    data["annotations"][1]["area"] = 0.0  # MMDetection also skips area <= 0
    ds = CocoInstances(write_dataset(tmp_path / "coco", data), "train", semantic=None)
    assert 6 in ds.coco.anns and 6 not in ds.instance_ids(0)
    assert 2 in ds.coco.anns and 2 not in ds.instance_ids(0)
    assert ds.stats["degenerate_boxes_dropped"] == 2


# ------------------------------------------------------------------ splits of one run


def _split(root: Path, data: dict[str, Any], split: str) -> CocoInstances:
    write_dataset(root, data, split=split)
    return CocoInstances(root, split, semantic=None, training=split == "train")


def test_matching_splits_pass(tmp_path: Path) -> None:
    train = _split(tmp_path / "d", coco_json(), "train")
    val = _split(tmp_path / "d", coco_json(), "val")
    check_run_splits(train, val)


@pytest.mark.parametrize("change, expected", [
    (lambda cats: cats[:2], "ids only in the first: 7"),
    (lambda cats: cats + [{"id": 99, "name": "extra"}], "ids only in the second: 99"),
    (lambda cats: [dict(cats[0], name="TEN"), *cats[1:]], "id 10 is 'ten' vs 'TEN'"),
])
def test_category_lists_of_train_and_val_must_match(tmp_path: Path, change: Any, expected: str) -> None:
    val_data = coco_json()
    val_data["categories"] = change(copy.deepcopy(CATEGORIES))
    val_data["annotations"] = [a for a in val_data["annotations"]
                               if a["category_id"] in {c["id"] for c in val_data["categories"]}]
    train = _split(tmp_path / "d", coco_json(), "train")
    val = _split(tmp_path / "d", val_data, "val")
    with pytest.raises(DatasetError) as info:
        check_run_splits(train, val)
    message = str(info.value)
    assert str(train.ann_file) in message and str(val.ann_file) in message
    assert "'categories' lists differ" in message and expected in message


def test_evaluation_split_without_images_is_refused(tmp_path: Path) -> None:
    val = _split(tmp_path / "d", {"images": [], "annotations": [], "categories": CATEGORIES}, "val")
    with pytest.raises(DatasetError, match=r"instances_val2017\.json: the evaluation split 'val' has no images"):
        check_run_splits(None, val)


@pytest.mark.parametrize("keep", [
    lambda a: False,                      # no annotations at all
    lambda a: a["iscrowd"] == 1,          # only crowd regions
    lambda a: a["id"] == 6,               # only a degenerate box
])
def test_evaluation_split_without_objects_is_refused(tmp_path: Path, keep: Any) -> None:
    data = coco_json()
    data["annotations"] = [a for a in data["annotations"] if keep(a)]
    val = _split(tmp_path / "d", data, "val")
    with pytest.raises(DatasetError, match=r"instances_val2017\.json: the evaluation split 'val' has no "
                                           r"annotation to evaluate against"):
        check_run_splits(None, val)


def test_evaluated_subset_without_objects_is_refused(tmp_path: Path) -> None:
    data = coco_json()
    data["images"] = data["images"][::-1]  # image 3 (no annotation) first
    val = _split(tmp_path / "d", data, "val")
    check_run_splits(None, val)
    with pytest.raises(DatasetError, match=r"the first 1 image\(s\) evaluated.*raise eval.max_images"):
        check_run_splits(None, val, max_images=1)


def test_training_split_without_objects_is_refused(tmp_path: Path) -> None:
    data = coco_json()
    data["annotations"] = [a for a in data["annotations"] if a["iscrowd"]]
    train = _split(tmp_path / "d", data, "train")
    with pytest.raises(DatasetError, match=r"instances_train2017\.json: no image has an annotation to train on"):
        check_run_splits(train, None)


@pytest.mark.parametrize("map_image, problem", [
    (Image.new("RGB", (W, H)), "single-channel"),
    (Image.new("L", (W + 2, H)), f"{W + 2}x{H} but its image is {W}x{H}"),
])
def test_stuff_map_headers_are_checked_before_training(tmp_path: Path, map_image: Image.Image, problem: str) -> None:
    root = write_dataset(tmp_path / "d", coco_json(), split="val")
    folder = root / "stuffthingmaps" / "val2017"
    folder.mkdir(parents=True)
    for i in (1, 2, 3):
        Image.new("L", (W, H)).save(folder / f"img{i}.png")
    val = CocoInstances(root, "val")
    check_run_splits(None, val)
    map_image.save(folder / "img2.png")
    with pytest.raises(DatasetError, match=rf"img2\.png: .*{problem}"):
        check_run_splits(None, val)


# ------------------------------------------------------------------ a mistyped root


def test_missing_root_says_it_does_not_exist_and_how_to_make_one(tmp_path: Path) -> None:
    typo = tmp_path / "shapse"
    with pytest.raises(DatasetError) as info:
        CocoInstances(typo, "train")
    assert f"dataset folder {typo} does not exist" in str(info.value)
    assert f"python -m scnet.data.synthetic --out {typo}" in str(info.value)
    assert not typo.exists()


@pytest.mark.parametrize("file_name", ["/etc/passwd", "../val2017/img1.png", "a/../../x.png", "..\\\\x.png"])
def test_image_file_names_must_stay_inside_the_image_folder(tmp_path: Path, file_name: str) -> None:
    data = coco_json()
    data["images"][1]["file_name"] = file_name
    root = write_dataset(tmp_path / "coco", data, images=False)
    with pytest.raises(DatasetError, match=r"images\[1\] \(id 2\): field 'file_name' = .* must be a path inside"):
        CocoInstances(root, "train", semantic=None)


@pytest.mark.parametrize("content", [b"\xff\xfe not utf-8", b"[" * 100_000, b"{\"num_semantic_classes\": 1.5}"])
def test_a_bad_dataset_info_file_is_named(tmp_path: Path, content: bytes) -> None:
    root = write_dataset(tmp_path / "d", coco_json())
    folder = root / "stuffthingmaps" / "train2017"
    folder.mkdir(parents=True)
    for i in (1, 2, 3):
        Image.new("L", (W, H)).save(folder / f"img{i}.png")
    (root / "dataset_info.json").write_bytes(content)
    with pytest.raises(DatasetError, match=r"dataset_info\.json: "):
        CocoInstances(root, "train")


def test_a_stuff_map_too_large_to_decode_is_named(tmp_path: Path, monkeypatch) -> None:
    from scnet.data.semantic import load_stuff_map

    path = tmp_path / "map.png"
    Image.new("L", (W, H)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", (W * H) // 4)  # the map now counts as a decompression bomb
    with pytest.raises(DatasetError, match=r"map\.png: cannot read the semantic map"):
        load_stuff_map(path, H, W, 183)
