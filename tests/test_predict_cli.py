"""`python -m scnet.predict`: COCO-format output and one clear error per user mistake."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from scnet import build_model
from scnet.checkpoints import save_weights
from scnet.predict import main


@pytest.fixture(scope="module")
def smoke_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "mask_rcnn_smoke.pth"
    return save_weights(path, build_model("mask_rcnn_r18_smoke"), preset="mask_rcnn_r18_smoke")


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
    ({"--preset": "scnet_r18_smoke"}, "holds a mask_rcnn_r18_smoke model"),
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


# ------------------------------------------------------- our own checkpoints, class counts, output paths

def _args(checkpoint, image, out, *extra):
    return ["--checkpoint", str(checkpoint), "--image", str(image), "--out", str(out), "--score-thr", "0.0",
            "--device", "cpu", *extra]


@pytest.fixture(scope="module")
def training_checkpoint(tmp_path_factory):
    """A run's checkpoints/last.pth as the trainer writes it: the run config, not the class counts
    (those came from the run's dataset), for a custom class count with a semantic head."""
    from scnet.engine.checkpoint import save_checkpoint
    from scnet.engine.run_config import RunConfig

    run_config = RunConfig(preset="scnet_r18_smoke", data_root="/nowhere/custom", scale="smoke",
                           model_flags={"feature_relay": False})
    torch.manual_seed(0)
    model = build_model(run_config.model_config(num_classes=5, num_semantic_classes=7))
    path = tmp_path_factory.mktemp("run") / "checkpoints" / "last.pth"
    save_checkpoint(path, {"iteration": 3, "total_iters": 3, "iters_per_epoch": 1,
                     "model": model.state_dict(), "run_config": run_config.to_dict()})
    return path


@pytest.mark.slow
def test_a_training_checkpoint_needs_no_preset(training_checkpoint, photo, tmp_path):
    out = tmp_path / "dets.json"
    assert main(_args(training_checkpoint, photo, out)) == 0
    records = json.loads(out.read_text())
    assert records and all(0 <= r["label"] < 5 and r["category_id"] == r["label"] for r in records)
    # The same preset named explicitly is fine; another one is refused, naming the stored one.
    assert main(_args(training_checkpoint, photo, out, "--preset", "scnet_r18_smoke", "--force")) == 0


@pytest.mark.parametrize("extra, expected", [
    (["--preset", "htc_r18_smoke"], "holds a scnet_r18_smoke model"),
    (["--num-classes", "80"], "was trained with num_classes=5, not 80"),
    (["--num-semantic-classes", "183"], "was trained with num_semantic_classes=7"),
])
def test_training_checkpoint_contradicted(extra, expected, training_checkpoint, photo, tmp_path, capsys):
    assert main(_args(training_checkpoint, photo, tmp_path / "d.json", *extra)) == 2
    err = capsys.readouterr().err
    assert expected in err and len(err.strip().splitlines()) == 1


def test_bare_state_dict_takes_its_class_counts_from_the_tensors(photo, tmp_path, capsys):
    state = build_model("htc_r18_smoke", num_classes=4, num_semantic_classes=9).state_dict()
    torch.save(state, tmp_path / "bare.pth")
    assert main(_args(tmp_path / "bare.pth", photo, tmp_path / "d.json")) == 2
    assert "is a bare state dict without a model config; give --preset" in capsys.readouterr().err
    assert main(_args(tmp_path / "bare.pth", photo, tmp_path / "d.json", "--preset", "htc_r18_smoke")) == 0
    assert all(r["label"] < 4 for r in json.loads((tmp_path / "d.json").read_text()))


@pytest.mark.parametrize("where", ["folder", "under_a_file"])
def test_unwritable_out_is_refused_before_the_work(where, smoke_checkpoint, photo, tmp_path, capsys, monkeypatch):
    if where == "folder":
        out = tmp_path / "a_folder"
        out.mkdir()
    else:
        (tmp_path / "plain_file").write_text("x")
        out = tmp_path / "plain_file" / "dets.json"
    import scnet.predict as predict

    monkeypatch.setattr(predict, "read_weights", lambda *a, **k: pytest.fail("work started before the check"))
    assert main(_args(smoke_checkpoint, photo, out)) == 2
    err = capsys.readouterr().err
    assert "--out" in err and len(err.strip().splitlines()) == 1
    assert not list(tmp_path.rglob("*.tmp"))


def test_a_failed_write_leaves_no_temp_file(smoke_checkpoint, photo, tmp_path, capsys, monkeypatch):
    import errno
    import os

    def full_disk(fd, *args):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full_disk)
    assert main(_args(smoke_checkpoint, photo, tmp_path / "d.json")) == 2
    err = capsys.readouterr().err
    assert "No space left on device" in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photo.png"]


@pytest.mark.parametrize("device", ["gpu0", "cuda", "cuda:7"])
def test_a_device_this_machine_lacks(device, smoke_checkpoint, photo, tmp_path, capsys):
    if device != "gpu0" and torch.cuda.is_available() and torch.cuda.device_count() > 7:
        pytest.skip("this machine has the GPU")
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(SystemExit) as exit_:
        main(_args(smoke_checkpoint, photo, tmp_path / "d.json") + ["--device", device])
    assert exit_.value.code == 2
    assert "--device" in capsys.readouterr().err


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
