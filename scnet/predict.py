"""`python -m scnet.predict`: run one model on one image and write COCO-format detections.

    python -m scnet.predict --preset scnet_r50 --checkpoint scnet_r50_fpn_1x_coco.pth \
        --image photo.jpg --score-thr 0.001 --out dets.json
    python -m scnet.predict --checkpoint runs/x/checkpoints/last.pth --image photo.jpg --out dets.json

Our own checkpoints (a run's checkpoints/last.pth, `scnet.checkpoints.save_weights` files) carry their model config,
so --preset is optional for them; MMDetection checkpoints need --preset. Class counts default to
what the checkpoint's classifier tensors hold.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from pycocotools import mask as mask_utils

from scnet.checkpoints.loading import FORMATS, Weights, build_for_weights, infer_class_counts, read_weights
from scnet.coco_ids import COCO_CATEGORY_IDS
from scnet.config import ConfigError, ModelConfig
from scnet.cpu_memory import keep_freed_memory
from scnet.data.pipeline import test_input
from scnet.engine.cli_args import ArgumentParser, interruptible, device_arg, report_user_error, user_errors
from scnet.image_io import read_bgr
from scnet.presets import resolve_config
from scnet.records.files import write_json_atomic
from scnet.records.run_dir import check_new_output_file


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


def _unit_interval(text: str) -> float:
    """A score threshold: a number in [0, 1] (argparse turns the error into one usage line, exit 2)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number; give a score in [0, 1]") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is outside [0, 1]; scores are probabilities")
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = ArgumentParser(prog="python -m scnet.predict", description=__doc__.splitlines()[0],
                                     epilog="\n".join(__doc__.splitlines()[2:]),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", help="e.g. scnet_r50, htc_r50, cascade_mask_rcnn_r50 (required for "
                                         "MMDetection checkpoints; ours carry their model config)")
    parser.add_argument("--checkpoint", required=True, help="MMDetection checkpoint or one of ours")
    parser.add_argument("--checkpoint-format", default="auto", choices=FORMATS)
    parser.add_argument("--image", required=True)
    parser.add_argument("--out", required=True, help="output JSON (COCO results format); a new file, never in "
                        "a run directory")
    parser.add_argument("--force", action="store_true", help="replace --out if it exists")
    parser.add_argument("--score-thr", type=_unit_interval, default=0.001, help="keep detections scoring at "
                        "least this, in [0, 1] (default 0.001)")
    parser.add_argument("--num-classes", type=int, help="object classes (default: from the checkpoint)")
    parser.add_argument("--num-semantic-classes", type=int,
                        help="semantic-head classes of HTC/SCNet (default: from the checkpoint)")
    parser.add_argument("--device", type=device_arg, default="cuda" if torch.cuda.is_available() else "cpu",
                        help="cpu, cuda or cuda:N (default: cuda if a GPU is visible)")
    return parser.parse_args(argv)


def model_config_for(weights: Weights, args: argparse.Namespace) -> ModelConfig:
    """The network the weights belong to: the config stored in our checkpoints, else --preset with
    the class counts given or read from the classifier shapes."""
    if args.preset:
        resolve_config(args.preset)  # an unknown or misspelt preset is named first
    given = {key: value for key, value in (("num_classes", args.num_classes),
                                           ("num_semantic_classes", args.num_semantic_classes))
             if value is not None}
    for key, value in given.items():
        if value < 1:
            raise ConfigError(f"--{key.replace('_', '-')} {value}: must be >= 1")
    if weights.model_config is not None:
        stored = weights.model_config
        if args.preset and weights.preset and args.preset != weights.preset:
            raise ConfigError(f"checkpoint {weights.path} holds a {weights.preset} model (its config is stored in "
                              f"the file), not {args.preset}; drop --preset")
        for key, value in given.items():
            if getattr(stored, key) != value:
                raise ConfigError(f"checkpoint {weights.path} was trained with {key}={getattr(stored, key)}, not "
                                  f"{value}; drop --{key.replace('_', '-')}")
        return stored.replace(test_score_thr=args.score_thr)
    if not args.preset:
        looks = f" (it looks like --preset {weights.preset})" if weights.preset else ""
        what = "an MMDetection checkpoint" if weights.kind == "mmdet" else "a bare state dict"
        raise ConfigError(f"checkpoint {weights.path} is {what} without a model config; give --preset{looks}")
    counts = {**infer_class_counts(weights.state), **given}
    return resolve_config(args.preset, **counts, test_score_thr=args.score_thr)


@interruptible
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    keep_freed_memory()  # large tensors reuse memory instead of page-faulting (scnet.cpu_memory)
    out = Path(args.out)
    try:
        check_new_output_file(out, "--out", force=args.force)  # before the work, not after it
        image = read_bgr(args.image)
        weights = read_weights(args.checkpoint, format=args.checkpoint_format)
        cfg = model_config_for(weights, args)
        model = build_for_weights(cfg, weights, preset_name=args.preset)  # shapes compared before allocating
        del weights
    except user_errors() as exc:
        return report_user_error(exc)
    model.eval().to(args.device)
    resized, meta = test_input(image)  # MMDetection's test pipeline (scnet.data.pipeline)
    started = time.perf_counter()
    with torch.inference_mode():
        detections = model([resized.to(args.device)], image_metas=[meta])[0]
    elapsed = time.perf_counter() - started
    category_ids = COCO_CATEGORY_IDS if cfg.num_classes == 80 else None
    records = detections_to_coco(detections, Path(args.image).stem, category_ids)
    try:
        write_json_atomic(out, records, overwrite=args.force)
    except user_errors() as exc:
        return report_user_error(exc)
    print(f"{len(records)} detections in {elapsed:.2f} s -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
