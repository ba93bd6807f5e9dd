"""End-to-end engine tests on CPU with the real smoke models and synthetic data (tiny images).

- a smoke model overfits two images (losses fall, box and mask AP on them high);
- a run killed with SIGKILL after a checkpoint and resumed ends with bit-identical weights;
- two processes (torchrun, gloo) train on the same global batches as one process, with matching loss;
- IoU recordings carry the expected stage tags and lie in [0, 1].
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from scnet.checkpoints.loading import save_weights
from scnet.data import ensure_synthetic
from scnet.engine import EvalConfig, RunConfig, Schedule, default_schedule, run_training
from scnet.engine.checkpoint import load_checkpoint
from scnet.engine.coco_eval import read_detections
from scnet.engine.run_log import read_metrics
from scnet.engine.runner import build_dataset, build_run_model
from scnet.evaluate import main as evaluate_main
from scnet.records.iou import IoURecords
from scnet.records.result import read_result
from scnet.records.run_dir import RunDir, write_config

REPO = Path(__file__).resolve().parents[1]
SIZE = (128, 96)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread here and in the subprocesses: on a shared 2-core machine several threads per
    process oversubscribe the cores and run many times slower; bit-identical resume also needs the
    interrupted and the resuming process to use the same thread count."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def shapes4(tmp_path_factory) -> Path:
    return ensure_synthetic(tmp_path_factory.mktemp("data") / "shapes4", seed=0, train=4, val=2, size=SIZE)


@pytest.fixture(scope="module")
def shapes2(tmp_path_factory) -> Path:
    return ensure_synthetic(tmp_path_factory.mktemp("data") / "shapes2", seed=1, train=2, val=1, size=SIZE)


def stable_schedule(**changes) -> Schedule:
    """The smoke schedule shortened for a test: it keeps what makes training from random weights stable
    by design on any CPU (its learning rate, linear warm-up from 0.1% and gradient-norm clipping),
    rather than a rate that happens not to diverge with one CPU's rounding. (An lr of 0.02 without
    clipping overfitted here with AVX2 but hit NaN at iteration 29 with AVX-512 on an EPYC.)"""
    schedule = default_schedule("smoke", "smoke").replace(**changes)
    assert schedule.grad_clip_norm is not None and schedule.warmup_iters > 0 and schedule.lr <= 0.01
    return schedule


def _subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def _iou_records(run_dir: Path) -> IoURecords:
    records = IoURecords.load(run_dir)
    for tag in records.tags:
        sample = records.sample(tag)
        assert sample.size == min(records.count(tag), 20_000)
        assert np.all((sample >= 0.0) & (sample <= 1.0)), tag
    return records


# -------------------------------------------------------------------------------------- overfitting

@pytest.fixture(scope="module")
def overfit_run(shapes2, tmp_path_factory):
    config = RunConfig(
        preset="mask_rcnn_r18_smoke", data_root=str(shapes2), scale="smoke", image_scale=SIZE, seed=0,
        schedule=stable_schedule(name="overfit", max_iters=60, batch_size=2, warmup_iters=10, lr_steps=(50,),
                                 log_every=10, checkpoint_every=1000),
        num_workers=0, eval=EvalConfig(split="train", speed_warmup=0))
    run_dir = tmp_path_factory.mktemp("overfit") / "run"
    return config, run_dir, run_training(config, run_dir, progress=False)


@pytest.mark.slow
def test_smoke_model_overfits_two_images(overfit_run):
    config, run_dir, result = overfit_run
    rows = read_metrics(run_dir)
    assert [row["iter"] for row in rows] == [10, 20, 30, 40, 50, 60]
    first, last = rows[0], rows[-1]
    assert last["loss"] < 0.5 * first["loss"]
    for name in ("rpn_cls", "stage0_cls", "stage0_mask"):
        assert last[name] < first[name], name

    assert result == read_result(run_dir)
    assert result["metrics"]["bbox"]["AP"] > 40.0
    assert result["metrics"]["segm"]["AP"] > 30.0
    assert result["speed"]["images_per_s"] > 0
    assert result["config"]["model"]["stages"] == 1 and result["run_id"] == config.run_id()
    for name in ("config.json", "env.json", "log.txt", "metrics.jsonl", "checkpoints/last.pth"):
        assert (run_dir / name).exists(), name

    detections = read_detections(run_dir)
    assert detections and {d["image_id"] for d in detections} <= {1, 2}
    assert all(len(d["bbox"]) == 4 and "counts" in d["segmentation"] for d in detections)

    records = _iou_records(run_dir)
    assert records.tags == ["inference", "inference/matched", "train/stage0"]
    assert records.count("inference") == len(detections)
    assert records.count("train/stage0") > 0
    # An overfitted detector's best detections sit on the objects.
    assert records.count("inference/matched") >= 2

    # A finished run is not trained again.
    mtime = (run_dir / "result.json").stat().st_mtime_ns
    assert run_training(config, run_dir, progress=False) == result
    assert (run_dir / "result.json").stat().st_mtime_ns == mtime


def test_evaluate_cli_reproduces_the_run_metrics(overfit_run, tmp_path, capsys):
    config, run_dir, result = overfit_run
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    (copy / "result.json").unlink()
    assert evaluate_main(["--run", str(copy), "--no-progress"]) == 0
    again = read_result(copy)
    assert again["metrics"] == result["metrics"]
    assert again["timing"]["train_s"] == result["timing"]["train_s"]
    assert IoURecords.load(copy).tags == ["inference", "inference/matched", "train/stage0"]

    # The same weights as a plain model checkpoint, evaluated without the run directory.
    model = build_run_model(config, build_dataset(config, "train", train=True))
    model.load_state_dict(load_checkpoint(RunDir(run_dir).last_checkpoint)["model"])
    weights = save_weights(tmp_path / "weights.pth", model)
    out = tmp_path / "eval"
    assert evaluate_main(["--checkpoint", str(weights), "--preset", "mask_rcnn_r18_smoke", "--data",
                          config.data_root, "--image-scale", *map(str, SIZE), "--eval-split", "train",
                          "--workers", "0", "--out", str(out), "--no-progress"]) == 0
    assert read_result(out)["metrics"] == result["metrics"]
    assert '"metrics"' in capsys.readouterr().out
    with pytest.raises(SystemExit):
        evaluate_main(["--run", str(copy), "--preset", "scnet_r50"])


# ------------------------------------------------------------------------------------ exact resume

def _resume_config(data: Path) -> RunConfig:
    # 2 iterations per epoch: the kill lands after epoch 0; the resumed half crosses an lr step.
    return RunConfig(
        preset="scnet_r18_smoke", data_root=str(data), scale="smoke", image_scale=SIZE, seed=7,
        schedule=stable_schedule(name="resume", max_iters=4, batch_size=2, warmup_iters=2, lr_steps=(3,),
                                 log_every=3, checkpoint_every=2),
        num_workers=0, eval=EvalConfig(enabled=False))


@pytest.mark.slow
def test_killed_run_resumes_to_identical_weights(shapes4, tmp_path):
    config = _resume_config(shapes4)
    straight_dir, killed_dir = tmp_path / "straight", tmp_path / "killed"
    run_training(config, straight_dir, progress=False)

    write_config(killed_dir, config.to_dict())
    process = subprocess.Popen(
        [sys.executable, "-m", "scnet.train", "--config", str(killed_dir / "config.json"), "--no-progress"],
        cwd=REPO, env=_subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    checkpoint = RunDir(killed_dir).last_checkpoint
    deadline = time.monotonic() + 240
    while not checkpoint.exists():
        assert process.poll() is None, process.communicate()[0].decode()[-3000:]
        assert time.monotonic() < deadline, "no checkpoint within 240 s"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert load_checkpoint(checkpoint)["iteration"] == 2, "the kill came too late to interrupt the run"
    assert not (killed_dir / "result.json").exists()

    result = run_training(config, killed_dir, progress=False)
    assert result["train"]["resumed_from"] == 2

    straight = load_checkpoint(RunDir(straight_dir).last_checkpoint)
    resumed = load_checkpoint(RunDir(killed_dir).last_checkpoint)
    assert straight["iteration"] == resumed["iteration"] == 4
    assert straight["model"].keys() == resumed["model"].keys()
    for name, tensor in straight["model"].items():
        assert torch.equal(tensor, resumed["model"][name]), name
    momentum = [(s["momentum_buffer"], r["momentum_buffer"]) for s, r in zip(
        straight["optimizer"]["state"].values(), resumed["optimizer"]["state"].values())]
    assert momentum and all(torch.equal(s, r) for s, r in momentum)

    # Same losses logged at every iteration, and the same IoU histograms.
    def losses(run_dir):
        return [(row["iter"], row["loss"]) for row in read_metrics(run_dir)]
    assert losses(killed_dir) == losses(straight_dir) and [i for i, _ in losses(straight_dir)] == [3, 4]
    a, b = _iou_records(straight_dir), _iou_records(killed_dir)
    assert a.tags == b.tags == ["train/stage2"]  # SCNet: only the last stage feeds the mask branch
    assert np.array_equal(a.counts("train/stage2"), b.counts("train/stage2"))


# -------------------------------------------------------------------------------------------- DDP

def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_two_process_ddp_matches_one_process(shapes4, tmp_path):
    config = RunConfig(
        preset="cascade_mask_rcnn_r18_smoke", data_root=str(shapes4), scale="smoke", image_scale=SIZE, seed=3,
        schedule=stable_schedule(name="ddp", max_iters=2, batch_size=2, warmup_iters=1, lr_steps=(), log_every=1,
                                 checkpoint_every=100),
        num_workers=0, eval=EvalConfig(enabled=False))
    one_dir, two_dir = tmp_path / "one", tmp_path / "two"
    run_training(config, one_dir, progress=False)

    write_config(two_dir, config.to_dict())
    env = _subprocess_env()
    env.pop("RANK", None)
    completed = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
         "--master_port", str(_free_port()), "-m", "scnet.train", "--config", str(two_dir / "config.json"),
         "--no-progress"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]

    result = read_result(two_dir)
    assert result["train"]["processes"] == 2
    one, two = read_metrics(one_dir), read_metrics(two_dir)
    assert [r["iter"] for r in two] == [1, 2]
    # Iteration 1: same weights, same global batch; the losses differ only through per-image vs.
    # per-batch normalisation and each process's own random sampling of anchors and RoIs.
    assert two[0]["loss"] == pytest.approx(one[0]["loss"], rel=0.1)
    for name in ("rpn_cls", "stage0_cls"):
        assert two[0][name] == pytest.approx(one[0][name], rel=0.15), name
    # Both processes contributed IoUs of all three cascade stages.
    records = _iou_records(two_dir)
    assert records.tags == ["train/stage0", "train/stage1", "train/stage2"]
    single = _iou_records(one_dir)
    assert records.count("train/stage0") == pytest.approx(single.count("train/stage0"), rel=0.5)
    assert two[1]["loss"] == pytest.approx(one[1]["loss"], rel=0.1)
    # The weights moved from the (seeded, shared) initial ones and stayed finite.
    trained = load_checkpoint(RunDir(two_dir).last_checkpoint)["model"]
    initial = build_run_model(config, build_dataset(config, "train", train=True)).state_dict()
    assert all(torch.isfinite(t).all() for t in trained.values() if t.is_floating_point())
    changed = [k for k in trained if not torch.equal(trained[k], initial[k])]
    assert any(k.startswith("backbone") for k in changed) and any("mask" in k for k in changed)
