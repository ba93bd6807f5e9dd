"""One rank of tests/test_ddp_gradients.py: two training steps of each architecture under
`scnet.engine.trainer.wrap_ddp` (gloo, 2 processes, one image per rank); rank 0 saves the all-reduced
gradients of each step.

    python -m tests.ddp_gradient_worker OUT_DIR

RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT come from the environment. The batches are edge cases on
rank 1 (an object no anchor matches, then no object at all), so that a parameter left out of rank 1's
graph would stall the all-reduce or fail DDP's next forward (`find_unused_parameters=False`).
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist

import scnet
from scnet.engine.trainer import wrap_ddp

# the smoke presets train their BatchNorm; "scnet_frozen_bn" freezes it as the paper-scale presets do
ARCHS = ("mask_rcnn", "cascade_mask_rcnn", "htc", "scnet", "scnet_frozen_bn")
STEPS = 2
HEIGHT, WIDTH = 64, 96
# boxes of the one image of (step, rank)
BOXES = {(0, 0): [[16.0, 8.0, 80.0, 56.0], [4.0, 30.0, 40.0, 60.0]], (0, 1): [[40.0, 30.0, 43.0, 33.0]],
         (1, 0): [[10.0, 10.0, 60.0, 50.0]], (1, 1): []}


def build(arch: str) -> torch.nn.Module:
    torch.manual_seed(0)
    frozen = arch.endswith("_frozen_bn")
    return scnet.build_model(f"{arch.removesuffix('_frozen_bn')}_r18_smoke", num_classes=3, num_semantic_classes=4,
                             norm_eval=frozen).train()


def batch(step: int, rank: int) -> tuple[list[torch.Tensor], list[dict]]:
    g = torch.Generator().manual_seed(10 * step + rank)
    boxes = BOXES[(step, rank)]
    masks = torch.zeros(len(boxes), HEIGHT, WIDTH, dtype=torch.uint8)
    semantic = torch.zeros(HEIGHT, WIDTH, dtype=torch.int64)
    for k, (x0, y0, x1, y1) in enumerate(boxes):
        masks[k, int(y0):int(y1), int(x0):int(x1)] = 1
        semantic[int(y0):int(y1), int(x0):int(x1)] = k % 3 + 1
    target = dict(boxes=torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                  labels=torch.arange(len(boxes), dtype=torch.int64) % 3, masks=masks, semantic_seg=semantic)
    return [torch.rand(3, HEIGHT, WIDTH, generator=g) * 255], [target]


def forward_backward(net: torch.nn.Module, step: int, rank: int) -> None:
    """One rank's share of a step; the sampling draws are seeded by (step, rank)."""
    images, targets = batch(step, rank)
    torch.manual_seed(100 * step + rank)
    losses = net(images, targets)
    sum(losses.values()).backward()


def main(out_dir: Path) -> int:
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    for arch in ARCHS:
        model = build(arch)
        net = wrap_ddp(model, torch.device("cpu"))
        if rank == 0:
            flags = {name: getattr(net, name, None) for name in ("find_unused_parameters", "gradient_as_bucket_view",
                                                                 "forward_sync_buffers", "broadcast_buffers")}
            torch.save(flags, out_dir / f"{arch}.flags.pt")
        for step in range(STEPS):
            model.zero_grad(set_to_none=True)
            forward_backward(net, step, rank)
            missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
            if missing:
                raise RuntimeError(f"{arch} step {step} rank {rank}: no gradient for {missing}")
            if rank == 0:
                torch.save({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None},
                           out_dir / f"{arch}.{step}.pt")
        print(f"rank {rank} {arch} done", flush=True)
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
