"""The pieces of MMDetection's training step that the coffee oracle exercises only on one image size:
anchors that take part in the RPN loss, assignment before the ground truths are appended, the
semantic loss's average, and the samplers' sizes and order."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import scnet

from scnet.models.anchors import RATIOS
from scnet.models.rpn import RPN
from scnet.models.sampling import TAKE_ALL, Assignment, sample, valid_first_ascending
from scnet.models.semantic_head import SemanticHead
from scnet.models.step_record import SamplingContext
from scnet.models.targets import StageSampler

STRIDES_USED = (4, 8, 16, 32, 64)


def _anchors(feature_sizes):
    return RPN.anchors([torch.zeros(1, 1, h, w) for h, w in feature_sizes])


def test_rpn_anchors_stop_at_the_image_own_padding_and_border():
    # batch padded to 128 x 96 (h x w) for a larger image; this image is 100 x 60 -> its own pad 128 x 64
    feature_sizes = [(-(-128 // s), -(-96 // s)) for s in STRIDES_USED]
    anchors = _anchors(feature_sizes)
    every = RPN.trainable_anchors(anchors, feature_sizes, (100, 60), allowed_border=-1, size_divisor=32)
    level0 = every[: feature_sizes[0][0] * feature_sizes[0][1] * len(RATIOS)].view(32, 24, len(RATIOS))
    assert level0[:, :16].all() and not level0[:, 16:].any()  # columns beyond 64 px (the image's pad) drop
    inside = RPN.trainable_anchors(anchors, feature_sizes, (100, 60), allowed_border=0, size_divisor=32)
    boxes = torch.cat(anchors)[inside]
    assert inside.sum() < every.sum()
    assert bool((boxes[:, :2] >= 0).all() and (boxes[:, 2] < 60).all() and (boxes[:, 3] < 100).all())
    wider = RPN.trainable_anchors(anchors, feature_sizes, (100, 60), allowed_border=8, size_divisor=32)
    assert bool((wider | ~inside).all()) and wider.sum() > inside.sum()


@pytest.mark.parametrize("border", [-1, 0, 8])
def test_the_host_side_check_for_trainable_anchors_agrees_with_the_mask(border):
    """The RPN refuses an image without a trainable anchor from host arithmetic alone (no device read)."""
    feature_sizes = [(-(-64 // s), -(-96 // s)) for s in STRIDES_USED]
    anchors = _anchors(feature_sizes)
    sizes = [(h, w) for h in (8, 20, 31, 32, 33, 40, 64) for w in (8, 23, 32, 33, 45, 46, 47, 96)]
    answers = set()
    for hw in sizes:
        mask = RPN.trainable_anchors(anchors, feature_sizes, hw, allowed_border=border, size_divisor=32)
        answer = RPN.any_trainable_anchor(feature_sizes, hw, allowed_border=border, size_divisor=32)
        assert answer == bool(mask.any()), hw
        answers.add(answer)
    assert answers == ({True} if border < 0 else {True, False})  # tiny images have none inside


def test_box_assigner_sees_the_proposals_before_the_ground_truths_are_appended():
    gts = torch.tensor([[0.0, 0.0, 100.0, 100.0], [50.0, 0.0, 150.0, 100.0]])
    # p0: IoU 0.54 with gt0, 0.67 with gt1 (max-IoU: gt1) and gt0's best proposal; p1: gt1's best (IoU 1)
    props = torch.tensor([[30.0, 0.0, 130.0, 100.0], [50.0, 0.0, 150.0, 100.0]])
    labels = torch.tensor([3, 7])

    def positives(low_quality):
        sampling = SamplingContext(take_all=True)
        sampler = StageSampler(name="stage0", iou_thr=0.5, low_quality=low_quality, num=512, pos_fraction=0.25,
                               stds=(0.1, 0.1, 0.2, 0.2), num_classes=10)
        samples = sampler([props], [gts], [labels], sampling)
        assert sampling.record.samples == {"stage0": [{"pos": 4, "neg": 0}]}
        rois = samples.positive_rois[:, 1:]
        return {tuple(r.tolist()): int(lbl) for r, lbl in zip(rois, samples.positive_labels)}

    # the ground truths come first, assigned to themselves
    assert list(positives(False).values())[:2] == [3, 7]
    assert positives(False)[tuple(props[0].tolist())] == 7   # plain max-IoU: gt1
    assert positives(True)[tuple(props[0].tolist())] == 3    # gt0's best proposal (with the GT boxes among
    # the candidates, gt0's best would have been its own box and p0 would have stayed with gt1)


def test_semantic_loss_averages_over_every_pixel():
    torch.manual_seed(0)
    logits = torch.randn(1, 5, 4, 6)
    target = torch.randint(0, 5, (1, 32, 48))
    target[:, :, :24] = 255  # half the map ignored (at stride 8: the left three columns)
    loss = SemanticHead.loss(logits, target)
    small = target[:, ::8, ::8]
    labelled = F.cross_entropy(logits, small, ignore_index=255)  # mean over labelled pixels
    assert torch.isclose(loss, labelled * 0.5)


def test_samplers_take_every_candidate_or_the_configured_number_in_index_order():
    gt_index = torch.tensor([0, 1, 0, 2, 0, 0, 1, -1, 0, 1] * 50)
    assignment = Assignment(gt_index, torch.rand(gt_index.numel()))
    everything = sample(assignment, num=TAKE_ALL, pos_fraction=0.25)
    for slots, valid, member in ((everything.pos_slots, everything.pos_valid, gt_index > 0),
                                 (everything.neg_slots, everything.neg_valid, gt_index == 0)):
        assert torch.equal(valid_first_ascending(slots, valid)[:int(valid.sum())], torch.nonzero(member).flatten())
    drawn = sample(assignment, num=64, pos_fraction=0.25, generator=torch.Generator().manual_seed(0))
    assert int(drawn.num_pos) == 16 and int(drawn.num_neg) == 48
    for slots, valid, member in ((drawn.pos_slots, drawn.pos_valid, gt_index > 0),
                                 (drawn.neg_slots, drawn.neg_valid, gt_index == 0)):
        assert bool(valid[:int(valid.sum())].all())  # the valid slots come first
        taken = slots[valid]
        assert taken.unique().numel() == taken.numel() and bool(member[taken].all())
        index = valid_first_ascending(slots, valid)[:int(valid.sum())]
        assert torch.equal(index, taken.sort().values)  # MMDetection's unique() leaves them sorted


@pytest.mark.parametrize("arch", ["mask_rcnn", "cascade_mask_rcnn", "htc", "scnet"])
def test_an_image_without_instances_trains_on_background(arch):
    """The pipeline keeps training images whose annotations were all ignored (MMDetection does too)."""
    torch.manual_seed(0)
    model = scnet.build_model(f"{arch}_r18_smoke", num_classes=3, num_semantic_classes=4).train()
    target = dict(boxes=torch.zeros(0, 4), labels=torch.zeros(0, dtype=torch.long),
                  masks=torch.zeros(0, 64, 96, dtype=torch.uint8), semantic_seg=torch.zeros(64, 96, dtype=torch.long))
    losses = model([torch.rand(3, 64, 96) * 255], [target])
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["rpn_cls"] > 0 and losses["stage0_cls"] > 0
    sum(losses.values()).backward()
    assert all(s["pos"] == 0 for calls in model.last_step.samples.values() for s in calls)
