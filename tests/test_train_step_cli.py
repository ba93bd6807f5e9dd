"""`python -m scnet.train_step`: the report's fields and names, determinism of `--sampler all`, given
proposals, and one-line errors for bad input. A small preset on the oracle's one-image dataset."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from scnet import build_model
from scnet.checkpoints import save_weights
from scnet.train_step import main

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "oracle" / "train" / "coffee"
PRESET = "mask_rcnn_r18_smoke"

pytestmark = pytest.mark.skipif(not DATA.is_dir(), reason=f"{DATA} (shared/reference) is not beside the repo")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    return save_weights(tmp_path_factory.mktemp("ckpt") / "smoke.pth", build_model(PRESET), preset=PRESET)


def run(checkpoint, out, *extra, flip="off", sampler="all", preset=PRESET):
    argv = ["--preset", preset, "--checkpoint", str(checkpoint), "--data", str(DATA), "--split", "train",
            "--image-id", "1", "--flip", flip, "--sampler", sampler, "--out", str(out), *extra]
    return main(argv)


@pytest.mark.slow
def test_report_fields_and_mmdetection_names(checkpoint, tmp_path):
    out = tmp_path / "step.json"
    assert run(checkpoint, out) == 0
    report = json.loads(out.read_text())
    pipeline = report["pipeline"]
    assert pipeline["img_shape"] == [800, 1200] and pipeline["pad_shape"] == [800, 1216]
    assert pipeline["scale_factor"] == [2.0, 2.0]
    assert len(pipeline["gt_bboxes_xyxy"]) == len(pipeline["gt_labels"]) == len(pipeline["gt_mask_areas"]) == 5
    assert len(pipeline["resized_uint8_bgr_chw_md5"]) == 32
    # one RPN and one box-stage sampler call for the one image; every candidate taken
    assert set(report["samples"]) == {"rpn", "stage0"}
    stage0 = report["samples"]["stage0"]
    assert len(stage0) == 1 and stage0[0]["pos"] >= 5  # at least the 5 ground truths added as proposals
    assert stage0[0]["pos"] + stage0[0]["neg"] == report["proposals"]["n"] + 5
    assert report["samples"]["rpn"][0]["pos"] + report["samples"]["rpn"][0]["neg"] > 256
    losses = report["losses"]
    assert set(losses) == {"loss_rpn_cls", "loss_rpn_bbox", "loss_cls", "acc", "loss_bbox", "loss_mask", "loss"}
    assert losses["loss"] == pytest.approx(sum(v for k, v in losses.items() if k.startswith("loss_")), rel=1e-6)
    grads = report["grad_norms"]
    assert "rpn_head.rpn_conv.weight" in grads and "roi_head.bbox_head.fc_cls.weight" in grads
    assert "roi_head.mask_head.conv_logits.weight" in grads and "neck.fpn_convs.0.conv.weight" in grads
    assert all(v >= 0 for v in grads.values())
    assert report["params_without_grad"] == []


@pytest.mark.slow
def test_sampler_all_is_deterministic_and_random_draws_the_configured_sizes(checkpoint, tmp_path):
    reports = []
    for name in ("a", "b"):
        assert run(checkpoint, tmp_path / f"{name}.json", flip="on") == 0
        reports.append(json.loads((tmp_path / f"{name}.json").read_text()))
    assert reports[0]["losses"] == reports[1]["losses"]
    assert reports[0]["grad_norms"] == reports[1]["grad_norms"]
    assert run(checkpoint, tmp_path / "r.json", "--seed", "3", flip="on", sampler="random") == 0
    rpn = json.loads((tmp_path / "r.json").read_text())["samples"]["rpn"][0]
    assert rpn["pos"] + rpn["neg"] == 256  # RandomSampler(num=256) over far more candidates


@pytest.mark.slow
def test_given_proposals_skip_the_rpn(checkpoint, tmp_path):
    boxes = [[380.0, 180.0, 820.0, 500.0, 1.0], [100.0, 100.0, 300.0, 260.0, 0.5], [0.0, 0.0, 50.0, 40.0, 0.1]]
    proposals = tmp_path / "proposals.json"
    proposals.write_text(json.dumps(boxes))
    out = tmp_path / "step.json"
    assert run(checkpoint, out, "--proposals", str(proposals)) == 0
    report = json.loads(out.read_text())
    assert "rpn" not in report["samples"] and "loss_rpn_cls" not in report["losses"]
    assert report["proposals"]["n"] == 3
    assert report["samples"]["stage0"][0]["pos"] + report["samples"]["stage0"][0]["neg"] == 3 + 5
    assert sorted(report["params_without_grad"]) == sorted(
        f"rpn_head.{layer}.{kind}" for layer in ("rpn_conv", "rpn_cls", "rpn_reg") for kind in ("weight", "bias"))


@pytest.mark.parametrize("content,words", [
    ("not json", "cannot read it as JSON"),
    ("[]", "non-empty JSON list"),
    ("[[1, 2, 3]]", "entry 0"),
    ("[[10, 10, 5, 20, 1.0]]", "x2 >= x1"),
])
def test_bad_proposals_file_is_one_clear_error(checkpoint, tmp_path, capsys, content, words):
    proposals = tmp_path / "proposals.json"
    proposals.write_text(content)
    out = tmp_path / "step.json"
    assert run(checkpoint, out, "--proposals", str(proposals)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(proposals) in err and words in err
    assert not out.exists()


def test_unknown_image_id_and_wrong_checkpoint_exit_2(checkpoint, tmp_path, capsys):
    out = tmp_path / "step.json"
    argv = ["--preset", PRESET, "--checkpoint", str(checkpoint), "--data", str(DATA), "--split", "train",
            "--image-id", "999", "--flip", "off", "--sampler", "all", "--out", str(out)]
    assert main(argv) == 2
    assert "image id 999" in capsys.readouterr().err
    assert run(checkpoint, out, preset="htc_r18_smoke") == 2
    assert "error:" in capsys.readouterr().err
    assert not out.exists()
