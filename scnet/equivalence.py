"""Tools for checking that our presets reproduce MMDetection 3.3.0: the deterministic reference weights
of shared/reference/README.md, and the rule that decides whether two sets of detections are the same."""
from __future__ import annotations

import json
import math
import zlib
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from pycocotools import mask as mask_utils


def reference_weights(manifest: dict[str, list]) -> dict[str, torch.Tensor]:
    """Tensors under MMDetection's names, each from a generator seeded with crc32 of its name."""
    state = {}
    for name, (shape, dtype) in manifest.items():
        g = torch.Generator().manual_seed(zlib.crc32(name.encode()))
        if dtype != "float32":
            state[name] = torch.zeros(shape, dtype=getattr(torch, dtype))
        elif name.endswith("running_var"):
            state[name] = 0.5 + torch.rand(shape, generator=g)
        elif name.endswith("running_mean"):
            state[name] = 0.1 * torch.randn(shape, generator=g)
        elif len(shape) >= 2:
            state[name] = torch.randn(shape, generator=g) * (1 / math.prod(shape[1:])) ** 0.5
        elif name.endswith("bias"):
            state[name] = 0.01 * torch.randn(shape, generator=g)
        else:
            state[name] = 1 + 0.1 * torch.randn(shape, generator=g)
    return state


def write_reference_checkpoint(manifest_path: str | Path, out: str | Path) -> Path:
    """An MMDetection-style checkpoint file ({"state_dict", "meta"}) with the reference weights."""
    manifest = json.loads(Path(manifest_path).read_text())
    torch.save({"state_dict": reference_weights(manifest["keys"]),
                "meta": {"source": manifest.get("source"), "note": "deterministic reference weights"}}, out)
    return Path(out)


def box_iou_xyxy(a: np.ndarray, b: np.ndarray) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


MIN_SCORE = 0.05       # reference detections below this score are not checked
SCORE_TOLERANCE = 0.01
BOX_IOU = 0.98
CORNER_TOLERANCE_PX = 1.0
MASK_IOU = 0.95
MIN_MASK_BOX_SIDE = 3.0  # masks of boxes with a side under 3 px are not compared


def _boxes_match(a: np.ndarray, b: np.ndarray) -> bool:
    """IoU >= 0.98, or all four corners within 1 px (which also covers degenerate boxes)."""
    return bool(np.all(np.abs(a - b) <= CORNER_TOLERANCE_PX)) or box_iou_xyxy(a, b) >= BOX_IOU


def _dilate(mask: np.ndarray) -> np.ndarray:
    return cv2.dilate(mask.astype(np.uint8), np.ones((3, 3), dtype=np.uint8)).astype(bool)


def _masks_match(a: np.ndarray, b: np.ndarray) -> bool:
    """IoU >= 0.95, or at most max(2, 2% of the union) pixels of either mask outside the other dilated 3x3.

    The second clause admits thin and tiny masks whose boundary pixels flip when a box moves by a
    hundredth of a pixel (summation order: threads, the CPU's vector width), and nothing more.
    """
    a, b = a.astype(bool), b.astype(bool)
    union = int(np.logical_or(a, b).sum())
    if union == 0:
        return True
    if np.logical_and(a, b).sum() / union >= MASK_IOU:
        return True
    allowed = max(2.0, 0.02 * union)
    return (int(np.logical_and(a, ~_dilate(b)).sum()) <= allowed
            and int(np.logical_and(b, ~_dilate(a)).sum()) <= allowed)


def _mask_compared(box: np.ndarray) -> bool:
    return min(box[2] - box[0], box[3] - box[1]) >= MIN_MASK_BOX_SIDE


@dataclass
class MatchReport:
    matched: int
    total: int
    unmatched: list[int]

    @property
    def all_matched(self) -> bool:
        return self.matched == self.total


def match_detections(reference: dict, ours: dict, *, min_score: float = MIN_SCORE) -> MatchReport:
    """The matching rule of shared/reference/README.md: every reference detection with score >=
    min_score needs one of ours with the same label, score within 0.01, the same box (IoU >= 0.98 or
    corners within 1 px) and, unless the reference box has a side under 3 px, the same mask (IoU >=
    0.95, or 1-px boundary flips only: see `_masks_match`)."""
    ref_boxes = np.asarray(reference["bboxes_xyxy"], dtype=np.float64)
    ref_scores = np.asarray(reference["scores"], dtype=np.float64)
    ref_labels = np.asarray(reference["labels"])
    ref_masks = [mask_utils.decode(r).astype(bool) for r in reference["masks_rle"]]
    our_boxes = ours["boxes"].double().numpy()
    our_scores = ours["scores"].double().numpy()
    our_labels = ours["labels"].numpy()
    our_masks = ours["masks"].numpy()
    matched, unmatched, total = 0, [], 0
    for i in np.nonzero(ref_scores >= min_score)[0]:
        total += 1
        candidates = np.nonzero((our_labels == ref_labels[i])
                                & (np.abs(our_scores - ref_scores[i]) <= SCORE_TOLERANCE))[0]
        compare_mask = _mask_compared(ref_boxes[i])
        if any(_boxes_match(ref_boxes[i], our_boxes[j])
               and (not compare_mask or _masks_match(ref_masks[i], our_masks[j])) for j in candidates):
            matched += 1
        else:
            unmatched.append(int(i))
    return MatchReport(matched, total, unmatched)


def as_reference(detections: dict) -> dict:
    """Our detections (tensors, as the model returns them) in the reference's form, so that two of
    our own runs (two devices, two kernel sets) can be compared with `match_detections`."""
    masks = detections["masks"].cpu().numpy().astype(np.uint8)
    return {"bboxes_xyxy": detections["boxes"].cpu().double().tolist(),
            "scores": detections["scores"].cpu().double().tolist(),
            "labels": detections["labels"].cpu().tolist(),
            "masks_rle": [mask_utils.encode(np.asfortranarray(mask)) for mask in masks]}
