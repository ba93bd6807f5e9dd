"""The training pipeline gives what MMDetection 3.3.0's gave on the oracle dataset (shared/reference/
oracle/train/coffee): the resized uint8 image, the ground truth after resize and flip, the ignored
crowd region, and the padded semantic map."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from scnet.data import load_sample
from scnet.data.pipeline import md5_hex, padded_semantic_map, uint8_bgr_chw

ORACLE = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "oracle" / "train" / "coffee"
PRESETS = ("mask_rcnn_r50", "cascade_mask_rcnn_r50", "htc_r50", "scnet_r50")

pytestmark = pytest.mark.skipif(not ORACLE.is_dir(), reason=f"{ORACLE} (shared/reference) is not beside the repo")


@pytest.fixture(scope="module", params=["noflip", "flip"])
def case(request):
    flip = request.param == "flip"
    sample = load_sample(ORACLE, "train", 1, flip=flip)
    oracles = [json.loads((ORACLE / f"{preset}.{request.param}.mmdet_train_step.json").read_text())["pipeline"]
               for preset in PRESETS]
    return sample, oracles


def test_image_and_shapes_match(case):
    (image, _, meta), oracles = case
    for oracle in oracles:
        assert list(meta["ori_shape"]) == oracle["ori_shape"]
        assert list(meta["img_shape"]) == oracle["img_shape"]
        assert list(meta["pad_shape"]) == oracle["pad_shape"]
        assert list(meta["scale_factor"]) == oracle["scale_factor"]
        assert md5_hex(uint8_bgr_chw(image)) == oracle["resized_uint8_bgr_chw_md5"]


def test_ground_truth_matches(case):
    (_, target, _), oracles = case
    for oracle in oracles:
        assert target["boxes"].tolist() == oracle["gt_bboxes_xyxy"]
        assert target["labels"].tolist() == oracle["gt_labels"]
        assert target["masks"].sum(dim=(1, 2)).tolist() == oracle["gt_mask_areas"]
        assert target["ignored_boxes"].tolist() == oracle["ignored_crowd_boxes"]


def test_padded_semantic_map_matches(case):
    (_, target, meta), oracles = case
    padded = padded_semantic_map(target["semantic_seg"], meta["pad_shape"])
    with_semantic = [o for o in oracles if "gt_sem_seg_md5" in o]
    assert len(with_semantic) == 2  # HTC and SCNet
    for oracle in with_semantic:
        assert list(padded.shape) == oracle["gt_sem_seg_shape"]
        assert md5_hex(padded) == oracle["gt_sem_seg_md5"]
    assert padded.dtype == np.uint8
