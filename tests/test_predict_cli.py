"""`python -m scnet.predict`: COCO-format output and one clear error per user mistake."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from scnet import build_model
from scnet.checkpoints import save_checkpoint
from scnet.predict import main


@pytest.fixture(scope="module")
def smoke_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "mask_rcnn_smoke.pth"
    return save_checkpoint(path, build_model("mask_rcnn_r18_smoke"), preset="mask_rcnn_r18_smoke")


@pytest.fixture()
def photo(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "photo.png"
    Image.fromarray(rng.integers(0, 255, (90, 140, 3), dtype=np.uint8)).save(path)
    return path


def test_writes_coco_results(smoke_checkpoint, photo, tmp_path, capsys):
    out = tmp_path / "dets.json"
    code = main(["--preset", "mask_rcnn_r18_smoke", "--checkpoint", str(smoke_checkpoint), "--image", str(photo),
                 "--out", str(out), "--score-thr", "0.0"])
    assert code == 0
    records = json.loads(out.read_text())
    assert records, "random weights at score threshold 0 still give detections"
    first = records[0]
    assert set(first) >= {"bbox", "score", "category_id", "label", "segmentation"}
    assert len(first["bbox"]) == 4 and first["bbox"][2] >= 0 and first["bbox"][3] >= 0
    assert first["segmentation"]["size"] == [90, 140]  # pasted at the original image size
    from scnet.coco_ids import COCO_CATEGORY_IDS
    assert all(r["category_id"] == COCO_CATEGORY_IDS[r["label"]] for r in records)
    assert "detections" in capsys.readouterr().out


@pytest.mark.parametrize("change, expected", [
    ({"--image": "missing.jpg"}, "does not exist"),
    ({"--preset": "scnet_r5O"}, "unknown preset"),
    ({"--preset": "scnet_r18_smoke"}, "try --preset mask_rcnn_r18_smoke"),
    ({"--checkpoint": "nope.pth"}, "checkpoint"),
])
def test_user_mistakes_get_one_clear_error(change, expected, smoke_checkpoint, photo, tmp_path, capsys):
    args = {"--preset": "mask_rcnn_r18_smoke", "--checkpoint": str(smoke_checkpoint), "--image": str(photo),
            "--out": str(tmp_path / "dets.json")}
    args.update({k: (str(tmp_path / v) if k in ("--image", "--checkpoint") else v) for k, v in change.items()})
    code = main([x for pair in args.items() for x in pair])
    err = capsys.readouterr().err
    assert code == 2
    assert expected in err and "Traceback" not in err
    assert not (tmp_path / "dets.json").exists(), "nothing is written on error"


def test_non_image_file_is_refused(smoke_checkpoint, tmp_path, capsys):
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    code = main(["--preset", "mask_rcnn_r18_smoke", "--checkpoint", str(smoke_checkpoint), "--image", str(text),
                 "--out", str(tmp_path / "d.json")])
    assert code == 2 and "not a readable image" in capsys.readouterr().err


def test_decompression_bomb_is_refused_before_any_work(smoke_checkpoint, tmp_path, capsys):
    from tests.test_data_image_io import png_claiming

    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_claiming(50_000, 50_000))
    code = main(["--preset", "mask_rcnn_r18_smoke", "--checkpoint", str(smoke_checkpoint), "--image", str(bomb),
                 "--out", str(tmp_path / "d.json")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and str(bomb) in err and "decompression bomb" in err
    assert len(err.splitlines()) == 1 and not (tmp_path / "d.json").exists()


def test_grey_16bit_png_is_predicted_at_its_size(smoke_checkpoint, tmp_path):
    import cv2

    grey16 = tmp_path / "grey16.png"
    cv2.imwrite(str(grey16), (np.arange(90 * 140).reshape(90, 140) * 5).astype(np.uint16))
    out = tmp_path / "dets.json"
    assert main(["--preset", "mask_rcnn_r18_smoke", "--checkpoint", str(smoke_checkpoint), "--image", str(grey16),
                 "--out", str(out), "--score-thr", "0.0"]) == 0
    assert all(r["segmentation"]["size"] == [90, 140] for r in json.loads(out.read_text()))
