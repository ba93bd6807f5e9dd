"""The training loop: SGD with warm-up and step decay, AMP on CUDA, DDP, checkpoints and exact resume.

Ranks fail together: every step, before the forward pass and again before the backward pass (whose
gradient all-reduce a failed rank would never join), the ranks agree in one tiny all-reduce on
whether any of them failed (a dataset error, a non-finite loss, an exception in the forward) and
whether any was asked to stop (USR2 before a SLURM time limit: `scnet.engine.preemption`). A
failure stops every rank within the step; a stop request saves a checkpoint at that iteration on
every rank and raises `TrainingInterrupted`. With AMP, a float16 overflow in the gradients is the
GradScaler's business (the step is skipped and the scale lowered); only a non-finite *loss* stops.

A run resumed from `checkpoints/last.pth` continues exactly where it stopped: the checkpoint holds
the model, the optimiser's momentum, the AMP scaler, every rank's generator states, the IoU
recorder and the iteration; the learning rate and the data order are pure functions of the
iteration and of (seed, epoch). On CPU an interrupted-and-resumed run ends with the same weights,
bit for bit, as an unbroken one.
"""
from __future__ import annotations

import inspect
import math
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from scnet.engine import distributed, preemption
from scnet.engine.checkpoint import (CheckpointError, load_checkpoint, load_model_state, require_fields,
                                     save_checkpoint, unusable_field)
from scnet.engine.data_order import ResumableBatchSampler, SeededSamples, iters_per_epoch
from scnet.engine.lr_schedule import learning_rate, set_learning_rate
from scnet.engine.rng_state import capture_rng_state, derive_seed, restore_rng_state, seed_everything
from scnet.engine.run_config import RunConfig
from scnet.engine.run_log import ROW_FIELDS, RunLog, read_metrics
from scnet.engine.tensorboard_log import open_tensorboard_log
from scnet.records.iou import IoURecorder
from scnet.records.run_dir import RunDir


@dataclass
class TrainOutcome:
    iterations: int
    iters_per_epoch: int
    train_s: float
    resumed_from: int
    last_losses: dict[str, float] = field(default_factory=dict)


def wrap_ddp(model: nn.Module, device: torch.device) -> DistributedDataParallel:
    """The model under DistributedDataParallel as training runs it. Every trainable parameter takes part
    in every loss, also where a head had nothing to learn from (zero-weighted terms in scnet.models, as
    MMDetection's), so DDP need not search the graph for unused ones each step; gradients live in the
    all-reduce buckets rather than beside them; and buffers are broadcast from rank 0 before each forward
    only when BatchNorm trains (with `norm_eval` its statistics are frozen and never change)."""
    frozen_buffers: dict[str, bool] = {}
    if model.config.norm_eval:  # torch >= 2.14 names it forward_sync_buffers (and deprecates the other)
        new_name = "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
        frozen_buffers = {"forward_sync_buffers" if new_name else "broadcast_buffers": False}
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                   find_unused_parameters=False, gradient_as_bucket_view=True, **frozen_buffers)


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


def move_targets(targets: Sequence[dict[str, torch.Tensor]], device: torch.device) -> list[dict[str, torch.Tensor]]:
    return [{k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in t.items()}
            for t in targets]


class _IoUBuffer:
    """Per-process IoUs since the last flush; rank 0 adds every rank's, in rank order, to the recorder.

    Buffering keeps the cross-process gather to once per log interval instead of once per iteration.
    """

    def __init__(self, recorder: IoURecorder) -> None:
        self.recorder = recorder
        self.pending: dict[str, list[torch.Tensor]] = defaultdict(list)

    def add(self, mask_sample_ious: dict[int, torch.Tensor] | None) -> None:
        if not mask_sample_ious:
            return
        for stage, ious in sorted(mask_sample_ious.items()):
            self.pending[f"train/stage{int(stage)}"].append(ious.detach().float().reshape(-1))

    def flush(self) -> None:
        local = {tag: torch.cat(parts).cpu().numpy() for tag, parts in self.pending.items()}
        self.pending.clear()
        parts = distributed.gather_to_main(local)
        if parts is None:
            return
        for tag in sorted({tag for part in parts for tag in part}):
            for part in parts:
                if tag in part:
                    self.recorder.add(tag, part[tag])


class _LossWindow:
    """Running means of the losses over the current log interval."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = defaultdict(float)
        self.count = 0
        self.step_time = 0.0
        self.data_time = 0.0

    def add(self, losses: dict[str, float], step_time: float, data_time: float) -> None:
        for name, value in losses.items():
            self.sums[name] += value
        self.count += 1
        self.step_time += step_time
        self.data_time += data_time

    def means(self) -> dict[str, float]:
        return {name: total / max(self.count, 1) for name, total in self.sums.items()}

    def state_dict(self) -> dict[str, Any]:
        return {"sums": dict(self.sums), "count": self.count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume a log interval cut by a checkpoint, so its row averages the same iterations."""
        self.sums = defaultdict(float, state["sums"])
        self.count = int(state["count"])


class PeerRankFailed(RuntimeError):
    """Another rank failed; this one stops too instead of waiting for it in a collective."""


def _stop_if_any_failed(error: BaseException | None, iteration: int, *, stop: bool = False) -> bool:
    """Raise this rank's error, or PeerRankFailed if another rank failed; return whether to stop."""
    failed_rank, stopping = distributed.agree(error is not None, stop)
    if error is not None:
        raise error
    if failed_rank is not None:
        raise PeerRankFailed(f"rank {distributed.rank()}: stopping at iteration {iteration} because rank "
                             f"{failed_rank} failed (its error is in its own output)")
    return stopping


def _stop_reason() -> str:
    return preemption.stop_reason() if preemption.stop_requested() else "stop requested on another rank"


def _check_finite(losses: dict[str, float], iteration: int, run_dir: Path) -> None:
    bad = {k: v for k, v in losses.items() if not math.isfinite(v)}
    if bad:
        raise FloatingPointError(
            f"{run_dir}: non-finite loss at iteration {iteration}: {bad}. The run diverged; lower the "
            "learning rate (schedule.lr) or lengthen warm-up (schedule.warmup_iters), then delete "
            "checkpoints/last.pth or resume from an earlier checkpoint")


def _make_loader(dataset: Any, *, collate_fn: Callable, run_config: RunConfig, epoch: int, start_batch: int,
                 device: torch.device) -> DataLoader:
    if hasattr(dataset, "set_epoch"):
        dataset.set_epoch(epoch)
    sampler = ResumableBatchSampler(
        num_items=len(dataset), global_batch=run_config.schedule.batch_size, seed=run_config.seed,
        epoch=epoch, rank=distributed.rank(), world_size=distributed.world_size(), start_batch=start_batch,
        aspect_groups=dataset.aspect_groups() if hasattr(dataset, "aspect_groups") else None)
    # An explicit generator keeps the loader from drawing its worker base seed from the global
    # generator, which the model's samplers use (resume would otherwise shift their stream).
    return DataLoader(SeededSamples(dataset), batch_sampler=sampler, collate_fn=collate_fn,
                      num_workers=run_config.num_workers, pin_memory=device.type == "cuda",
                      worker_init_fn=preemption.ignore_stop_signals,
                      generator=torch.Generator().manual_seed(derive_seed("loader", run_config.seed, epoch)))


class Trainer:
    """One attempt at training a run's model (already on `device`) per `run_config.schedule`, resuming
    from the run folder's `checkpoints/last.pth` when there is one.

    The state that outlives a step (optimiser, AMP scaler, iteration, training time, the loss window
    and the IoUs not yet recorded) lives on the object; each part of a step is one method.
    """

    def __init__(self, model: nn.Module, dataset: Any, *, collate_fn: Callable, run_config: RunConfig,
                 run_dir: str | Path, device: torch.device, recorder: IoURecorder, progress: bool = True) -> None:
        self.model, self.dataset, self.collate_fn = model, dataset, collate_fn
        self.run_config, self.schedule = run_config, run_config.schedule
        self.run_dir, self.device, self.recorder, self.progress = Path(run_dir), device, recorder, progress
        self.rank, self.world = distributed.rank(), distributed.world_size()
        self.is_main = self.rank == 0
        self.log = RunLog(self.run_dir, enabled=self.is_main)
        batch = self.schedule.batch_size
        if batch % self.world:
            raise ValueError(f"schedule.batch_size={batch} (global) is not divisible by the "
                             f"{self.world} processes; use a multiple of {self.world}")
        self.per_epoch = iters_per_epoch(len(dataset), batch)
        if self.per_epoch < 1:
            raise ValueError(f"{run_config.data_root}: the training split has {len(dataset)} images, fewer than "
                             f"one global batch (schedule.batch_size={batch}); lower the batch size")
        self.total = self.schedule.total_iters(self.per_epoch)
        self.use_amp = run_config.amp and device.type == "cuda"
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.SGD(self.params, lr=self.schedule.lr, momentum=self.schedule.momentum,
                                         weight_decay=self.schedule.weight_decay)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        self.checkpoint_path = RunDir(self.run_dir).last_checkpoint
        self.start_iter, self.train_s = 0, 0.0
        self.net: nn.Module = model
        self.ious = _IoUBuffer(recorder)
        self.window = _LossWindow()
        self.last_losses: dict[str, float] = {}

    def train(self) -> TrainOutcome:
        rng_states, windows = self._resume()
        self.net = self._for_all_ranks()
        self.net.train()
        self._restore_or_seed(rng_states, windows)
        bar = tqdm(total=self.total, initial=self.start_iter, desc="train", unit="it", dynamic_ncols=True,
                   disable=not (self.progress and self.is_main))
        iteration = self.start_iter
        if self.is_main and self.start_iter < self.total:  # TensorBoard too, if installed
            self.log.attach_sink(open_tensorboard_log(self.run_dir, resumed_at=self.start_iter))
        try:
            with preemption.listening():
                while iteration < self.total:
                    iteration = self._train_epoch(iteration, bar)
            # A stop asked for during the last step: the final checkpoint is saved; let the caller requeue
            # rather than start an evaluation the time limit may cut.
            if self.start_iter < self.total and _stop_if_any_failed(None, iteration,
                                                                    stop=preemption.stop_requested()):
                raise preemption.TrainingInterrupted(iteration, _stop_reason())
        finally:
            bar.close()
            self.log.close()
        return self._outcome()

    def _resume(self) -> tuple[list | None, list | None]:
        """Load the checkpoint's state, if any; return every rank's generator states and loss windows
        (None when starting afresh or when the process count changed)."""
        path, total, per_epoch = self.checkpoint_path, self.total, self.per_epoch
        if not path.exists():
            self.log.info(f"training {total} iterations ({per_epoch} per epoch, global batch "
                          f"{self.schedule.batch_size}, {self.world} process(es), device {self.device}, "
                          f"amp={self.use_amp})")
            return None, None
        state = require_fields(load_checkpoint(path), path)
        if state["iters_per_epoch"] != per_epoch or state["total_iters"] != total:
            raise CheckpointError(
                f"{path}: saved with {state['iters_per_epoch']} iterations per epoch and "
                f"{state['total_iters']} in all, but this run has {per_epoch} and {total} (dataset or "
                "batch size changed?); use a new run directory")
        load_model_state(self.model, state, path, preset_name=self.run_config.preset)
        try:
            self.optimizer.load_state_dict(state["optimizer"])
            self.scaler.load_state_dict(state["scaler"])
            self.recorder.load_state_dict(state["iou_recorder"])
        except (KeyError, TypeError, ValueError, IndexError, AttributeError, RuntimeError) as exc:
            raise unusable_field(path, exc) from None
        self.start_iter, self.train_s = int(state["iteration"]), float(state["train_s"])
        rng_states = windows = None
        if len(state["rng"]) == self.world:
            rng_states, windows = state["rng"], state["log_windows"]
        elif self.is_main:
            self.log.info(f"resuming with {self.world} processes from a checkpoint of {len(state['rng'])}: "
                          "generator states re-seeded (the run stays valid but is not bit-identical)")
        self.log.truncate_after(self.start_iter)
        self.log.info(f"resumed from {path} at iteration {self.start_iter}/{total}")
        return rng_states, windows

    def _for_all_ranks(self) -> nn.Module:
        """The model as the step runs it: itself in one process, under DDP in several."""
        if self.world == 1:
            return self.model
        # Set-up (data index, run files, checkpoint) takes each rank its own time: meet under the
        # patient timeout before DDP's first broadcast, the first collective with the short one.
        distributed.patient_barrier()
        return wrap_ddp(self.model, self.device)

    def _restore_or_seed(self, rng_states: list | None, windows: list | None) -> None:
        try:
            if rng_states is not None:
                restore_rng_state(rng_states[self.rank])
            if windows is not None:
                self.window.load_state_dict(windows[self.rank])
        except (KeyError, TypeError, ValueError, IndexError, AttributeError, RuntimeError) as exc:
            raise unusable_field(self.checkpoint_path, exc) from None
        if rng_states is None:
            seed_everything(derive_seed("train", self.run_config.seed, self.rank, self.start_iter))

    def _train_epoch(self, iteration: int, bar: tqdm) -> int:
        """Train from `iteration` to the end of its epoch (or of the schedule); return where it stopped."""
        epoch, start_batch = divmod(iteration, self.per_epoch)
        loader = _make_loader(self.dataset, collate_fn=self.collate_fn, run_config=self.run_config, epoch=epoch,
                              start_batch=start_batch, device=self.device)
        fetch_start = time.perf_counter()  # the first fetch includes starting the workers
        batches = preemption.start_workers_deaf(loader)
        while iteration < self.total:
            error: BaseException | None = None
            try:
                images, targets, _metas = next(batches)
            except StopIteration:
                break  # every rank has as many batches per epoch
            except Exception as exc:  # a dataset error: tell the other ranks before raising
                error = exc
            step_start = time.perf_counter()
            data_time = step_start - fetch_start
            if _stop_if_any_failed(error, iteration, stop=preemption.stop_requested()):
                self._stop(iteration)
            lr = learning_rate(iteration, self.schedule, self.per_epoch)
            set_learning_rate(self.optimizer, lr)
            values = self._step(images, targets, iteration)
            iteration += 1
            step_time = time.perf_counter() - step_start
            self.train_s += step_time + data_time
            self.window.add(values, step_time, data_time)
            bar.update(1)
            if self.progress and self.is_main:
                bar.set_postfix(loss=f"{self.window.means()['loss']:.3f}", lr=f"{lr:.2e}", refresh=False)
            if iteration % self.schedule.log_every == 0 or iteration == self.total:
                self._log_interval(iteration, epoch, lr)
            if iteration % self.schedule.checkpoint_every == 0 or iteration == self.total:
                self._save(iteration)
            fetch_start = time.perf_counter()
        return iteration

    def _step(self, images: Sequence[torch.Tensor], targets: Sequence[dict[str, torch.Tensor]],
              iteration: int) -> dict[str, float]:
        """Forward, the ranks' agreement that all succeeded, backward and the optimiser step; the
        logged loss values."""
        error: BaseException | None = None
        try:
            images = [image.to(self.device, non_blocking=True) for image in images]
            targets = move_targets(targets, self.device)
            with torch.autocast(device_type=self.device.type, dtype=torch.float16, enabled=self.use_amp):
                losses = self.net(images, targets)
            total_loss = sum(losses.values())
            # One device-to-host copy for all the logged numbers (a sync per loss is slow on CUDA).
            numbers = torch.stack([v.detach().float() for v in (*losses.values(), total_loss)]).tolist()
            values = dict(zip([*losses, "loss"], numbers))
            _check_finite(values, iteration, self.run_dir)
        except Exception as exc:
            error = exc
        _stop_if_any_failed(error, iteration)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total_loss).backward()
        if self.schedule.grad_clip_norm is not None:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.params, self.schedule.grad_clip_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.ious.add(getattr(unwrap(self.net), "mask_sample_ious", None))
        return values

    def _log_interval(self, iteration: int, epoch: int, lr: float) -> None:
        """The interval's mean losses over every rank, timings and ETA: one metrics.jsonl row."""
        self.ious.flush()
        means = distributed.all_reduce_mean(self.window.means())
        self.last_losses = means
        window = self.window
        seconds = window.step_time / max(window.count, 1)
        seconds += window.data_time / max(window.count, 1)
        row = {"iter": iteration, "epoch": epoch, "lr": lr, **means,
               "time": window.step_time / max(window.count, 1),
               "data_time": window.data_time / max(window.count, 1),
               "eta_s": seconds * (self.total - iteration),
               "total_iters": self.total, "iters_per_epoch": self.per_epoch}
        if self.device.type == "cuda":
            row["memory_mb"] = torch.cuda.max_memory_allocated(self.device) / 2**20
        self.log.metrics(row)
        self.window = _LossWindow()

    def _save(self, iteration: int) -> None:
        """Every rank's generators and loss window, gathered; rank 0 writes the checkpoint."""
        self.ious.flush()
        states = distributed.gather_to_main(capture_rng_state())
        log_windows = distributed.gather_to_main(self.window.state_dict())
        if self.is_main:
            save_checkpoint(self.checkpoint_path, {
                "iteration": iteration, "total_iters": self.total, "iters_per_epoch": self.per_epoch,
                "model": unwrap(self.net).state_dict(), "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict(), "iou_recorder": self.recorder.state_dict(), "rng": states,
                "log_windows": log_windows,
                "train_s": self.train_s, "world_size": self.world, "run_config": self.run_config.to_dict(),
            })
        distributed.patient_barrier()

    def _stop(self, iteration: int) -> None:
        """A stop request (SLURM's warning signal) on any rank: save where every rank stands, then leave."""
        self._save(iteration)
        reason = _stop_reason()
        self.log.info(f"stopped at iteration {iteration}/{self.total} ({reason}); checkpoint saved")
        raise preemption.TrainingInterrupted(iteration, reason)

    def _outcome(self) -> TrainOutcome:
        last_losses = self.last_losses
        if self.start_iter == self.total:
            self.log.info("training already complete; evaluating")
            rows = read_metrics(self.run_dir) if self.is_main else []
            last_losses = {k: v for k, v in rows[-1].items() if k not in ROW_FIELDS} if rows else {}
        else:
            self.log.info(f"training done: {self.total} iterations, {self.train_s:.1f} s")
        return TrainOutcome(iterations=self.total, iters_per_epoch=self.per_epoch, train_s=self.train_s,
                            resumed_from=self.start_iter, last_losses=last_losses)


def iou_summary(recorder: IoURecorder) -> dict[str, Any]:
    """Counts and mean IoU per tag, for result.json (the histograms live in iou_records.npz)."""
    records = recorder.records()
    out = {}
    for tag in records.tags:
        n = records.count(tag)
        out[tag] = {"count": n, "mean": None if n == 0 else float(records.mean(tag)),
                    "share_at_or_below_0.75": None if n == 0 else float(records.share_at_or_below(tag, 0.75))}
    return out

