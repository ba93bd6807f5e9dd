"""The assigner and sampler without host reads (scnet.models.sampling) against MMDetection's semantics:
the vectorised low-quality matching equals the per-ground-truth loop of `MaxIoUAssigner`, the `valid`
mask equals assigning the valid candidates alone, and the fixed-size sampler draws what `RandomSampler`
draws (seeded chi-square tests: deterministic, and shown to reject a biased sampler)."""
from __future__ import annotations

import itertools

import pytest
import torch
from scipy.stats import chi2
from torchvision.ops import box_iou

from scnet.models.sampling import Assignment, assign, sample, valid_first_ascending


def _loop_assign(boxes, gts, pos_thr, neg_thr, min_pos):
    """MMDetection 3.3.0's MaxIoUAssigner.assign_wrt_overlaps, line by line (gt_max_assign_all=True)."""
    overlaps = box_iou(gts, boxes)
    max_iou, argmax = overlaps.max(dim=0)
    gt_max, _ = overlaps.max(dim=1)
    out = torch.full((boxes.shape[0],), -1, dtype=torch.long)
    out[(max_iou >= 0) & (max_iou < neg_thr)] = 0
    out[max_iou >= pos_thr] = argmax[max_iou >= pos_thr] + 1
    for g in range(gts.shape[0]):
        if gt_max[g] >= min_pos:
            out[overlaps[g] == gt_max[g]] = g + 1
    return out, max_iou


def _boxes(generator, n, size=100.0):
    xy = torch.rand(n, 2, generator=generator) * size
    wh = torch.rand(n, 2, generator=generator) * size / 2 + 1
    return torch.cat([xy, xy + wh], dim=1)


@pytest.mark.parametrize("seed", range(5))
def test_vectorised_low_quality_matching_is_the_loop(seed):
    g = torch.Generator().manual_seed(seed)
    gts = _boxes(g, 6)
    gts[4] = gts[1]  # two identical ground truths: the later one must win their shared best candidates
    boxes = torch.cat([_boxes(g, 200), gts[:3] + 0.5, gts[:3] + 0.5])  # duplicated candidates: IoU ties
    for pos_thr, neg_thr, min_pos in ((0.5, 0.5, 0.5), (0.7, 0.3, 0.3)):
        expected, expected_iou = _loop_assign(boxes, gts, pos_thr, neg_thr, min_pos)
        got = assign(boxes, gts, pos_thr=pos_thr, neg_thr=neg_thr, min_pos=min_pos, low_quality=True)
        assert torch.equal(got.gt_index, expected) and torch.equal(got.max_iou, expected_iou)
        assert (expected == 5).any()  # the tie case was exercised


def test_valid_mask_is_assigning_the_valid_candidates_alone():
    g = torch.Generator().manual_seed(7)
    gts, boxes = _boxes(g, 4), _boxes(g, 300)
    valid = torch.rand(300, generator=g) < 0.6
    full = assign(boxes, gts, pos_thr=0.7, neg_thr=0.3, min_pos=0.3, low_quality=True, valid=valid)
    alone = assign(boxes[valid], gts, pos_thr=0.7, neg_thr=0.3, min_pos=0.3, low_quality=True)
    assert torch.equal(full.gt_index[valid], alone.gt_index)
    assert bool((full.gt_index[~valid] == -1).all())
    empty = assign(boxes, gts[:0], pos_thr=0.7, neg_thr=0.3, min_pos=0.3, low_quality=True, valid=valid)
    assert torch.equal(empty.gt_index, torch.where(valid, 0, -1))


# 30 candidates: 9 positives, 13 negatives, 8 ignored; a sample of 10 with at most 2 positives
GT_INDEX = torch.tensor([1, 0, -1, 2, 0, 0, 3, -1, 0, 1, 0, 2, -1, 0, 0, 4, -1, 0, 1, -1, 0, 0, 3, -1, 0, 2, 0, -1, 0, -1])
POSITIVES = torch.nonzero(GT_INDEX > 0).flatten().tolist()
NEGATIVES = torch.nonzero(GT_INDEX == 0).flatten().tolist()
NUM_PAIRS = len(POSITIVES) * (len(POSITIVES) - 1) // 2
DRAWS = 6000
PAIRS_LIMIT = chi2.ppf(0.999, NUM_PAIRS - 1)
NEGATIVES_LIMIT = chi2.ppf(0.999, len(NEGATIVES))  # generous: the inclusion counts always sum to 8 x DRAWS


def _draws(sampler, gt_index=GT_INDEX):
    g = torch.Generator().manual_seed(0)
    assignment = Assignment(gt_index, torch.zeros(gt_index.numel()))
    out = []
    for _ in range(DRAWS):
        chosen = sampler(assignment, g)
        out.append((valid_first_ascending(chosen.pos_slots, chosen.pos_valid)[:int(chosen.num_pos)].tolist(),
                    valid_first_ascending(chosen.neg_slots, chosen.neg_valid)[:int(chosen.num_neg)].tolist()))
    return out


def _ours(assignment, generator):
    return sample(assignment, num=10, pos_fraction=0.25, generator=generator)


def _chi2(counts: dict, expected: float) -> float:
    return sum((c - expected) ** 2 / expected for c in counts.values())


def _pair_chi2(draws) -> float:
    pairs = {p: 0 for p in itertools.combinations(POSITIVES, 2)}
    for pos, _ in draws:
        pairs[tuple(pos)] += 1
    return _chi2(pairs, DRAWS / len(pairs))


def _negative_chi2(draws) -> float:
    """Inclusion counts of the negatives against 8 / len(NEGATIVES) each, in binomial standard units."""
    counts = {n: 0 for n in NEGATIVES}
    for _, neg in draws:
        for n in neg:
            counts[n] += 1
    p = 8 / len(NEGATIVES)
    return sum((c - DRAWS * p) ** 2 / (DRAWS * p * (1 - p)) for c in counts.values())


def test_random_sampler_draws_uniform_subsets_of_the_right_sizes():
    """MMDetection's RandomSampler: a uniform subset of min(P, num x pos_fraction) positives, then a uniform
    subset of the negatives filling the sample to num, drawn independently."""
    draws = _draws(_ours)
    for pos, neg in draws:
        assert len(pos) == 2 and len(neg) == 8
        assert set(pos) <= set(POSITIVES) and set(neg) <= set(NEGATIVES)
        assert len(set(pos)) == 2 and len(set(neg)) == 8
        assert pos == sorted(pos) and neg == sorted(neg)
    assert _pair_chi2(draws) < PAIRS_LIMIT
    assert _negative_chi2(draws) < NEGATIVES_LIMIT
    # independence of the two draws: whether the first positive was taken says nothing of the first negative
    both = sum(POSITIVES[0] in pos and NEGATIVES[0] in neg for pos, neg in draws)
    pos_rate = sum(POSITIVES[0] in pos for pos, _ in draws) / DRAWS
    neg_rate = sum(NEGATIVES[0] in neg for _, neg in draws) / DRAWS
    expected = DRAWS * pos_rate * neg_rate
    assert abs(both - expected) < 4 * (expected * (1 - pos_rate * neg_rate)) ** 0.5


def test_the_statistics_reject_a_biased_sampler():
    """The thresholds above have power: a sampler that always takes the first positive (with a random
    other one) and the first eight negatives fails both."""
    def biased(assignment, generator):
        chosen = _ours(assignment, generator)
        other = POSITIVES[1 + int(torch.randint(len(POSITIVES) - 1, (1,), generator=generator))]
        chosen.pos_slots, chosen.pos_valid = torch.tensor([POSITIVES[0], other]), torch.ones(2, dtype=torch.bool)
        chosen.neg_slots, chosen.neg_valid = torch.tensor(NEGATIVES), torch.arange(len(NEGATIVES)) < 8
        return chosen

    draws = _draws(biased)
    assert _pair_chi2(draws) > PAIRS_LIMIT
    assert _negative_chi2(draws) > NEGATIVES_LIMIT


def test_negatives_fill_the_sample_when_positives_are_few_and_all_are_taken_when_few():
    few_pos = GT_INDEX.clone()
    few_pos[POSITIVES[1:]] = -1  # one positive left: 9 negatives
    for pos, neg in _draws(_ours, few_pos)[:200]:
        assert pos == POSITIVES[:1] and len(neg) == 9
    few_neg = GT_INDEX.clone()
    few_neg[NEGATIVES[3:]] = -1  # three negatives: all of them
    for pos, neg in _draws(_ours, few_neg)[:200]:
        assert len(pos) == 2 and neg == NEGATIVES[:3]
