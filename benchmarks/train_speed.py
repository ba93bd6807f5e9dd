"""Seconds per training iteration and peak memory of a preset at an image size, on CPU and CUDA.

    python benchmarks/train_speed.py --preset scnet_r50 --size 1333 800 --batch 2 --iters 10
    python benchmarks/train_speed.py --preset scnet_r18_smoke --size 256 192 --device cpu

Inputs are random images with random rectangular objects (no dataset needed); the step is the
trainer's (forward, one host copy of the logged losses, backward, SGD update through a GradScaler;
AMP on CUDA unless --no-amp). The first `--warmup` iterations are not timed. Peak memory is
`torch.cuda.max_memory_allocated` (and `max_memory_reserved`) on CUDA and the process's peak
resident set size on CPU. Not a test: numbers depend on the machine.

With --floor (CPU) it also counts the step's convolution and matrix-multiply FLOPs, forward and backward
(torch's FlopCounterMode), and divides them by this machine's float32 matrix-multiply rate measured at
the same thread count: the time no implementation doing the same arithmetic beats here. The ratio
s/iter / floor is what is left to win (RoIAlign, normalisation, element-wise ops, Python). It also
profiles one step for the time its conv/FC kernels take as they run (`kernel_time.py`): the part of
the ratio that only other kernels, and so other bits, could win.
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import time
import warnings
from collections import Counter

import torch
from torch.utils.flop_counter import FlopCounterMode

from inference_speed import matmul_gflops
from kernel_time import arithmetic_seconds
from scnet import build_model


def random_batch(batch: int, width: int, height: int, num_classes: int, semantic: bool, seed: int,
                 objects: int = 6) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    """uint8 images with `objects` filled rectangles each, and the matching targets, as the data
    pipeline hands them over (uint8 image and semantic map)."""
    generator = torch.Generator().manual_seed(seed)
    images, targets = [], []
    for _ in range(batch):
        image = torch.rand(3, height, width, generator=generator) * 255
        x1 = torch.rand(objects, generator=generator) * width * 0.7
        y1 = torch.rand(objects, generator=generator) * height * 0.7
        w = (torch.rand(objects, generator=generator) * 0.25 + 0.05) * width
        h = (torch.rand(objects, generator=generator) * 0.25 + 0.05) * height
        boxes = torch.stack([x1, y1, (x1 + w).clamp(max=width), (y1 + h).clamp(max=height)], dim=1)
        labels = torch.randint(0, num_classes, (objects,), generator=generator)
        masks = torch.zeros(objects, height, width, dtype=torch.uint8)
        seg = torch.zeros(height, width, dtype=torch.uint8)
        for k, (a, b, c, d) in enumerate(boxes.round().long().tolist()):
            masks[k, b:d, a:c] = 1
            seg[b:d, a:c] = int(labels[k]) + 1
            image[:, b:d, a:c] = image[:, b:d, a:c] * 0.3 + 80.0 * (int(labels[k]) % 3)
        target = {"boxes": boxes, "labels": labels, "masks": masks}
        if semantic:
            target["semantic_seg"] = seg
        images.append(image.to(torch.uint8))
        targets.append(target)
    return images, targets


def count_step_gflop(model: torch.nn.Module, images: list[torch.Tensor], targets: list[dict]) -> float:
    """Convolution and matrix-multiply GFLOP of one training forward + backward (weights untouched)."""
    counter = FlopCounterMode(display=False)
    with counter:
        sum(model(images, targets).values()).backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / 1e9


# What torch.cuda.set_sync_debug_mode("warn") says at each host-device synchronisation.
SYNC_WARNING = "called a synchronizing CUDA operation"


def count_syncs(step) -> tuple[int, list[tuple[str, int]]]:
    """Run `step()` with CUDA's sync debug mode on: the host-device synchronisations it made, and the
    five source lines that made most of them (file:line, count)."""
    sites: Counter[str] = Counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if torch.cuda.is_available():
            torch.cuda.set_sync_debug_mode("warn")
        try:
            step()
        finally:
            if torch.cuda.is_available():
                torch.cuda.set_sync_debug_mode("default")
    for warning in caught:
        if SYNC_WARNING in str(warning.message):
            sites[f"{warning.filename}:{warning.lineno}"] += 1
    return sum(sites.values()), sites.most_common(5)


def measure(preset: str, device: torch.device, *, width: int, height: int, batch: int, iters: int, warmup: int,
            amp: bool, num_classes: int, syncs: bool = False, floor: bool = False) -> dict[str, object]:
    """Timing, peak memory, every step's losses and the GradScaler's final scale; with `syncs`, also the
    host-device synchronisations of one more (untimed) step; with `floor` (CPU), the step's conv/FC
    GFLOP and the time they take at this machine's float32 matmul rate."""
    torch.manual_seed(0)
    model = build_model(preset, num_classes=num_classes, num_semantic_classes=num_classes + 1).to(device)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.001, momentum=0.9, weight_decay=1e-4)
    use_amp = amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    images, targets = random_batch(batch, width, height, num_classes, model.config.semantic, seed=0)
    images = [i.to(device) for i in images]
    targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    step_losses: list[dict[str, float]] = []

    def step() -> None:
        with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=use_amp):
            losses = model(images, targets)
        total = sum(losses.values())
        # the trainer's one device-to-host copy of the logged losses
        values = torch.stack([v.detach().float() for v in (*losses.values(), total)]).tolist()
        step_losses.append(dict(zip([*losses, "loss"], values)))
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(total).backward()
        scaler.step(optimizer)
        scaler.update()

    times = []
    for index in range(warmup + iters):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if index >= warmup:
            times.append(time.perf_counter() - start)
    sync_count, sync_sites = count_syncs(step) if syncs and device.type == "cuda" else (None, [])
    if device.type == "cuda":
        peak_mb = torch.cuda.max_memory_allocated(device) / 2**20
        reserved_mb = torch.cuda.max_memory_reserved(device) / 2**20
        name = torch.cuda.get_device_name(device)
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        reserved_mb = None
        name = f"cpu ({torch.get_num_threads()} threads)"
    times.sort()
    row: dict[str, object] = {
        "preset": preset, "device": name, "size": [width, height], "batch": batch, "amp": use_amp,
        "iters": iters, "s_per_iter_mean": sum(times) / len(times), "s_per_iter_median": times[len(times) // 2],
        "peak_memory_mb": peak_mb, "peak_reserved_mb": reserved_mb,
        "memory_kind": "cuda allocated" if device.type == "cuda" else "process RSS",
        "losses": list(step_losses), "scaler_scale": float(scaler.get_scale()) if use_amp else None,
        "syncs_per_step": sync_count, "sync_sites": sync_sites}
    if floor:
        gflop = count_step_gflop(model, images, targets)
        rate = matmul_gflops()
        floor_s = gflop / rate
        kernels = arithmetic_seconds(step, repeats=min(iters, 3))
        row.update(step_gflop=gflop, matmul_gflop_per_s=rate, floor_s_per_iter=floor_s,
                   floor_ratio=row["s_per_iter_median"] / floor_s, kernel_s_per_iter=kernels.kernel_s,
                   profiled_s_per_iter=kernels.wall_s, kernel_share=kernels.share,
                   kernel_floor_ratio=kernels.kernel_s / floor_s)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="scnet_r18_smoke")
    parser.add_argument("--size", type=int, nargs=2, default=(256, 192), metavar=("WIDTH", "HEIGHT"))
    parser.add_argument("--batch", type=int, default=2, help="images per iteration (one process)")
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--num-classes", type=int, default=80)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="auto: CPU, and CUDA too when present")
    parser.add_argument("--no-amp", action="store_true")
    parser.add_argument("--floor", action="store_true",
                        help="CPU: also the step's conv/FC GFLOP and their time at this CPU's matmul rate")
    args = parser.parse_args(argv)
    if args.iters < 1 or args.warmup < 0:
        parser.error("--iters must be >= 1 and --warmup >= 0")
    if args.floor and args.device == "cuda":
        parser.error("--floor is a CPU figure (this CPU's matmul rate); use --device cpu or auto")
    devices = []
    if args.device in ("auto", "cpu"):
        devices.append(torch.device("cpu"))
    if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            parser.error("--device cuda: CUDA is not available on this machine")
        devices.append(torch.device("cuda", 0))
    for device in devices:
        row = measure(args.preset, device, width=args.size[0], height=args.size[1], batch=args.batch,
                      iters=args.iters, warmup=args.warmup, amp=not args.no_amp, num_classes=args.num_classes,
                      floor=args.floor and device.type == "cpu")
        print(f"{row['preset']} on {row['device']}, {args.size[0]}x{args.size[1]} x{args.batch}"
              f"{' amp' if row['amp'] else ''}: {row['s_per_iter_mean']:.3f} s/iter "
              f"(median {row['s_per_iter_median']:.3f}), peak {row['peak_memory_mb']:.0f} MB ({row['memory_kind']})")
        if "floor_s_per_iter" in row:
            print(f"  floor: {row['step_gflop']:.1f} conv/FC GFLOP forward+backward at {row['matmul_gflop_per_s']:.0f} "
                  f"GFLOP/s (float32 matmul here) = {row['floor_s_per_iter']:.3f} s/iter; "
                  f"measured/floor = {row['floor_ratio']:.2f}")
            print(f"  conv/FC kernels as they run: {row['kernel_s_per_iter']:.3f} s of a profiled "
                  f"{row['profiled_s_per_iter']:.3f} s/iter ({100 * row['kernel_share']:.0f}%) = "
                  f"{row['kernel_floor_ratio']:.2f} x floor")
        print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
