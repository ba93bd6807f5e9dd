"""Host synchronisation points per training step and per inference image, by op and by source line.

    python benchmarks/sync_points.py [--presets scnet_r50 ...] [--objects 7 50] [--lines] [--json OUT]

Training: one forward and backward of a preset (random weights, the random sampler) on 2 random
1333x800 images (--size) with N filled-rectangle objects each (benchmarks/train_speed.py's batch), for each N
of --objects. Inference: the coffee photo with the deterministic reference weights
(shared/reference; random weights on a random image when it is absent), 100 detections, batch 1.
Counted by `scnet.sync_points.count_sync_points` on the CPU, after a small uncounted inference that
makes the per-device constants (anchors, coder stds); masks are pasted by the GPU's batched
path (`paste_masks_batched`, one host read per image) rather than the CPU's box-by-box one, and NMS
is never split by group (the CPU splits above 10,000 boxes), so the
figures are those of a GPU step. With CUDA present the same runs are repeated on the GPU under
`torch.cuda.set_sync_debug_mode("warn")`, whose warnings are counted too (`--device cuda` alone).
Not a test: tests/test_sync_points.py holds the smoke presets to the budget.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import warnings
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch

from scnet import build_model
from scnet.checkpoints import load_weights
from scnet.data.pipeline import test_input
from scnet.equivalence import write_reference_checkpoint
from scnet.image_io import read_bgr
from scnet.sync_points import SyncPoints, count_sync_points, gpu_paths
from train_speed import random_batch

REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "reference"
PRESETS = ("mask_rcnn_r50", "cascade_mask_rcnn_r50", "htc_r50", "scnet_r50")


@contextmanager
def cuda_sync_warnings(device: torch.device) -> Iterator[Counter]:
    """Counts `set_sync_debug_mode("warn")`'s warnings by source line (CUDA only; empty elsewhere)."""
    seen: Counter = Counter()
    if device.type != "cuda":
        yield seen
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            yield seen
        finally:
            torch.cuda.synchronize(device)
            torch.cuda.set_sync_debug_mode("default")
    for w in caught:
        if "synchronizing" in str(w.message):
            seen[f"{w.filename}:{w.lineno}"] += 1


def warm_up(model: torch.nn.Module, device: torch.device) -> None:
    """One small uncounted inference: the constants made once per device (anchors, coder stds) are
    made here, not in the step counted."""
    with torch.no_grad():
        model.eval()([torch.rand(3, 128, 128, device=device) * 255])


def training_step(preset: str, objects: int, device: torch.device, size: tuple[int, int]) -> tuple[SyncPoints, Counter]:
    torch.manual_seed(0)
    model = build_model(preset).to(device)
    warm_up(model, device)
    model.train()
    images, targets = random_batch(2, *size, num_classes=80, semantic=model.config.semantic, seed=objects,
                                   objects=objects)
    images = [i.to(device) for i in images]
    targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
    torch.manual_seed(0)
    with cuda_sync_warnings(device) as cuda_points, count_sync_points() as points:
        losses = model(images, targets)
        sum(losses.values()).backward()
    return points, cuda_points


def inference_image(preset: str, device: torch.device) -> tuple[SyncPoints, Counter, int]:
    torch.manual_seed(0)
    model = build_model(preset).eval()
    manifest = REFERENCE / f"{preset}.state_dict.json"
    if manifest.exists():
        with tempfile.TemporaryDirectory() as tmp:
            load_weights(model, write_reference_checkpoint(manifest, Path(tmp) / "w.pth"))
        image, meta = test_input(read_bgr(REFERENCE / "oracle" / "coffee_1200x800.png"))
    else:
        image, meta = torch.rand(3, 800, 1216) * 255, None
    model.to(device)
    warm_up(model, device)
    image = image.to(device)
    with torch.inference_mode():
        with gpu_paths(), cuda_sync_warnings(device) as cuda_points, count_sync_points() as points:
            out = model([image], image_metas=None if meta is None else [meta])[0]
    return points, cuda_points, int(out["scores"].numel())


def _kinds(points: SyncPoints) -> str:
    return ", ".join(f"{n} {kind}" for kind, n in sorted(points.by_kind().items(), key=lambda kv: -kv[1]))


def _report(label: str, points: SyncPoints, cuda_points: Counter, lines: bool) -> dict:
    cuda = f"; CUDA sync debug: {sum(cuda_points.values())}" if cuda_points else ""
    print(f"  {label:22s} {points.total:4d}  ({_kinds(points)}){cuda}", flush=True)
    if lines:
        for where, n in points.by_line().items():
            print(f"      {n:4d}  {where}")
        for where, n in cuda_points.most_common():
            print(f"      {n:4d}  {where} (CUDA)")
    return {"total": points.total, "by_kind": points.by_kind(), "by_line": points.by_line(),
            "cuda_sync_debug": dict(cuda_points)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=list(PRESETS))
    parser.add_argument("--objects", type=int, nargs="+", default=[7, 50], help="objects per training image")
    parser.add_argument("--size", type=int, nargs=2, default=(1333, 800), metavar=("WIDTH", "HEIGHT"),
                        help="training image size")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="auto: CPU, and CUDA too when present")
    parser.add_argument("--no-inference", action="store_true")
    parser.add_argument("--lines", action="store_true", help="also list the points by source line")
    parser.add_argument("--json", type=Path, help="write every count here")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available on this machine")
    devices = [torch.device("cpu")] if args.device in ("auto", "cpu") else []
    if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()):
        devices.append(torch.device("cuda", 0))
    results: dict = {}
    for device in devices:
        print(f"sync points on {device} (torch {torch.__version__}), training at 2 x {args.size[0]}x{args.size[1]}:")
        for preset in args.presets:
            print(preset)
            row = results.setdefault(str(device), {}).setdefault(preset, {})
            for objects in args.objects:
                points, cuda_points = training_step(preset, objects, device, tuple(args.size))
                row[f"train_{objects}"] = _report(f"train, {objects} objects", points, cuda_points, args.lines)
            if not args.no_inference:
                points, cuda_points, detections = inference_image(preset, device)
                row["inference"] = _report(f"inference ({detections} dets)", points, cuda_points, args.lines)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
