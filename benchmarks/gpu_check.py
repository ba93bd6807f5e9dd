"""One command that checks the paper-scale path on a GPU (under 8 minutes on one H100).

    python benchmarks/gpu_check.py                      # CUDA: the full check
    python benchmarks/gpu_check.py --device cpu --quick # a CPU smoke test of the script itself (CI)

Checks, each a row of one table printed at the end:
- train: forward + backward + SGD step of every R50 preset at 1333x800, batch 2 (the paper's 16
  over 8 GPUs), float32 and AMP: s/iter after warm-up and peak CUDA memory (`benchmarks/train_speed.py`);
- infer: fps at batch 1 of the four presets on the reference photo (1200x800, 100 detections with
  the deterministic reference weights), float32 without TF32, after warm-up, one process
  (`benchmarks/inference_speed.py`);
- oracle: the same detections against MMDetection 3.3.0's open outputs (shared/reference/oracle),
  with the rule of `scnet.equivalence.match_detections` (label, score within 0.01, box IoU >= 0.98,
  mask IoU >= 0.95);
- ddp: two processes, one GPU each, NCCL, through the engine's own process-group set-up
  (`scnet.engine.distributed`: default group + patient gloo group, the per-step `agree`, the rank-0
  `gather_to_main`), two DDP steps of scnet_r50; skipped with the reason when fewer than two GPUs
  are visible.
With `--quick` the models and sizes are tiny (the four ResNet-18 smoke presets: training at 128x96
for one iteration, fps on a random 160x128 image, the DDP step with gloo on the CPU) and the
oracle is checked for mask_rcnn_r50 only: it proves the script runs, not any number. On a CPU the
oracle row is informational (MMDetection's outputs were computed on an AVX2 CPU with 2 threads and
are reproduced bit for bit there only; on other CPUs one of the 18-pixel masks of the random
reference weights can fall outside the rule, see tests/test_model_mmdet.py). Exit status 1 if any
other check failed.
"""
from __future__ import annotations

import argparse
import os
import socket
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from inference_speed import REFERENCE, time_model  # noqa: E402
from train_speed import measure as measure_training, random_batch  # noqa: E402

from scnet import build_model  # noqa: E402

PRESETS = ("mask_rcnn_r50", "cascade_mask_rcnn_r50", "htc_r50", "scnet_r50")


def _model_name(preset: str, quick: bool) -> str:
    """The R50 preset, or its ResNet-18 smoke twin with --quick."""
    return preset.replace("_r50", "_r18_smoke") if quick else preset


@dataclass
class Row:
    check: str
    preset: str
    mode: str
    status: str = "ok"  # ok, FAILED, skipped, differs (informational)
    value: str = ""
    memory: str = ""
    note: str = ""


def _peak_mib(device: torch.device) -> str:
    return f"{torch.cuda.max_memory_allocated(device) / 2**20:.0f}" if device.type == "cuda" else ""


def check_training(device: torch.device, quick: bool) -> list[Row]:
    rows = []
    width, height = (128, 96) if quick else (1333, 800)
    iters, warmup = (1, 0) if quick else (3, 2)
    for preset in (_model_name(p, quick) for p in PRESETS):
        for amp in (False, True):
            row = Row("train", preset, f"{'amp' if amp else 'fp32'} {width}x{height} x2")
            if amp and device.type != "cuda":
                row.status, row.note = "skipped", "AMP is CUDA-only in the trainer"
                rows.append(row)
                continue
            try:
                result = measure_training(preset, device, width=width, height=height, batch=2, iters=iters,
                                          warmup=warmup, amp=amp, num_classes=80)
                row.value = f"{result['s_per_iter_mean']:.3f} s/iter"
                row.memory = f"{result['peak_memory_mb']:.0f}" if device.type == "cuda" else ""
            except Exception as exc:  # one failure must not hide the other rows
                row.status, row.note = "FAILED", f"{type(exc).__name__}: {exc}"[:200]
                traceback.print_exc()
            rows.append(row)
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return rows


def _reference_model(preset: str, device: torch.device) -> torch.nn.Module:
    from scnet.checkpoints import load_checkpoint
    from scnet.equivalence import write_reference_checkpoint

    model = build_model(preset).eval()
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = write_reference_checkpoint(REFERENCE / f"{preset}.state_dict.json", Path(tmp) / "w.pth")
        load_checkpoint(model, checkpoint, preset_name=preset)
    return model.to(device)


def check_inference_and_oracle(device: torch.device, quick: bool) -> list[Row]:
    import json

    from scnet.equivalence import match_detections
    from scnet.data.pipeline import test_input
    from scnet.image_io import read_bgr

    rows = []
    if not (REFERENCE / "oracle").is_dir():
        return [Row("infer+oracle", "-", "-", "skipped", note=f"{REFERENCE} (shared/reference) is not beside the repo")]
    coffee, coffee_meta = test_input(read_bgr(REFERENCE / "oracle" / "coffee_1200x800.png"))
    # float32 as MMDetection's oracle (and the paper's V100s) computed it: no TF32 convolutions/matmuls.
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    for preset in PRESETS:
        infer = Row("infer", _model_name(preset, quick), "batch 1, 1 process")
        oracle_row = Row("oracle", preset, "MMDetection 3.3.0 outputs")
        try:
            if quick:
                model = build_model(_model_name(preset, quick)).eval().to(device)
                image = torch.rand(3, 128, 160, generator=torch.Generator().manual_seed(0)) * 255
                meta = {"ori_shape": (128, 160), "scale_factor": (1.0, 1.0)}
                seconds, count = time_model(model, image.to(device), meta, str(device), repeats=1)
                infer.mode += ", 160x128 random weights"
            else:
                model = _reference_model(preset, device)
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                seconds, count = time_model(model, coffee.to(device), coffee_meta, str(device), repeats=10)
                infer.mode += ", 1200x800 photo"
                infer.memory = _peak_mib(device)
            infer.value = f"{1 / seconds:.2f} fps"
            infer.note = f"{count} detections, median of {1 if quick else 10} after 1 warm-up"
        except Exception as exc:
            infer.status, infer.note = "FAILED", f"{type(exc).__name__}: {exc}"[:200]
            traceback.print_exc()
            model = None
        rows.append(infer)

        if quick and preset != "mask_rcnn_r50":
            oracle_row.status, oracle_row.note = "skipped", "--quick checks mask_rcnn_r50 only"
        elif model is None and not quick:
            oracle_row.status, oracle_row.note = "skipped", "no model (inference failed)"
        else:
            try:
                if quick:
                    model = _reference_model(preset, device)
                oracle = json.loads((REFERENCE / "oracle" / f"{preset}.coffee.mmdet_outputs.json").read_text())
                with torch.inference_mode():
                    detections = model([coffee.to(device)], image_metas=[coffee_meta])[0]
                detections = {k: v.cpu() for k, v in detections.items()}
                report = match_detections(oracle["detections"], detections)
                oracle_row.value = f"{report.matched}/{report.total} matched"
                if not report.all_matched or report.total == 0:
                    oracle_row.status = "FAILED" if device.type == "cuda" else "differs"
                    oracle_row.note = f"unmatched MMDetection detections {report.unmatched[:10]}"
            except Exception as exc:
                oracle_row.status, oracle_row.note = "FAILED", f"{type(exc).__name__}: {exc}"[:200]
                traceback.print_exc()
        rows.append(oracle_row)
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ddp_worker(rank: int, port: int, use_cuda: bool, quick: bool, out: "torch.multiprocessing.Queue") -> None:
    from torch.nn.parallel import DistributedDataParallel

    from scnet.engine import distributed

    try:
        device = torch.device("cuda", rank) if use_cuda else torch.device("cpu")
        if use_cuda:
            torch.cuda.set_device(device)
        else:
            torch.set_num_threads(1)
        distributed.init_distributed(distributed.DistEnv(rank=rank, world_size=2, local_rank=rank,
                                                         master_addr="127.0.0.1", master_port=port,
                                                         launcher="torchrun"), device)
        preset = "mask_rcnn_r18_smoke" if quick else "scnet_r50"
        width, height = (128, 96) if quick else (1333, 800)
        torch.manual_seed(0)
        model = build_model(preset, num_classes=80, num_semantic_classes=81).to(device).train()
        net = DistributedDataParallel(model, device_ids=[rank] if use_cuda else None, find_unused_parameters=False)
        optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.001, momentum=0.9)
        images, targets = random_batch(2, width, height, 80, model.config.semantic, seed=rank)
        images = [i.to(device) for i in images]
        targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
        times = []
        for _step in range(2 if quick else 3):
            if use_cuda:
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            failed_rank, _stop = distributed.agree(False)
            assert failed_rank is None
            with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=use_cuda):
                losses = net(images, targets)
            optimizer.zero_grad(set_to_none=True)
            sum(losses.values()).backward()
            optimizer.step()
            if use_cuda:
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - start)
        # The gradients were averaged: both ranks hold the same weights after the steps.
        checksum = float(sum(p.detach().double().sum() for p in model.parameters()))
        gathered = distributed.gather_to_main(checksum)
        if rank == 0:
            same = abs(gathered[0] - gathered[1]) <= 1e-6 * max(1.0, abs(gathered[0]))
            out.put({"s_per_iter": times[-1], "same_weights": same, "backend": torch.distributed.get_backend(),
                     "memory": _peak_mib(device)})
        distributed.shutdown_distributed()
    except Exception as exc:
        traceback.print_exc()
        out.put({"error": f"rank {rank}: {type(exc).__name__}: {exc}"[:200]})


def check_ddp(device: torch.device, quick: bool) -> list[Row]:
    row = Row("ddp", "mask_rcnn_r18_smoke" if quick else "scnet_r50", "2 processes")
    use_cuda = device.type == "cuda"
    if use_cuda and torch.cuda.device_count() < 2:
        row.status, row.note = "skipped", f"{torch.cuda.device_count()} GPU visible; the NCCL step needs 2"
        return [row]
    if not use_cuda and not quick:
        row.status, row.note = "skipped", "a CPU DDP step runs only with --quick (gloo, tiny)"
        return [row]
    import torch.multiprocessing as mp

    context = mp.get_context("spawn")
    queue = context.Queue()
    port = _free_port()
    processes = [context.Process(target=_ddp_worker, args=(rank, port, use_cuda, quick, queue)) for rank in (0, 1)]
    for process in processes:
        process.start()
    try:
        report = queue.get(timeout=300)
    except Exception:
        report = {"error": "no answer from the DDP processes within 300 s"}
    for process in processes:
        process.join(timeout=60)
        if process.is_alive():
            process.kill()
    if "error" in report:
        row.status, row.note = "FAILED", report["error"]
    else:
        row.mode += f", {report['backend']}"
        row.value = f"{report['s_per_iter']:.3f} s/iter"
        row.memory = report["memory"]
        row.note = "same weights on both ranks" if report["same_weights"] else "ranks DIVERGED"
        if not report["same_weights"]:
            row.status = "FAILED"
    return [row]


def print_table(rows: list[Row], header: str) -> None:
    print(f"\n{header}\n")
    print("| check | preset | mode | status | result | peak CUDA MiB | note |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r.check} | {r.preset} | {r.mode} | {r.status} | {r.value} | {r.memory} | {r.note} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test of the script")
    parser.add_argument("--only", nargs="+", choices=("train", "infer", "ddp"), default=("train", "infer", "ddp"))
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        from scnet.engine.device import cuda_diagnosis, cuda_usable

        print(f"--device cuda: CUDA is unusable here: {cuda_diagnosis(cuda_usable()[1])}; "
              "use --device cpu --quick for the smoke test", file=sys.stderr)
        return 2
    device = torch.device("cuda", 0) if args.device == "cuda" else torch.device("cpu")
    if device.type == "cpu":
        torch.set_num_threads(min(2, torch.get_num_threads()))  # the oracle was computed with 2 threads
        name = f"cpu ({torch.get_num_threads()} threads)"
    else:
        name = f"{torch.cuda.get_device_name(device)} x{torch.cuda.device_count()}"
    started = time.perf_counter()
    rows: list[Row] = []
    steps = {"train": check_training, "infer": check_inference_and_oracle, "ddp": check_ddp}
    durations = []
    for key in args.only:
        step_start = time.perf_counter()
        rows.extend(steps[key](device, args.quick))
        durations.append(f"{key} {time.perf_counter() - step_start:.0f} s")
        print(f"[{key}] done in {time.perf_counter() - step_start:.0f} s", flush=True)
    header = (f"gpu_check on {name}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
              f"{'--quick, ' if args.quick else ''}{time.perf_counter() - started:.0f} s in all "
              f"({', '.join(durations)})")
    print_table(rows, header)
    return 1 if any(r.status == "FAILED" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
