"""How far float32 detections move when only the CPU kernels change: the measured basis of
gpu_check.py's CUDA-versus-CPU tolerance (not a test).

    python benchmarks/kernel_spread.py [--presets mask_rcnn_r50 ...] [--out /tmp/kernel-spread]

Each variant runs in its own process (the kernel choice is read when torch loads), with the
deterministic reference weights on the reference photo (1200x800, 100 detections), exactly as
gpu_check.py's CUDA-versus-CPU row does. Every variant is then compared with this CPU's default
kernels by `scnet.equivalence.match_detections`, in both directions (each side's detections that
find a partner on the other), and with MMDetection's outputs. The variants change the order of
float32 sums (vector width, blocking, threads, another convolution algorithm), which is all that
separates two correct devices' float32 results; a GPU's kernels (cuDNN's implicit GEMM, Winograd,
FFT) differ from the CPU's at least as much, so the tolerance is this spread plus a margin.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

PRESETS = ("mask_rcnn_r50", "cascade_mask_rcnn_r50", "htc_r50", "scnet_r50")
# name -> (environment, threads, oneDNN convolutions)
VARIANTS: dict[str, tuple[dict[str, str], int, bool]] = {
    "default": ({}, 2, True),
    "1 thread": ({}, 1, True),
    "DNNL_MAX_CPU_ISA=SSE41": ({"DNNL_MAX_CPU_ISA": "SSE41"}, 2, True),
    "ATEN_CPU_CAPABILITY=default": ({"ATEN_CPU_CAPABILITY": "default"}, 2, True),
    "no oneDNN (im2col + BLAS)": ({}, 2, False),
}


def _file_name(variant: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in variant)


def run_variant(variant: str, presets: list[str], out: Path, reference: Path) -> None:
    """In the variant's own process: every preset's detections, saved for the comparison."""
    import torch

    from inference_speed import _reference_model_and_image

    _env, threads, onednn = VARIANTS[variant]
    torch.set_num_threads(threads)
    for preset in presets:
        model, image, meta = _reference_model_and_image(preset, "cpu", reference)
        with torch.inference_mode(), torch.backends.mkldnn.flags(enabled=onednn):
            detections = model([image], image_metas=[meta])[0]
        torch.save({k: v.cpu() for k, v in detections.items()}, out / f"{_file_name(variant)}.{preset}.pt")
        print(f"{variant}: {preset} {int(detections['scores'].numel())} detections", flush=True)


def drift(base: dict, ours: dict) -> tuple[float, float]:
    """How far the detections moved: the largest score change and the largest 1 - box IoU between each
    of `base`'s detections and its nearest same-label one in `ours` (nearest by 1 - IoU + score change;
    the rule allows 0.01 and 0.02)."""
    import torch
    from torchvision.ops import box_iou

    score, box = 0.0, 0.0
    ious = box_iou(base["boxes"].double(), ours["boxes"].double())
    # a degenerate (zero-area) box has no IoU: count corners within a hundredth of a pixel as the same box
    same_box = (base["boxes"][:, None, :] - ours["boxes"][None, :, :]).abs().amax(-1) <= 0.01
    ious = torch.where(same_box, torch.ones_like(ious), ious.nan_to_num(0.0))
    for i in range(len(base["scores"])):
        same = (ours["labels"] == base["labels"][i]).nonzero().flatten()
        if len(same) == 0:
            return float("inf"), float("inf")
        cost = (1.0 - ious[i, same]) + (ours["scores"][same].double() - float(base["scores"][i])).abs()
        j = same[cost.argmin()]
        score = max(score, float((ours["scores"][j] - base["scores"][i]).abs()))
        box = max(box, 1.0 - float(ious[i, j]))
    return score, box


def compare(presets: list[str], out: Path, reference: Path) -> int:
    """Print the table; return the largest number of unmatched detections between two variants."""
    import json

    import torch

    from scnet.equivalence import as_reference, match_detections

    worst = 0
    print("| preset | variant | vs default kernels (both ways) | largest score change, 1 - box IoU | "
          "vs MMDetection 3.3.0 |")
    print("|---|---|---|---|---|")
    for preset in presets:
        base = torch.load(out / f"{_file_name('default')}.{preset}.pt")
        oracle = json.loads((reference / "oracle" / f"{preset}.coffee.mmdet_outputs.json").read_text())
        for variant in VARIANTS:
            ours = torch.load(out / f"{_file_name(variant)}.{preset}.pt")
            forward = match_detections(as_reference(base), ours)
            backward = match_detections(as_reference(ours), base)
            mmdet = match_detections(oracle["detections"], ours)
            worst = max(worst, forward.total - forward.matched, backward.total - backward.matched)
            score, box = drift(base, ours)
            print(f"| {preset} | {variant} | {forward.matched}/{forward.total}, {backward.matched}/{backward.total} "
                  f"| {score:.1e}, {box:.1e} | {mmdet.matched}/{mmdet.total} |", flush=True)
    return worst


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=list(PRESETS), choices=PRESETS)
    parser.add_argument("--out", type=Path, default=Path("/tmp/kernel-spread"))
    parser.add_argument("--reference", type=Path, default=HERE.parents[1] / "shared" / "reference")
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)  # the per-variant process
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.variant:
        run_variant(args.variant, args.presets, args.out, args.reference)
        return 0
    for variant, (env, threads, _onednn) in VARIANTS.items():
        if all((args.out / f"{_file_name(variant)}.{p}.pt").exists() for p in args.presets):
            continue  # kept from an earlier call with the same --out
        subprocess.run([sys.executable, __file__, "--variant", variant, "--out", str(args.out),
                        "--reference", str(args.reference), "--presets", *args.presets],
                       env={**os.environ, **env, "OMP_NUM_THREADS": str(threads)}, check=True)
    worst = compare(args.presets, args.out, args.reference)
    print(f"\nlargest number of unmatched detections between two kernel variants: {worst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
