"""The synthetic shapes dataset: deterministic, atomic, and its masks say exactly what is visible."""
from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from scnet.data import CocoInstances, DatasetError, ensure_synthetic, generate_synthetic
from scnet.data.masks import decode_segmentation
from scnet.data.synthetic import CLASSES
from scnet.data.synthetic.__main__ import main as cli_main
from scnet.data.synthetic.render import RenderSettings, render_image

TINY = dict(train=6, val=3, size=(96, 72), progress=False)


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_synthetic(tmp_path_factory.mktemp("synthetic") / "shapes", seed=0, **TINY)


def test_same_seed_gives_identical_files_other_seed_differs(tiny: Path, tmp_path: Path) -> None:
    again = generate_synthetic(tmp_path / "again", seed=0, **TINY)
    other = generate_synthetic(tmp_path / "other", seed=1, **TINY)
    digest = tree_digest(tiny)
    assert len(digest) == 2 + 1 + 2 * (6 + 3)  # two JSONs, dataset_info, an image and a map per image
    assert tree_digest(again) == digest
    differing = {k for k, v in tree_digest(other).items() if digest.get(k) != v}
    assert "annotations/instances_train2017.json" in differing and "train2017/000000000001.jpg" in differing


def test_layout_and_dataset_info(tiny: Path) -> None:
    info = json.loads((tiny / "dataset_info.json").read_text())
    assert info["num_semantic_classes"] == len(CLASSES) + 1 == 7
    assert info["params"]["seed"] == 0 and info["splits"]["train"]["images"] == 6
    for split, count in (("train", 6), ("val", 3)):
        data = json.loads((tiny / "annotations" / f"instances_{split}2017.json").read_text())
        assert len(data["images"]) == count
        assert [c["id"] for c in data["categories"]] == [1, 2, 4, 5, 7, 9]
        for record in data["images"]:
            assert (tiny / f"{split}2017" / record["file_name"]).is_file()
            assert (tiny / "stuffthingmaps" / f"{split}2017" / record["file_name"].replace(".jpg", ".png")).is_file()
    train_ids = {r["id"] for r in json.loads((tiny / "annotations/instances_train2017.json").read_text())["images"]}
    val_ids = {r["id"] for r in json.loads((tiny / "annotations/instances_val2017.json").read_text())["images"]}
    assert not train_ids & val_ids


def test_masks_are_the_visible_pixels_boxes_are_tight_semantic_agrees(tiny: Path) -> None:
    data = json.loads((tiny / "annotations" / "instances_train2017.json").read_text())
    label_of = {c["id"]: k for k, c in enumerate(sorted(data["categories"], key=lambda c: c["id"]))}
    kinds = set()
    for record in data["images"]:
        h, w = record["height"], record["width"]
        pixels = np.asarray(Image.open(tiny / "train2017" / record["file_name"])).astype(np.float32)
        semantic = np.asarray(Image.open(tiny / "stuffthingmaps" / "train2017" / record["file_name"].replace(".jpg", ".png")))
        anns = [a for a in data["annotations"] if a["image_id"] == record["id"]]
        assert 1 <= len(anns) <= 8
        covered = np.zeros((h, w), dtype=np.int32)
        for ann in anns:
            kinds.add("polygon" if isinstance(ann["segmentation"], list) else "rle")
            mask = decode_segmentation(ann["segmentation"], h, w).astype(bool)
            ys, xs = np.nonzero(mask)
            assert ann["area"] == mask.sum() > 0
            assert ann["bbox"] == [xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()]
            label = label_of[ann["category_id"]]
            assert (semantic[mask] == label + 1).all()
            # what the mask covers looks like its class: the mean colour is nearest the class colour
            mean = pixels[mask].mean(axis=0)
            nearest = min(range(len(CLASSES)), key=lambda k: np.abs(mean - np.array(CLASSES[k].rgb)).sum())
            assert nearest == label, (record["file_name"], ann["id"])
            covered += mask
        assert covered.max() == 1  # each pixel belongs to at most one (the front-most) object
        assert (semantic[covered == 0] == 0).all()
    assert kinds == {"polygon", "rle"}


def test_visibility_is_shape_minus_everything_drawn_later() -> None:
    settings = RenderSettings(128, 96, min_objects=6, max_objects=8)
    occluded = 0
    for seed in range(6):
        rendered = render_image(np.random.default_rng(seed), settings)
        shapes = [obj.outline.rasterise(96, 128) for obj in rendered.objects]
        for i, obj in enumerate(rendered.objects):
            expected = shapes[i].copy()
            for later in shapes[i + 1:]:
                expected &= ~later
            assert np.array_equal(obj.visible, expected)
            assert obj.area_full == shapes[i].sum()
            occluded += int(not rendered.fully_visible(obj))
        assert np.array_equal(rendered.semantic > 0, np.any(shapes, axis=0))
    assert occluded > 0  # the scenes do contain occlusions


def test_reader_serves_the_synthetic_dataset(tiny: Path) -> None:
    ds = CocoInstances(tiny, "train")
    assert ds.semantic_source == "stuff" and ds.num_semantic_classes == 7 and ds.num_classes == 6
    assert ds.label_to_category_id == [1, 2, 4, 5, 7, 9]
    image, target, _ = ds[0]
    assert image.shape == (3, 72, 96)
    semantic = target["semantic_seg"]
    for mask, label in zip(target["masks"], target["labels"]):
        assert (semantic[mask.bool()] == label + 1).all()
    assert len(CocoInstances(tiny, "val")) == 3


def test_existing_dataset_is_reused_a_different_one_is_refused(tiny: Path, tmp_path: Path) -> None:
    before = tree_digest(tiny)
    assert generate_synthetic(tiny, seed=0, **TINY) == tiny
    assert tree_digest(tiny) == before
    with pytest.raises(DatasetError, match=r"refusing to overwrite.*'seed': 0"):
        generate_synthetic(tiny, seed=1, **TINY)
    with pytest.raises(DatasetError, match="refusing to overwrite.*not a synthetic dataset"):
        (tmp_path / "mine").mkdir()
        (tmp_path / "mine" / "notes.txt").write_text("keep me")
        generate_synthetic(tmp_path / "mine", seed=0, **TINY)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    assert tree_digest(tiny) == before


def _ensure_in_child(root: str) -> str:
    return str(ensure_synthetic(root, seed=0, **TINY))


def test_concurrent_ensure_synthetic_publishes_one_complete_dataset(tiny: Path, tmp_path: Path) -> None:
    root = tmp_path / "cache" / "shapes"
    with multiprocessing.get_context("fork").Pool(3) as pool:
        results = pool.map(_ensure_in_child, [str(root)] * 3)
    assert results == [str(root)] * 3
    assert tree_digest(root) == tree_digest(tiny)
    assert os.listdir(root.parent) == ["shapes"]  # no temporary folders left behind
    assert ensure_synthetic(root, seed=0, **TINY) == root


def test_cli_writes_the_layout_and_reports_refusals(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"
    args = ["--out", str(out), "--seed", "0", "--train", "6", "--val", "3", "--size", "96", "72"]
    assert cli_main(args) == 0
    assert cli_main(args[:3] + ["1"] + args[4:]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err
    assert cli_main(["--out", str(tmp_path / "bad"), "--train", "0"]) == 2
    assert "train=0" in capsys.readouterr().err


@pytest.mark.slow
def test_module_entry_point_runs(tmp_path: Path) -> None:
    out = tmp_path / "module"
    done = subprocess.run([sys.executable, "-m", "scnet.data.synthetic", "--out", str(out), "--train", "2",
                           "--val", "1", "--size", "64", "48"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (out / "annotations" / "instances_val2017.json").is_file()
    assert "RuntimeWarning" not in done.stderr
