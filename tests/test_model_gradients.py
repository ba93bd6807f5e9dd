"""Every trainable parameter takes part in every training loss, also where a head has nothing to learn
from, so that DistributedDataParallel runs without `find_unused_parameters` (issue 14, item 3): an RPN
without a positive anchor, box stages without a positive RoI (and so a feature relay without one), an
image without any object. Each case checks, from the step record, that the edge was really reached."""
from __future__ import annotations

import pytest
import torch

import scnet

ARCHS = [("mask_rcnn", {}), ("cascade_mask_rcnn", {}), ("cascade_fr", dict(feature_relay=True)), ("htc", {}),
         ("scnet", {})]
HEIGHT, WIDTH = 64, 96


def _target(boxes: list[list[float]]) -> dict:
    masks = torch.zeros(len(boxes), HEIGHT, WIDTH, dtype=torch.uint8)
    for k, (x0, y0, x1, y1) in enumerate(boxes):
        masks[k, int(y0):int(y1), int(x0):int(x1)] = 1
    return dict(boxes=torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                labels=torch.zeros(len(boxes), dtype=torch.int64), masks=masks,
                semantic_seg=torch.zeros(HEIGHT, WIDTH, dtype=torch.int64))


# (case, ground-truth boxes, model flags, what the step record must show)
EDGES = [
    # a 3x3 px object: no anchor reaches IoU 0.3 with it, but it is its own positive in every box stage
    ("rpn_without_positive", [[40.0, 30.0, 43.0, 33.0]], {}, "rpn"),
    # no positive quota: the box stages (and the mask branches and relays they feed) see only negatives
    ("stages_without_positive", [[16.0, 8.0, 80.0, 56.0]], dict(rcnn_positive_fraction=0.0), "stages"),
    ("no_object", [], {}, "all"),
]


@pytest.mark.parametrize("case,boxes,flags,edge", EDGES, ids=[e[0] for e in EDGES])
@pytest.mark.parametrize("arch,arch_flags", ARCHS, ids=[a[0] for a in ARCHS])
def test_every_trainable_parameter_gets_a_gradient(arch, arch_flags, case, boxes, flags, edge):
    torch.manual_seed(0)
    preset = ("cascade_mask_rcnn" if arch == "cascade_fr" else arch) + "_r18_smoke"
    model = scnet.build_model(preset, num_classes=3, num_semantic_classes=4, **arch_flags, **flags).train()
    losses = model([torch.rand(3, HEIGHT, WIDTH) * 255], [_target(boxes)])
    sum(losses.values()).backward()

    samples = model.last_step.samples
    positives = {name: sum(call["pos"] for call in calls) for name, calls in samples.items()}
    assert (positives["rpn"] == 0) == (edge in ("rpn", "all"))
    stage_positives = sum(n for name, n in positives.items() if name != "rpn")
    assert (stage_positives == 0) == (edge in ("stages", "all"))
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []
    assert all(torch.isfinite(v) for v in losses.values())
