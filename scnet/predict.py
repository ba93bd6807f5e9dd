"""`python -m scnet.predict`: run one preset on one image and write COCO-format detections.

    python -m scnet.predict --preset scnet_r50 --checkpoint scnet_r50_fpn_1x_coco.pth \
        --image photo.jpg --score-thr 0.001 --out dets.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from pycocotools import mask as mask_utils

from scnet.checkpoints.loading import FORMATS, CheckpointError, load_checkpoint
from scnet.coco_ids import COCO_CATEGORY_IDS
from scnet.config import ConfigError
from scnet.cpu_memory import keep_freed_memory
from scnet.data.pipeline import test_input
from scnet.image_io import ImageError, read_bgr
from scnet.presets import resolve_config


def detections_to_coco(detections: dict, image_id: int | str, category_ids: tuple[int, ...] | None) -> list[dict]:
    """COCO results records: bbox as x, y, w, h; RLE segmentation; both the COCO id and our 0-based label."""
    records = []
    masks = detections["masks"].cpu().numpy()
    for i, (box, score, label) in enumerate(zip(detections["boxes"].tolist(), detections["scores"].tolist(),
                                                detections["labels"].tolist())):
        rle = mask_utils.encode(np.asfortranarray(masks[i].astype(np.uint8)))
        rle["counts"] = rle["counts"].decode("ascii")
        records.append({
            "image_id": image_id,
            "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]],
            "score": score,
            "category_id": category_ids[label] if category_ids and label < len(category_ids) else label,
            "label": label,
            "segmentation": rle,
        })
    return records


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m scnet.predict", description=__doc__.splitlines()[0])
    parser.add_argument("--preset", required=True, help="e.g. scnet_r50, htc_r50, cascade_mask_rcnn_r50")
    parser.add_argument("--checkpoint", required=True, help="MMDetection checkpoint or one of ours")
    parser.add_argument("--checkpoint-format", default="auto", choices=FORMATS)
    parser.add_argument("--image", required=True)
    parser.add_argument("--out", required=True, help="output JSON (COCO results format)")
    parser.add_argument("--score-thr", type=float, default=0.001)
    parser.add_argument("--num-classes", type=int, default=80)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    keep_freed_memory()  # large tensors reuse memory instead of page-faulting (scnet.cpu_memory)
    try:
        cfg = resolve_config(args.preset, num_classes=args.num_classes, test_score_thr=args.score_thr)
        image = read_bgr(args.image)
        from scnet.models.detector import Detector

        model = Detector(cfg)
        load_checkpoint(model, args.checkpoint, format=args.checkpoint_format, preset_name=args.preset)
    except (ConfigError, ImageError, CheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    model.eval().to(args.device)
    resized, meta = test_input(image)  # MMDetection's test pipeline (scnet.data.pipeline)
    started = time.perf_counter()
    with torch.inference_mode():
        detections = model([resized.to(args.device)], image_metas=[meta])[0]
    elapsed = time.perf_counter() - started
    category_ids = COCO_CATEGORY_IDS if args.num_classes == 80 else None
    records = detections_to_coco(detections, Path(args.image).stem, category_ids)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(records))
    tmp.replace(out)
    print(f"{len(records)} detections in {elapsed:.2f} s -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
