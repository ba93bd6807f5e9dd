"""GPUs: every way a profile asks for them is one task per GPU, checked against the batch at
submission; the local executor trains torchrun-style on all visible GPUs; --dry-run shows the cost.

No GPU is needed: the local multi-process path runs as gloo ranks on the CPU, and visible GPUs are
simulated where only their count matters.
"""
from __future__ import annotations

import stat
from pathlib import Path

import pytest

from experiments.executors import local
from experiments.executors.base import cpus_of_this_task, loader_workers, train_in_this_process
from experiments.executors.local import LocalExecutor, gpu_groups
from experiments.profile import ProfileError, profile_from_dict
from experiments.plan import local_gpu_groups
from experiments.runspec import UsageError, build_matrix, parse_overrides
from experiments.status import State, read_attempt, run_status
from scnet.records.result import read_result
from scnet.records.run_dir import write_config

REPO = Path(__file__).resolve().parents[1]
TINY = ["--set", "schedule.max_iters=2", "--set", "schedule.checkpoint_every=1", "--set", "schedule.log_every=1",
        "--set", "schedule.warmup_iters=1", "--set", "schedule.batch_size=2", "--set", "image_scale=[128,96]",
        "--set", "eval.enabled=false", "--set", "num_workers=0"]


# ----------------------------------------------------------------------------------- profile spellings

@pytest.mark.parametrize("raw, tasks, asked", [
    ({"gpus_per_node": 8}, 8, ("gpus_per_node", 8)),
    ({"gpus_per_node": "h100:8"}, 8, ("gpus_per_node", "h100:8")),
    ({"gres": "gpu:8"}, 8, ("gres", "gpu:8")),
    ({"gres": "gpu:a100:4,nvme:1"}, 4, ("gres", "gpu:a100:4,nvme:1")),
    ({"gres": "gpu"}, 1, ("gres", "gpu:1")),
    ({"gpus_per_task": 8}, 8, ("gpus_per_node", 8)),
    ({"gpus": 16, "nodes": 2}, 8, ("gpus_per_node", 8)),
    ({"gpus": "a100:4"}, 4, ("gpus_per_node", "a100:4")),
])
def test_every_gpu_spelling_is_one_task_per_gpu(raw, tasks, asked):
    profile = profile_from_dict(raw, "p.toml")
    params = profile.submitit_parameters("x")
    assert params["ntasks_per_node"] == tasks and profile.world_size == tasks * raw.get("nodes", 1)
    assert params[asked[0]] == asked[1]
    assert {"gres", "gpus_per_node"} - {asked[0]} - set(params) == {"gres", "gpus_per_node"} - {asked[0]}
    flag = f"--{asked[0].replace('_', '-')}={asked[1]}"
    assert flag in profile.sbatch_flags() and f"--ntasks-per-node={tasks}" in profile.sbatch_flags()


@pytest.mark.parametrize("raw, expected", [
    ({"gres": "gpu:8", "gpus_per_node": 8}, "GPUs are asked for twice"),
    ({"gpus": 12, "nodes": 8}, "does not split evenly over 8 nodes"),
    ({"gres": "gpu:a:b:8"}, "is not gpu[:TYPE][:COUNT]"),
    ({"gpus_per_node": "eight"}, "is not a GPU count"),
    ({"gpus_per_task": 0}, "'gpus_per_task' must be >= 1"),
    ({"sbatch": {"gres": "gpu:8"}}, "write `gres = ...`"),
    ({"sbatch": {"gpus-per-task": 1}}, "write `gpus_per_task = ...`"),
    ({"sbatch": {"ntasks-per-node": 8}}, "write `gpus_per_node = ...`"),
])
def test_gpu_mistakes_are_named(raw, expected):
    with pytest.raises(ProfileError) as info:
        profile_from_dict(raw, "cluster.toml")
    assert expected in str(info.value) and "cluster.toml" in str(info.value)


def test_srun_gets_the_cpus_and_ends_all_tasks_when_one_fails(tmp_path):
    from submitit.slurm.slurm import _make_sbatch_string

    params = profile_from_dict({"gres": "gpu:8", "cpus_per_task": 8}, "p").submitit_parameters("scnet")
    script = _make_sbatch_string(command="python -u job.py", folder=tmp_path, **params)
    assert "#SBATCH --gres=gpu:8" in script and "#SBATCH --ntasks-per-node=8" in script
    assert "#SBATCH --cpus-per-task=8" in script
    srun = next(line for line in script.splitlines() if line.startswith("srun "))
    assert "--cpus-per-task=8" in srun and "--kill-on-bad-exit=1" in srun


def test_loaders_follow_the_task_cpus(tmp_path, monkeypatch):
    assert cpus_of_this_task({"SLURM_CPUS_PER_TASK": "8"}) == 8 and cpus_of_this_task({}) is None
    assert loader_workers(8) == 7 and loader_workers(1) == 0
    run_dir = tmp_path / "run"
    write_config(run_dir, build_matrix(["figure1"], "smoke", tmp_path)[0].config.to_dict())
    seen = {}
    import scnet.engine

    monkeypatch.setattr(scnet.engine, "run_training", lambda config, out, progress: seen.setdefault("c", config))
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "6")
    train_in_this_process(run_dir, progress=False)
    assert seen["c"].num_workers == 5


# -------------------------------------------------------------------------------- submission checks

def test_gpus_that_do_not_divide_the_batch_are_refused_before_submission(harness, tmp_path):
    (tmp_path / "p.toml").write_text('partition = "debug"\ngres = "gpu:3"\n')
    done = harness("figure1", "--profile", str(tmp_path / "p.toml"), "--runs-dir", str(tmp_path / "runs"),
                   "--data", str(tmp_path / "shapes"))
    assert done.returncode == 2, done.stderr
    assert "schedule.batch_size=2 (global) is not divisible by the run's 3 processes" in done.stderr
    assert "1 node(s) x 3 task(s), profile" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "runs").exists() and not (tmp_path / "shapes").exists()  # nothing submitted or made


def _fake_coco(root: Path) -> Path:
    for folder in ("annotations", "train2017", "val2017"):
        (root / folder).mkdir(parents=True)
    for split in ("train", "val"):
        (root / "annotations" / f"instances_{split}2017.json").write_text("{}")
    return root


def test_paper_dry_run_shows_each_jobs_request_and_the_gpu_hours(harness, tmp_path):
    coco = _fake_coco(tmp_path / "coco")
    done = harness("table2", "--dry-run", "--scale", "paper", "--data", str(coco), "--runs-dir",
                   str(tmp_path / "runs"), "--profile", str(REPO / "slurm" / "profiles" / "example.toml"))
    assert done.returncode == 0, done.stderr
    out = done.stdout
    # 20 epochs x (117,266 // 16) iterations of 16 images at 4 images/s/GPU: 162.9 GPU-h a run.
    asks = ("asks: 1 node(s), 8 task(s), 8 GPU(s), 64 CPUs (8 per task), 400G per node, 1-00:00:00 per job "
            "(sbatch, profile")
    assert out.count(asks) == 6
    assert out.count("cost: 146,580 iterations x 16 images: ~163 GPU-h (~20.4 h on 8 GPU(s), 1 job(s)") == 6
    assert "total: ~977 GPU-h for 6 run(s); still to run: ~977 GPU-h for 6 run(s); at most 48 GPUs at once" in out
    assert "seeds: 1; each extra seed (--seeds 2, ...) adds ~977 GPU-h for 6 run(s)" in out
    assert "assumed: 4 training images/s per GPU" in out and "117,266 COCO train2017 images" in out
    faster = harness("table2", "--dry-run", "--scale", "paper", "--data", str(coco), "--runs-dir",
                     str(tmp_path / "runs"), "--profile", str(REPO / "slurm" / "profiles" / "example.toml"),
                     "--images-per-s-per-gpu", "8")
    assert "total: ~489 GPU-h" in faster.stdout and "assumed: 8 training images/s per GPU" in faster.stdout


def test_paper_dry_run_warns_when_the_time_limit_needs_more_requeues_than_allowed(harness, tmp_path):
    coco = _fake_coco(tmp_path / "coco")
    (tmp_path / "p.toml").write_text('gpus_per_node = 8\ntime = "04:00:00"\nmax_requeue = 2\n')
    done = harness("table3", "--dry-run", "--scale", "paper", "--data", str(coco), "--runs-dir",
                   str(tmp_path / "runs"), "--profile", str(tmp_path / "p.toml"))
    assert done.returncode == 0, done.stderr
    assert "6 job(s) of the time limit" in done.stdout
    assert "WARNING: needs 5 requeues, more than max_requeue=2" in done.stdout


# ------------------------------------------------------------------------------ local, several GPUs

def test_paper_scale_takes_every_visible_gpu_shared_over_jobs(monkeypatch):
    eight = [str(i) for i in range(8)]
    monkeypatch.setattr(local, "visible_gpus", lambda: eight)
    assert local_gpu_groups("paper", 1, None) == [tuple(eight)]
    assert local_gpu_groups("paper", 2, None) == [tuple(eight[:4]), tuple(eight[4:])]
    assert local_gpu_groups("smoke", 2, None) is None  # smoke runs stay one process each
    assert local_gpu_groups("smoke", 1, 2) == [("0", "1")]
    with pytest.raises(UsageError, match="more runs at once than the 8 visible GPU"):
        local_gpu_groups("paper", 9, None)
    monkeypatch.setattr(local, "visible_gpus", lambda: [])
    assert local_gpu_groups("paper", 1, None) is None
    with pytest.raises(UsageError, match="no CUDA GPU is visible"):
        local_gpu_groups("paper", 1, 2)


def test_visible_gpus_follow_cuda_visible_devices(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    assert local.visible_gpus() == ["3", "5"]
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert local.visible_gpus() == ["0", "1"]


def test_each_rank_gets_torchrun_variables_and_its_group():
    executor = LocalExecutor(gpu_groups=gpu_groups([str(i) for i in range(8)], 4, 2), progress=False)
    assert executor.jobs == 2 and executor.processes_per_run == 4
    envs = executor._rank_envs(("4", "5", "6", "7"))
    assert [e["RANK"] for e in envs] == ["0", "1", "2", "3"] == [e["LOCAL_RANK"] for e in envs]
    assert {e["WORLD_SIZE"] for e in envs} == {"4"} and len({e["MASTER_PORT"] for e in envs}) == 1
    assert {e["CUDA_VISIBLE_DEVICES"] for e in envs} == {"4,5,6,7"}


FAILING_RANK = """#!/bin/sh
# stands in for python: rank 1 fails at once, rank 0 would wait (in a collective) for a long time
if [ "$RANK" = "1" ]; then echo "rank 1: dataset error" >&2; exit 3; fi
exec sleep 600
"""


def test_one_failed_rank_stops_the_others_and_fails_the_run(tmp_path):
    fake = tmp_path / "fake-python"
    fake.write_text(FAILING_RANK)
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    run_dir = tmp_path / "run"
    write_config(run_dir, build_matrix(["figure1"], "smoke", tmp_path)[0].config.to_dict())
    ended = []
    LocalExecutor(python=str(fake), processes_per_run=2, progress=False).execute([run_dir], wait=True,
                                                                                on_end=ended.append)
    assert [s.state for s in ended] == [State.FAILED]
    attempt = read_attempt(run_dir)
    assert attempt["exit_code"] == 3  # rank 1's status; rank 0 (600 s) was stopped, or we would still wait
    assert "rank 1: dataset error" in (run_dir / "log.txt").read_text()
    assert run_status(run_dir).state is State.FAILED  # nothing left holding the lock


@pytest.fixture(scope="module")
def smoke_data(tmp_path_factory) -> Path:
    from scnet.data import ensure_synthetic

    return ensure_synthetic(tmp_path_factory.getbasetemp() / "smoke-shapes", seed=0)


@pytest.mark.slow
def test_two_ranks_train_one_run_on_the_cpu(tmp_path, smoke_data):
    """The multi-GPU path without GPUs: two gloo ranks, each half of the global batch."""
    spec = build_matrix(["figure1"], "smoke", smoke_data.resolve(), overrides=parse_overrides(TINY[1::2]))[0]
    run_dir = spec.run_dir(tmp_path / "runs")
    write_config(run_dir, spec.config.to_dict())
    ended = []
    LocalExecutor(processes_per_run=2, progress=False).execute([run_dir], wait=True, on_end=ended.append)
    assert [s.state for s in ended] == [State.DONE], (run_dir / "log.txt").read_text()[-3000:]
    result = read_result(run_dir)
    assert result["train"]["processes"] == 2 and result["timing"]["iterations"] == 2


def test_paper_dry_run_without_a_profile_describes_this_machine(harness, tmp_path, monkeypatch):
    coco = _fake_coco(tmp_path / "coco")
    monkeypatch.setattr(local, "visible_gpus", lambda: [])  # as CUDA_VISIBLE_DEVICES="" shows no GPU
    done = harness("table3", "--dry-run", "--scale", "paper", "--data", str(coco), "--runs-dir",
                   str(tmp_path / "runs"))
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("asks: this machine: one process per run, no GPU set aside") == 3
    assert done.stdout.count("~163 GPU-h (but no GPU is asked for here)") == 3
    assert "total: ~489 GPU-h for 3 run(s)" in done.stdout
