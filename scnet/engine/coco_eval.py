"""COCO-format detections, pycocotools box/mask AP, and detection-to-ground-truth IoUs for Figure 1.

Detections are kept in COCO results format (`image_id`, `category_id`, `bbox` xywh in original
image pixels, `score`, `segmentation` RLE with a str `counts`), which is what pycocotools' `loadRes`
reads and what `detections.json` holds.
"""
from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torchvision.ops import box_iou

from scnet.records.files import atomic_write
from scnet.records.result import METRIC_KINDS, METRIC_NAMES, coco_stats_to_metrics
from scnet.records.run_dir import RunDir

# Above this many detections the file is gzipped (about 25 MB of JSON with masks).
GZIP_ABOVE = 50_000


def detections_to_coco(detection: dict[str, torch.Tensor], image_id: int,
                       label_to_category_id: Sequence[int]) -> list[dict[str, Any]]:
    """One image's model output (boxes xyxy at original size, 0-based labels) as COCO results."""
    boxes = detection["boxes"].detach().float().cpu()
    scores = detection["scores"].detach().float().cpu().tolist()
    labels = detection["labels"].detach().cpu().tolist()
    masks = detection.get("masks")
    rles: list[dict[str, Any]] | None = None
    if masks is not None and len(labels):
        planes = np.asfortranarray(masks.detach().cpu().numpy().astype(np.uint8).transpose(1, 2, 0))
        rles = mask_utils.encode(planes)
    xywh = boxes.clone()
    xywh[:, 2:] = boxes[:, 2:] - boxes[:, :2]
    results = []
    for k, (box, score, label) in enumerate(zip(xywh.tolist(), scores, labels)):
        if not 0 <= label < len(label_to_category_id):
            raise ValueError(f"model returned label {label} but the dataset has "
                             f"{len(label_to_category_id)} classes (num_classes mismatch?)")
        row: dict[str, Any] = {"image_id": int(image_id), "category_id": int(label_to_category_id[label]),
                               "bbox": [round(v, 3) for v in box], "score": round(float(score), 5)}
        if rles is not None:
            rle = rles[k]
            row["segmentation"] = {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}
        results.append(row)
    return results


def _xywh_to_xyxy(boxes: np.ndarray) -> torch.Tensor:
    out = torch.as_tensor(boxes, dtype=torch.float64).reshape(-1, 4).clone()
    out[:, 2:] += out[:, :2]
    return out


def best_match_ious(results: Sequence[dict[str, Any]], coco_gt: COCO, image_id: int) -> np.ndarray:
    """For each detection of one image, its box IoU with the best-matching ground truth *of the same class*.

    Same-class matching is the inference counterpart of training, where a mask sample's IoU is taken
    with the ground truth it is assigned to, whose class it learns; a detection of the wrong class
    gets 0 unless a same-class object overlaps it. Crowd regions are ignored.
    """
    if not results:
        return np.zeros(0, dtype=np.float64)
    anns = coco_gt.loadAnns(coco_gt.getAnnIds(imgIds=[image_id], iscrowd=False))
    ious = np.zeros(len(results), dtype=np.float64)
    if not anns:
        return ious
    gt_boxes = _xywh_to_xyxy(np.array([a["bbox"] for a in anns], dtype=np.float64))
    gt_cats = np.array([a["category_id"] for a in anns])
    det_boxes = _xywh_to_xyxy(np.array([r["bbox"] for r in results], dtype=np.float64))
    det_cats = np.array([r["category_id"] for r in results])
    overlap = box_iou(det_boxes, gt_boxes).numpy()
    overlap[det_cats[:, None] != gt_cats[None, :]] = 0.0
    return np.clip(overlap.max(axis=1), 0.0, 1.0)


def _empty_metrics() -> dict[str, float | None]:
    return {name: 0.0 for name in METRIC_NAMES}


def coco_metrics(coco_gt: COCO, results: list[dict[str, Any]], image_ids: Sequence[int]
                 ) -> tuple[dict[str, dict[str, float | None]], str]:
    """Box and mask AP/AP50/AP75/APS/APM/APL in percent over `image_ids`, plus pycocotools' printout.

    With no detections at all every AP is 0 (pycocotools cannot load an empty result list).
    """
    metrics: dict[str, dict[str, float | None]] = {}
    report = io.StringIO()
    for kind in METRIC_KINDS:
        if kind == "bbox":
            usable = [dict(r) for r in results]
        else:
            # Without 'bbox', pycocotools takes a detection's area from its mask, so APS/APM/APL of
            # masks bin by mask area (as MMDetection >= 2.12 does); overall AP is unaffected.
            usable = [{k: v for k, v in r.items() if k != "bbox"} for r in results if "segmentation" in r]
        if not usable:
            metrics[kind] = _empty_metrics()
            report.write(f"{kind}: no detections\n")
            continue
        with contextlib.redirect_stdout(report):
            coco_dt = coco_gt.loadRes(usable)
            evaluator = COCOeval(coco_gt, coco_dt, iouType=kind)
            evaluator.params.imgIds = sorted(int(i) for i in image_ids)
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
        metrics[kind] = coco_stats_to_metrics(evaluator.stats)
        # A class with no ground truth in the evaluated images gives -1 -> None; with ground truth but
        # no detection pycocotools gives 0, so None here only means "no objects of that size".
    return metrics, report.getvalue()


def _detection_files(run_dir: str | os.PathLike) -> tuple[Path, Path]:
    plain = RunDir(run_dir).detections_file
    return plain, plain.with_name(plain.name + ".gz")


def write_detections(run_dir: str | os.PathLike, results: list[dict[str, Any]]) -> Path:
    """RUN_DIR/detections.json, or detections.json.gz when large; the other name is removed."""
    data = json.dumps(results, separators=(",", ":")).encode("utf-8")
    plain, packed = _detection_files(run_dir)
    if len(results) > GZIP_ABOVE:
        path = atomic_write(packed, lambda h: h.write(gzip.compress(data, compresslevel=6, mtime=0)))
        stale = plain
    else:
        path = atomic_write(plain, lambda h: h.write(data))
        stale = packed
    if stale.exists():
        stale.unlink()
    return path


def read_detections(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    plain, packed = _detection_files(run_dir)
    if packed.exists():
        return json.loads(gzip.decompress(packed.read_bytes()))
    return json.loads(plain.read_text(encoding="utf-8"))
