"""One training step of each R50 preset equals MMDetection 3.3.0's (shared/reference/oracle/train/coffee):
recipe weights, every sampler taking every candidate, without and with flip, with the RPN's own
proposals and with given ones. Losses within 1e-4 relative, gradient norms within 5e-3, identical
pipeline fields, sample counts and parameters without gradient (compare_step)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from scnet import build_model
from scnet.checkpoints.loading import convert_mmdet_state
from scnet.data import load_sample
from scnet.equivalence import reference_weights
from scnet.train_step import compare_step, train_step_report

REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "reference"
ORACLE = REFERENCE / "oracle" / "train" / "coffee"
PRESETS = ("mask_rcnn_r50", "cascade_mask_rcnn_r50", "htc_r50", "scnet_r50")
CASES = ("noflip", "flip", "noflip.proposals", "flip.proposals")
IMAGE_ID = 1

pytestmark = [pytest.mark.skipif(not ORACLE.is_dir(), reason=f"{ORACLE} (shared/reference) is not beside the repo"),
              pytest.mark.slow, pytest.mark.independent]


@pytest.fixture(scope="module")
def samples():
    return {flip: load_sample(ORACLE, "train", IMAGE_ID, flip=flip) for flip in (False, True)}


@pytest.fixture(scope="module", params=PRESETS)
def preset_model(request):
    """Each preset built once; its recipe weights (shared/reference/README.md) under MMDetection's names."""
    preset = request.param
    manifest = json.loads((REFERENCE / f"{preset}.state_dict.json").read_text())["keys"]
    model = build_model(preset)
    model.sampling = "all"
    yield preset, model, reference_weights(manifest)


@pytest.mark.usefixtures("two_threads")
@pytest.mark.parametrize("case", CASES)
def test_train_step_matches_mmdetection(preset_model, samples, case):
    preset, model, weights = preset_model
    flip_name, _, given = case.partition(".")
    oracle = json.loads((ORACLE / f"{preset}.{case}.mmdet_train_step.json").read_text())
    proposals = None
    if given:  # the .proposals oracle: fc_reg scaled by 0.01, the box stages fed the listed boxes
        weights = {k: v * 0.01 if ".fc_reg." in k else v for k, v in weights.items()}
        proposals = torch.tensor(oracle["given_proposals"], dtype=torch.float32)[:, :4]
    model.load_state_dict(convert_mmdet_state(weights), strict=True)
    image, target, meta = samples[flip_name == "flip"]
    assert oracle["flip"] == (flip_name == "flip")

    report = train_step_report(model, image, target, meta, proposals=proposals)

    comparison = compare_step(report, oracle)
    print(f"{preset} {case}: worst loss rel {comparison.worst_loss_rel:.2e}, "
          f"worst grad rel {comparison.worst_grad_rel:.2e}")
    assert comparison.matches, "\n".join(comparison.problems)
