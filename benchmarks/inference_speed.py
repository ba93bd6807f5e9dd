"""Seconds per image for each R50 preset at 1200x800 with 100 detections (not a test).

    python benchmarks/inference_speed.py [--presets scnet_r50 htc_r50] [--repeats 3] [--device cpu] [--floor]

Uses the deterministic reference weights (shared/reference) so that every image yields the full 100
detections, as MMDetection does on the same photo; the MMDetection 3.3.0 figures measured on a 2-core
CPU machine are printed beside ours. With --floor it also counts each preset's convolution and
matrix-multiply FLOPs (torch's FlopCounterMode) and divides them by this machine's measured float32
matrix-multiply rate: a time that no implementation doing the same arithmetic beats here, and the
time those conv/FC kernels take as they run (`kernel_time.py`), which only other kernels could beat.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from kernel_time import KernelTime, arithmetic_seconds
from scnet import build_model
from scnet.checkpoints import load_weights
from scnet.cpu_memory import keep_freed_memory
from scnet.equivalence import write_reference_checkpoint
from scnet.data.pipeline import test_input
from scnet.image_io import read_bgr

REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "reference"
MMDET_CPU_SECONDS = {"scnet_r50": "10.4-11.4", "htc_r50": "12.4", "cascade_mask_rcnn_r50": "12.4",
                     "mask_rcnn_r50": "8.1"}


def _reference_model_and_image(preset: str, device: str, reference: Path):
    model = build_model(preset).eval()
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = write_reference_checkpoint(reference / f"{preset}.state_dict.json", Path(tmp) / "w.pth")
        load_weights(model, ckpt)
    model.to(device)
    image, meta = test_input(read_bgr(reference / "oracle" / "coffee_1200x800.png"))
    return model, image.to(device), meta


def matmul_gflops(size: int = 4096, repeats: int = 5) -> float:
    """This machine's float32 matrix-multiply rate: a practical ceiling for convolutions and FCs."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    started = time.perf_counter()
    for _ in range(repeats):
        torch.mm(a, b)
    return 2 * size ** 3 * repeats / (time.perf_counter() - started) / 1e9


def count_gflop(model: torch.nn.Module, image: torch.Tensor, meta: dict) -> float:
    counter = FlopCounterMode(display=False)
    # the counter does not see the direct oneDNN calls of scnet.models.onednn; with oneDNN off every
    # conv takes PyTorch's generic path (slower, the same arithmetic), which it does see
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="TF32 acceleration")  # said on toggling oneDNN flags
        with torch.inference_mode(), torch.backends.mkldnn.flags(enabled=False), counter:
            model([image], image_metas=[meta])
    return counter.get_total_flops() / 1e9


def time_model(model: torch.nn.Module, image: torch.Tensor, meta: dict, device: str,
               repeats: int) -> tuple[float, int]:
    times, count = [], 0
    with torch.inference_mode():
        model([image], image_metas=[meta])  # warm-up
        for _ in range(repeats):
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            started = time.perf_counter()
            out = model([image], image_metas=[meta])[0]
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            times.append(time.perf_counter() - started)
            count = int(out["scores"].numel())
    return statistics.median(times), count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=list(MMDET_CPU_SECONDS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", nargs="+", default=["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    parser.add_argument("--reference", type=Path, default=REFERENCE)
    parser.add_argument("--floor", action="store_true",
                        help="also print each preset's GFLOP and the time they need at this CPU's matmul rate")
    args = parser.parse_args()
    for preset in args.presets:
        manifest = args.reference / f"{preset}.state_dict.json"
        if not manifest.exists():
            parser.error(f"--presets {preset}: no reference weights {manifest}; the presets that have them "
                         f"are those of {args.reference}/*.state_dict.json")
    kept = keep_freed_memory()  # as scnet.predict does
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, freed memory kept: {kept}")
    print(f"{'preset':24s} {'device':6s} {'s/image':>8s} {'dets':>5s}   MMDetection 3.3.0 CPU s/image")
    gflops: dict[str, float] = {}
    seconds_of: dict[str, float] = {}
    kernel_times: dict[str, KernelTime] = {}
    for device in args.device:
        for preset in args.presets:
            model, image, meta = _reference_model_and_image(preset, device, args.reference)
            seconds, count = time_model(model, image, meta, device, args.repeats)
            mm = MMDET_CPU_SECONDS.get(preset, "-") if device == "cpu" else "-"
            print(f"{preset:24s} {device:6s} {seconds:8.2f} {count:5d}   {mm}", flush=True)
            if args.floor and preset not in gflops:
                gflops[preset] = count_gflop(model, image, meta)  # the same arithmetic on any device
            if args.floor and device == "cpu":
                seconds_of[preset] = seconds
                with torch.inference_mode():
                    kernel_times[preset] = arithmetic_seconds(lambda: model([image], image_metas=[meta]))
    if args.floor:
        rate = matmul_gflops()
        print(f"\nfloat32 matmul on this CPU: {rate:.0f} GFLOP/s")
        print(f"{'preset':24s} {'GFLOP':>7s} {'floor s/image':>14s} {'s/image / floor':>16s} "
              f"{'conv/FC kernels s (of a profiled image)':>40s} {'kernels/floor':>14s}")
        for preset, gflop in gflops.items():
            floor = gflop / rate
            print(f"{preset:24s} {gflop:7.0f} {floor:14.2f} "
                  f"{_kernel_cells(seconds_of.get(preset), kernel_times.get(preset), floor)}", flush=True)


def _kernel_cells(seconds: float | None, kernels: KernelTime | None, floor: float) -> str:
    """The floor table's CPU columns; dashes for a preset timed on CUDA only."""
    if seconds is None or kernels is None:
        return f"{'-':>16s} {'-':>40s} {'-':>14s}"
    profiled = f"{kernels.kernel_s:.2f} of {kernels.wall_s:.2f} ({100 * kernels.share:.0f}%)"
    return f"{seconds / floor:16.2f} {profiled:>40s} {kernels.kernel_s / floor:14.2f}"


if __name__ == "__main__":
    main()
