"""One run from its RunConfig to its result.json: data, model, training (resumable), evaluation.

`run_training` is what every executor calls (in-process, local subprocess, SLURM task, torchrun
worker). It is idempotent: a finished run (result.json present) returns its result; an
interrupted one resumes from `checkpoints/last.pth`. Only rank 0 writes files.
"""
from __future__ import annotations

import platform
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from scnet.checkpoints.loading import check_shapes_fit, load_weights_into, read_weights, tensor_dict
from scnet.engine import distributed
from scnet.engine.checkpoint import CheckpointError, load_checkpoint, load_model_state, require_fields, unusable_field
from scnet.engine.coco_eval import coco_metrics, write_detections
from scnet.engine.device import gpu_requested, pick_device
from scnet.engine.environment import collect_environment
from scnet.engine.inference import gather_inference, measure_speed, run_inference
from scnet.engine.precision import apply_float32_mode
from scnet.engine.run_config import RunConfig
from scnet.engine.run_log import RunLog
from scnet.engine.rng_state import seed_everything
from scnet.engine.semantic_classes import check_training_classes
from scnet.engine.tensorboard_log import write_result_scalars
from scnet.engine.trainer import Trainer, iou_summary
from scnet.records.iou import IoURecorder
from scnet.records.result import METRIC_NAMES, read_result, write_result
from scnet.records.run_dir import RunDir, write_env
from scnet.weights.backbone_init import init_backbone

# Detections at or above this IoU with a same-class ground truth: the inference counterpart of the
# training positives (whose IoU is >= the first stage's 0.5 threshold) for Figure 1.
MATCHED_IOU = 0.5


def gpu_required_because(run_config: RunConfig, *, training: bool) -> str | None:
    """Why this run must not fall back to the CPU (see scnet.engine.device), or None."""
    reason = gpu_requested()
    if reason is None and training and run_config.scale == "paper":
        reason = "paper-scale training"
    return reason


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)"


def prepare_data(run_config: RunConfig) -> None:
    """At smoke scale, generate the synthetic dataset on first use at the harness's default data path
    (rank 0; the others wait); anywhere else a missing dataset is an error (a mistyped path)."""
    from scnet.data.location import is_default_synthetic_root

    root = Path(run_config.data_root)
    if (run_config.scale == "smoke" and not (root / "annotations").is_dir()
            and is_default_synthetic_root(root)):
        if distributed.rank() == 0:
            from scnet.data import ensure_synthetic

            ensure_synthetic(root, seed=0)
        distributed.patient_barrier()


def check_run_splits(train_set: Any, eval_set: Any, run_config: RunConfig) -> None:
    """The cross-split checks of `scnet.data.splits` (categories, an evaluation split with objects)."""
    from scnet.data.splits import check_run_splits as check

    check(train_set, eval_set, max_images=run_config.eval.max_images)


def build_dataset(run_config: RunConfig, split: str, *, train: bool) -> Any:
    from scnet.data import CocoInstances, build_transforms

    transforms = build_transforms(train=train, scale=run_config.image_scale)
    dataset = CocoInstances(run_config.data_root, split=split, transforms=transforms, training=train,
                            seed=run_config.seed)
    if train:
        # train2017's index as numpy arrays: each rank and data worker holds ~0.5 GB, not several.
        from scnet.data.compact_index import compact_dataset

        compact_dataset(dataset)
    return dataset


def run_model_config(run_config: RunConfig, dataset: Any) -> Any:
    """The ModelConfig with the dataset's class counts (unless the run config fixes them: its
    `num_semantic_classes` wins over the evaluated split's maps)."""
    data_flags: dict[str, Any] = {"num_classes": dataset.num_classes}
    if getattr(dataset, "num_semantic_classes", None):
        data_flags["num_semantic_classes"] = dataset.num_semantic_classes
    return run_config.model_config(**data_flags)


def build_run_model(run_config: RunConfig, dataset: Any) -> nn.Module:
    """The network of `run_model_config`, seeded identically on every rank and in every attempt."""
    from scnet import build_model

    config = run_model_config(run_config, dataset)
    seed_everything(run_config.seed)
    return build_model(config)


# Images of the separate timed pass on rank 0 (after its warm-up) when the evaluation itself was
# distributed or batched; the paper's fps is one GPU at batch 1.
SPEED_IMAGES = 200


def evaluate_model(model: nn.Module, dataset: Any, run_config: RunConfig, *, device: torch.device,
                   recorder: IoURecorder, run_dir: Path, progress: bool = True) -> dict[str, Any]:
    """COCO box/mask AP, inference speed and detection IoUs; every rank returns rank 0's numbers."""
    settings = run_config.eval
    start = time.perf_counter()
    paper_like = distributed.world_size() == 1 and settings.batch_size == 1
    local = run_inference(model, dataset, collate_fn=_collate(), device=device, batch_size=settings.batch_size,
                          num_workers=run_config.num_workers, max_images=settings.max_images,
                          speed_warmup=settings.speed_warmup, progress=progress, timed=paper_like)
    merged = gather_inference(local)
    del local
    summary: dict[str, Any] | None = None
    if distributed.rank() == 0:
        if paper_like:
            timed_images, timed_seconds = merged.timed_images, merged.timed_seconds
        else:
            evaluated = len(merged.image_ids)
            timed_images, timed_seconds = measure_speed(
                model, dataset, collate_fn=_collate(), device=device,
                num_images=min(evaluated, SPEED_IMAGES + settings.speed_warmup), warmup=settings.speed_warmup)
        ious = np.concatenate(merged.ious) if merged.ious else np.zeros(0)
        recorder.add("inference", ious)
        recorder.add("inference/matched", ious[ious >= MATCHED_IOU])
        metrics, report = coco_metrics(dataset.coco, merged.results, merged.image_ids)
        detections_path = write_detections(run_dir, merged.results)
        RunLog(run_dir).info(f"evaluation on {len(merged.image_ids)} {settings.split} images:\n{report}")
        summary = {
            "metrics": metrics,
            "speed": {"images_per_s": timed_images / timed_seconds if timed_seconds > 0 else 0.0,
                      "device": describe_device(device), "images_timed": timed_images, "batch_size": 1,
                      "processes": 1, "amp": False,
                      "measured": "during the evaluation" if paper_like else
                                  "separate pass on rank 0 after the distributed evaluation"},
            "eval": {"split": settings.split, "num_images": len(merged.image_ids),
                     "num_detections": len(merged.results), "detections_file": detections_path.name,
                     "eval_s": time.perf_counter() - start, "processes": distributed.world_size(),
                     "inference_iou": "box IoU of each final detection with its best same-class "
                                      "ground truth (0 if none); 'inference/matched' keeps IoU >= 0.5"},
        }
    return distributed.broadcast_object(summary)


def _collate():
    from scnet.data import collate

    return collate


def _result(run_config: RunConfig, model: nn.Module, evaluation: dict[str, Any], *, train_s: float,
            iterations: int, extra: dict[str, Any], recorder: IoURecorder) -> dict[str, Any]:
    return {
        "status": "done",
        "run_id": run_config.run_id(),
        "config": {**run_config.to_dict(), "model": model.config.to_dict()},
        "metrics": evaluation["metrics"],
        "speed": evaluation["speed"],
        "timing": {"train_s": float(train_s), "eval_s": float(evaluation["eval"]["eval_s"]),
                   "iterations": iterations,
                   "s_per_iter": float(train_s / iterations) if iterations else None},
        "eval": evaluation["eval"],
        "iou": iou_summary(recorder),
        **extra,
    }


def run_training(run_config: RunConfig, run_dir: str | Path, *, progress: bool = True,
                 device: str | torch.device | None = None) -> dict[str, Any]:
    """Train (resuming if interrupted), evaluate, write result.json; return the result on every rank."""
    run_dir = Path(run_dir)
    folder = RunDir(run_dir)
    finished = folder.finished_result(run_config, may_move=distributed.detect_dist_env().rank == 0)
    if finished is not None:
        return finished
    with _process_group(device, gpu_required_because(run_config, training=True)) as chosen:
        apply_float32_mode(run_config.strict_fp32)
        prepare_data(run_config)
        train_set = build_dataset(run_config, "train", train=True)
        # Every split the run uses is checked now, not after hours of training, and before the run
        # folder is written, so bad data leaves nothing behind.
        eval_set = build_dataset(run_config, run_config.eval.split, train=False) if run_config.eval.enabled else None
        check_run_splits(train_set, eval_set, run_config)
        check_training_classes(run_config, train_set)
        model = build_run_model(run_config, train_set)
        loaded = None
        if not folder.last_checkpoint.exists():  # a resumed run's checkpoint holds the trunk
            loaded = init_backbone(model, run_config)  # a bad file stops the run before its folder is written
        if distributed.rank() == 0:
            folder.write_config_once(run_config)
            write_env(run_dir, collect_environment(world_size=distributed.world_size(),
                                                   device=describe_device(chosen)))
            folder.remove_stale_temporaries()  # of a process killed mid-write; this one holds the run
            if loaded is not None:
                RunLog(run_dir).info(f"backbone initialised from {loaded}")
        model = model.to(chosen)
        recorder = IoURecorder(seed=run_config.seed)
        outcome = Trainer(model, train_set, collate_fn=_collate(), run_config=run_config, run_dir=run_dir,
                          device=chosen, recorder=recorder, progress=progress).train()
        if eval_set is not None:
            evaluation = evaluate_model(model, eval_set, run_config, device=chosen, recorder=recorder,
                                        run_dir=run_dir, progress=progress)
        else:
            evaluation = _no_evaluation(chosen)
        result = _result(run_config, model, evaluation, train_s=outcome.train_s, iterations=outcome.iterations,
                         recorder=recorder, extra={"train": {
                             "iters_per_epoch": outcome.iters_per_epoch, "resumed_from": outcome.resumed_from,
                             "final_losses": outcome.last_losses, "processes": distributed.world_size()}})
        return _publish(run_dir, result, recorder)


@contextmanager
def _process_group(device: str | torch.device | None, gpu_required: str | None) -> Iterator[torch.device]:
    """Join the process group that torchrun or SLURM describes (if any), yield this rank's device, and
    leave the group on exit only if this call created it (a caller may have joined it already).
    A GPU that is required but unusable stops the process here, before any rendezvous."""
    dist_env = distributed.detect_dist_env()
    chosen = pick_device(dist_env.local_rank, device, gpu_required_because=gpu_required)
    owns_group = dist_env.is_distributed and not distributed.is_initialized()
    distributed.init_distributed(dist_env, chosen)
    try:
        yield chosen
    finally:
        if owns_group:
            distributed.shutdown_distributed()


def _publish(run_dir: Path, result: dict[str, Any], recorder: IoURecorder) -> dict[str, Any]:
    """Rank 0 writes the IoU records, then result.json (last: it marks the run done); every rank
    returns the result as written (JSON types, with its format version)."""
    written: dict[str, Any] | None = None
    if distributed.rank() == 0:
        recorder.save(run_dir)
        write_result(run_dir, result)
        written = read_result(run_dir)
        write_result_scalars(run_dir, written)
    return distributed.broadcast_object(written)


def _no_evaluation(device: torch.device) -> dict[str, Any]:
    zeros = {name: 0.0 for name in METRIC_NAMES}
    return {"metrics": {"bbox": dict(zeros), "segm": dict(zeros)},
            "speed": {"images_per_s": 0.0, "device": describe_device(device)},
            "eval": {"split": None, "num_images": 0, "num_detections": 0, "eval_s": 0.0,
                     "skipped": "eval.enabled is false"}}


def evaluate_run(run_dir: str | Path, *, run_config: RunConfig | None = None, checkpoint: str | Path | None = None,
                 progress: bool = True, device: str | torch.device | None = None) -> dict[str, Any]:
    """Evaluate a run's final weights (or `checkpoint`) again and rewrite its result.json.

    With `run_config` given (evaluating a checkpoint from elsewhere), `run_dir` is the output folder
    and the result records `timing.train_s = 0`; that folder must not hold results or a training
    run. A run whose training has not finished is refused: its result.json would mark it done.
    """
    run_dir = Path(run_dir)
    folder = RunDir(run_dir)
    if run_config is None:
        run_config = folder.read_run_config()
    if checkpoint is not None:
        folder.check_evaluation_out(run_config)
        run_state = None
    else:
        run_state = require_fields(load_checkpoint(folder.last_checkpoint), folder.last_checkpoint)
        folder.check_training_finished(run_state)
        if distributed.detect_dist_env().rank == 0:
            folder.move_aside_invalid_result()
    with _process_group(device, gpu_required_because(run_config, training=False)) as chosen:
        apply_float32_mode(run_config.strict_fp32)
        eval_set = build_dataset(run_config, run_config.eval.split, train=False)
        check_run_splits(None, eval_set, run_config)
        source = Path(checkpoint) if checkpoint is not None else folder.last_checkpoint
        # The weights are read, and their shapes compared with the network's (on the meta device),
        # before the output folder is written: a bad checkpoint leaves nothing behind.
        state, weights = run_state, None
        if state is None:
            try:
                state = load_checkpoint(source)
            except CheckpointError:
                weights = read_weights(source)
            else:
                require_fields(state, source)
        tensors = weights.state if weights is not None else tensor_dict(state["model"], "model")
        check_shapes_fit(run_model_config(run_config, eval_set), tensors, source,
                         weights.preset if weights is not None else None, run_config.preset)
        if distributed.rank() == 0:
            folder.write_config_once(run_config)
            folder.remove_stale_temporaries()
        model = build_run_model(run_config, eval_set).to(chosen)
        recorder = IoURecorder(seed=run_config.seed)
        train_s, iterations = 0.0, 0
        if weights is not None:
            load_weights_into(model, weights, run_config.preset)
        else:
            load_model_state(model, state, source, preset_name=run_config.preset)
            try:  # keeps the training IoUs beside the new ones
                recorder.load_state_dict(state["iou_recorder"])
            except (KeyError, TypeError, ValueError, IndexError, AttributeError, RuntimeError) as exc:
                raise unusable_field(source, exc) from None
            train_s, iterations = float(state["train_s"]), int(state["iteration"])
        del state, weights, tensors
        evaluation = evaluate_model(model, eval_set, run_config, device=chosen, recorder=recorder,
                                    run_dir=run_dir, progress=progress)
        result = _result(run_config, model, evaluation, train_s=train_s, iterations=iterations,
                         recorder=recorder, extra={"evaluated_checkpoint": str(source)})
        return _publish(run_dir, result, recorder)

