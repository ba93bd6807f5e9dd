"""MMDetection's whole test pipeline on a JPEG that must be resized (shared/reference/oracle/pipeline):
`python -m scnet.predict` and `python -m scnet.evaluate` give its detections in original-image pixels,
and the resized image the model sees is MMDetection's to the byte."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from scnet import evaluate, predict
from scnet.coco_ids import COCO_CATEGORY_IDS
from scnet.data.pipeline import md5_hex, test_input, uint8_bgr_chw
from scnet.equivalence import match_detections, write_reference_checkpoint
from scnet.image_io import read_bgr

REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "reference"
PIPELINE = REFERENCE / "oracle" / "pipeline"
JPEG = PIPELINE / "coffee_600x400.jpg"
ORACLE_PRESETS = ("mask_rcnn_r50", "cascade_mask_rcnn_r50", "htc_r50", "scnet_r50")

pytestmark = [pytest.mark.skipif(not PIPELINE.is_dir(), reason=f"{PIPELINE} (shared/reference) is not beside the repo"),
              pytest.mark.independent]


def oracle(preset: str) -> dict:
    return json.loads((PIPELINE / f"{preset}.coffee_600x400.mmdet_outputs.json").read_text())


def test_test_pipeline_fields_are_mmdetections():
    image, meta = test_input(read_bgr(JPEG))
    for preset in ORACLE_PRESETS:
        expected = oracle(preset)["pipeline"]
        assert list(meta["ori_shape"]) == expected["ori_shape"]
        assert list(meta["img_shape"]) == expected["img_shape"]
        assert list(meta["scale_factor"]) == expected["scale_factor"]
        assert list(meta["pad_shape"]) == expected["pad_shape"]
        resized = uint8_bgr_chw(image)
        assert md5_hex(resized) == expected["resized_uint8_bgr_chw_md5"]
        assert int(resized.sum(dtype=np.int64)) == expected["resized_uint8_sum"]


def as_detections(records: list[dict], label_of: dict[int, int]) -> dict[str, torch.Tensor]:
    """COCO results records back to the model's output form (xyxy boxes, 0-based labels, bool masks)."""
    boxes = [[b[0], b[1], b[0] + b[2], b[1] + b[3]] for b in (r["bbox"] for r in records)]
    return {"boxes": torch.tensor(boxes, dtype=torch.float64).reshape(-1, 4),
            "scores": torch.tensor([r["score"] for r in records], dtype=torch.float64),
            "labels": torch.tensor([label_of[r["category_id"]] for r in records], dtype=torch.int64),
            "masks": torch.from_numpy(np.stack([mask_utils.decode(r["segmentation"]) for r in records]).astype(bool))}


def one_image_val_split(root: Path, semantic: bool) -> Path:
    """A COCO-layout val split of the oracle JPEG with COCO's 80 categories (and an empty stuff map)."""
    (root / "annotations").mkdir(parents=True)
    (root / "val2017").mkdir()
    shutil.copy(JPEG, root / "val2017" / JPEG.name)
    data = {"images": [{"id": 1, "file_name": JPEG.name, "width": 600, "height": 400}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 47, "bbox": [190.0, 90.0, 220.0, 160.0],
                             "area": 35200.0, "iscrowd": 0,
                             "segmentation": [[190.0, 90.0, 410.0, 90.0, 410.0, 250.0, 190.0, 250.0]]}],
            "categories": [{"id": cid, "name": f"c{cid}"} for cid in COCO_CATEGORY_IDS]}
    (root / "annotations" / "instances_val2017.json").write_text(json.dumps(data))
    if semantic:  # the 183-class COCO-stuff head needs the stuff layout; the maps' content is not used here
        (root / "stuffthingmaps" / "val2017").mkdir(parents=True)
        Image.fromarray(np.full((400, 600), 255, dtype=np.uint8)).save(root / "stuffthingmaps" / "val2017" / "coffee_600x400.png")
    return root


@pytest.mark.slow
@pytest.mark.usefixtures("two_threads")
@pytest.mark.parametrize("preset", ORACLE_PRESETS)
def test_predict_and_evaluate_give_mmdetections_detections(preset, tmp_path, capsys):
    expected = oracle(preset)["detections"]
    checkpoint = write_reference_checkpoint(REFERENCE / f"{preset}.state_dict.json", tmp_path / "ref.pth")
    label_of = {cid: label for label, cid in enumerate(COCO_CATEGORY_IDS)}

    out = tmp_path / "predict.json"
    assert predict.main(["--preset", preset, "--checkpoint", str(checkpoint), "--image", str(JPEG),
                         "--out", str(out), "--score-thr", "0.001", "--device", "cpu"]) == 0
    records = json.loads(out.read_text())
    assert all(r["segmentation"]["size"] == [400, 600] for r in records)
    report = match_detections(expected, as_detections(records, label_of))
    assert report.total > 0 and report.all_matched, f"predict {preset}: unmatched {report.unmatched}"

    root = one_image_val_split(tmp_path / "data", semantic=preset.startswith(("htc", "scnet")))
    run_dir = tmp_path / "eval"
    assert evaluate.main(["--checkpoint", str(checkpoint), "--preset", preset, "--data", str(root),
                          "--out", str(run_dir), "--workers", "0", "--device", "cpu", "--no-progress"]) == 0
    capsys.readouterr()
    records = json.loads((run_dir / "detections.json").read_text())
    report = match_detections(expected, as_detections(records, label_of))
    assert report.total > 0 and report.all_matched, f"evaluate {preset}: unmatched {report.unmatched}"
