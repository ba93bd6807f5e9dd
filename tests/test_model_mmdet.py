"""Our presets are MMDetection 3.3.0's networks: same parameter counts, a one-to-one key map, and the
same detections as MMDetection on the coffee photo with the deterministic reference weights."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from scnet import build_model
from scnet.checkpoints import load_weights, mmdet_to_ours
from scnet.equivalence import match_detections, write_reference_checkpoint
from scnet.data.pipeline import test_input
from scnet.image_io import read_bgr
from scnet.presets import MMDET_PRESETS

REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "reference"
ORACLE_PRESETS = ("mask_rcnn_r50", "cascade_mask_rcnn_r50", "htc_r50", "scnet_r50")

pytestmark = [pytest.mark.skipif(not REFERENCE.is_dir(), reason=f"{REFERENCE} (shared/reference) is not beside the repo"),
              pytest.mark.independent]


def manifest(preset: str) -> dict:
    return json.loads((REFERENCE / f"{preset}.state_dict.json").read_text())


@pytest.mark.parametrize("preset", MMDET_PRESETS)
def test_parameter_count_and_key_map_match_the_manifest(preset):
    ref = manifest(preset)
    model = build_model(preset)
    assert sum(p.numel() for p in model.parameters()) == ref["num_parameters"]
    mapped = {mmdet_to_ours(name): shape for name, (shape, _dtype) in ref["keys"].items()}
    assert len(mapped) == len(ref["keys"]), "two MMDetection names map to one of ours"
    ours = {name: list(t.shape) for name, t in model.state_dict().items()}
    assert mapped == ours
    # a state dict made from the manifest loads strictly under the mapped names
    state = {mmdet_to_ours(name): torch.zeros(shape, dtype=getattr(torch, dtype))
             for name, (shape, dtype) in ref["keys"].items()}
    model.load_state_dict(state, strict=True)


@pytest.fixture(scope="module")
def coffee():
    return test_input(read_bgr(REFERENCE / "oracle" / "coffee_1200x800.png"))


@pytest.mark.slow
@pytest.mark.usefixtures("two_threads")
@pytest.mark.parametrize("preset", ORACLE_PRESETS)
def test_reference_weights_reproduce_mmdetection_detections(preset, coffee, tmp_path):
    checkpoint = write_reference_checkpoint(REFERENCE / f"{preset}.state_dict.json", tmp_path / "ref.pth")
    # The oracle ran every preset with score_thr 0.001 (shared/reference/README.md); the Mask R-CNN and
    # Cascade presets keep MMDetection's 0.05, tested through scnet.evaluate in test_pipeline_oracle.py.
    model = build_model(preset, test_score_thr=0.001).eval()
    load_weights(model, checkpoint, preset_name=preset)
    oracle = json.loads((REFERENCE / "oracle" / f"{preset}.coffee.mmdet_outputs.json").read_text())
    image, meta = coffee
    assert list(image.shape[-2:]) == oracle["input"]["img_shape"]
    with torch.inference_mode():
        batch, _ = model.batch([image])
        features = model.features(batch)
        for level, expected in zip(features, oracle["fpn_levels"]):
            assert list(level.shape) == expected["shape"]
            assert abs(level.mean().item() - expected["mean"]) < 1e-3
        detections = model([image], image_metas=[meta])[0]
    report = match_detections(oracle["detections"], detections)
    assert report.total > 0
    assert report.all_matched, f"{preset}: unmatched MMDetection detections {report.unmatched}"
    assert detections["masks"].shape[-2:] == (800, 1200)


# ---------------------------------------------------------------------------------------------- the rule
def _as_ours(reference: dict) -> dict:
    """MMDetection's detections in the form our model returns them."""
    from pycocotools import mask as mask_utils

    return {"boxes": torch.tensor(reference["bboxes_xyxy"], dtype=torch.float32).reshape(-1, 4),
            "scores": torch.tensor(reference["scores"], dtype=torch.float32),
            "labels": torch.tensor(reference["labels"], dtype=torch.int64),
            "masks": torch.from_numpy(np.stack([mask_utils.decode(r) for r in reference["masks_rle"]]).astype(bool))}


def _one(box: list[float], mask: np.ndarray, score: float = 0.5, label: int = 3) -> tuple[dict, dict]:
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    reference = {"bboxes_xyxy": [box], "scores": [score], "labels": [label], "masks_rle": [rle]}
    return reference, _as_ours(reference)


@pytest.mark.parametrize("preset", ORACLE_PRESETS)
def test_mmdetection_matches_itself_under_the_rule(preset):
    oracle = json.loads((REFERENCE / "oracle" / f"{preset}.coffee.mmdet_outputs.json").read_text())["detections"]
    report = match_detections(oracle, _as_ours(oracle))
    assert report.total > 0 and report.all_matched


def test_rule_tolerates_one_pixel_boundary_flips_of_thin_masks_only():
    mask = np.zeros((40, 60), dtype=bool)
    mask[10:13, 5:55] = True                     # a 3-px tall stripe: a 1-px shift halves its IoU
    reference, ours = _one([5, 10, 55, 13], mask)
    ours["masks"] = torch.from_numpy(np.roll(mask, 1, axis=0))[None]
    assert match_detections(reference, ours).all_matched
    ours["masks"] = torch.from_numpy(np.roll(mask, 3, axis=0))[None]
    assert not match_detections(reference, ours).all_matched


def test_rule_skips_masks_of_boxes_under_three_pixels_but_checks_their_box_label_and_score():
    mask = np.zeros((40, 60), dtype=bool)
    mask[10:12, 5:30] = True
    reference, ours = _one([5, 10, 30, 12.5], mask)
    ours["masks"] = torch.zeros_like(ours["masks"])
    assert match_detections(reference, ours).all_matched
    for field, value in (("labels", torch.tensor([4])), ("scores", torch.tensor([0.52])),
                         ("boxes", torch.tensor([[5.0, 10.0, 31.5, 12.5]]))):
        changed = dict(ours, **{field: value})
        assert not match_detections(reference, changed).all_matched, field


def test_rule_accepts_box_corners_within_one_pixel_and_ignores_low_scores():
    mask = np.zeros((40, 60), dtype=bool)
    mask[5:35, 5:55] = True
    reference, ours = _one([5, 5, 55, 35], mask)
    ours["boxes"] = torch.tensor([[5.9, 4.1, 55.9, 35.9]])
    assert match_detections(reference, ours).all_matched
    low, _ = _one([5, 5, 55, 35], mask, score=0.04)
    empty = {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64),
             "masks": torch.zeros(0, 40, 60, dtype=torch.bool)}
    assert match_detections(low, empty).total == 0
