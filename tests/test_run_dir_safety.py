"""Run directories are never overwritten or misrepresented, and every mistake of train/evaluate is one
line with exit 2 before the work (issue 10, items 2-5, 12, 13). A two-iteration smoke run, CPU, seconds."""
from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import pytest
import torch

from scnet.data import ensure_synthetic
from scnet.engine import RunConfig, run_training
from scnet.engine.checkpoint import load_checkpoint, save_checkpoint
from scnet.evaluate import main as evaluate_main
from scnet.records.result import read_result
from scnet.records.run_dir import RunDir, read_config
from scnet.train import main as train_main

SIZE = (128, 96)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return ensure_synthetic(tmp_path_factory.mktemp("data") / "shapes", seed=1, train=2, val=1, size=SIZE)


def _train_args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["--preset", "mask_rcnn_r18_smoke", "--data", str(data), "--out", str(out), "--image-scale",
            *map(str, SIZE), "--max-iters", "2", "--batch-size", "2", "--checkpoint-every", "1", "--workers", "0",
            "--no-progress", "--device", "cpu", *extra]


def _eval_args(data: Path, checkpoint: Path, out: Path, preset: str = "mask_rcnn_r18_smoke") -> list[str]:
    return ["--checkpoint", str(checkpoint), "--preset", preset, "--data", str(data), "--image-scale",
            *map(str, SIZE), "--workers", "0", "--out", str(out), "--no-progress", "--device", "cpu"]


@pytest.fixture(scope="module")
def finished(data, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    assert train_main(_train_args(data, run_dir)) == 0
    return run_dir


def _copy(run_dir: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    return copy


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_evaluate_refuses_to_overwrite_a_finished_run(data, finished, tmp_path, capsys):
    run = _copy(finished, tmp_path)
    # run.lock names whoever held the run last (evaluate takes the lock too); the records are what count
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name != "run.lock"}
    assert evaluate_main(_eval_args(data, RunDir(run).last_checkpoint, run)) == 2
    assert "already holds finished results" in _one_line(capsys)
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name != "run.lock"} == before

    (run / "result.json").unlink()  # a training run without results: still not an evaluation folder
    assert evaluate_main(_eval_args(data, RunDir(run).last_checkpoint, run)) == 2
    assert "is a training run" in _one_line(capsys)
    assert not (run / "result.json").exists()


def test_evaluate_run_and_checkpoint_together_is_refused(finished, tmp_path):
    with pytest.raises(SystemExit) as exit_:
        evaluate_main(["--run", str(_copy(finished, tmp_path)), "--checkpoint", "other.pth"])
    assert exit_.value.code == 2


def test_evaluating_an_unfinished_run_does_not_mark_it_done(finished, tmp_path, capsys):
    run = _copy(finished, tmp_path)
    (run / "result.json").unlink()
    state = load_checkpoint(RunDir(run).last_checkpoint)
    state["iteration"] = 1
    save_checkpoint(RunDir(run).last_checkpoint, {k: v for k, v in state.items() if k not in ("format", "version")})
    assert evaluate_main(["--run", str(run), "--no-progress", "--device", "cpu"]) == 2
    assert "training is not finished (its checkpoint is at iteration 1 of 2)" in _one_line(capsys)
    assert not (run / "result.json").exists()


def test_train_refuses_a_finished_run_of_another_config(data, finished, tmp_path, capsys):
    run = _copy(finished, tmp_path)
    result = (run / "result.json").read_bytes()
    assert train_main(_train_args(data, run, "--seed", "3")) == 2
    assert "holds finished run" in _one_line(capsys)
    other_seed = RunConfig.from_dict(read_config(run)).replace(seed=3)
    (run / "config.json").unlink()  # the result's own config still says whose run it is
    with pytest.raises(ValueError, match="holds finished run"):
        run_training(other_seed, run, progress=False)
    assert (run / "result.json").read_bytes() == result
    # The same config is the finished run: its result comes back, nothing is trained.
    assert train_main(_train_args(data, run)) == 0


def test_a_corrupt_result_is_kept_aside_and_the_run_finishes(data, finished, tmp_path):
    run = _copy(finished, tmp_path)
    (run / "result.json").write_text('{"status": "do')
    result = run_training(RunConfig.from_dict(read_config(run)), run, progress=False)
    assert read_result(run) == result
    aside = list(run.glob("result.json.invalid-*"))
    assert len(aside) == 1 and aside[0].read_text() == '{"status": "do'


def test_weights_of_another_preset_are_one_line(data, finished, tmp_path, capsys):
    other = tmp_path / "other"
    RunDir(other).last_checkpoint.parent.mkdir(parents=True)
    shutil.copy(RunDir(finished).last_checkpoint, RunDir(other).last_checkpoint)
    args = _train_args(data, other)
    args[1] = "cascade_mask_rcnn_r18_smoke"
    assert train_main(args) == 2
    err = _one_line(capsys)
    assert "does not fit preset cascade_mask_rcnn_r18_smoke" in err and "mask_rcnn_r18_smoke checkpoint" in err

    assert evaluate_main(_eval_args(data, RunDir(finished).last_checkpoint, tmp_path / "eval",
                                    preset="cascade_mask_rcnn_r18_smoke")) == 2
    assert "does not fit preset cascade_mask_rcnn_r18_smoke" in _one_line(capsys)


def test_a_full_disk_keeps_the_previous_checkpoint(data, tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    real_save = torch.save
    calls = []

    def save_then_fill_the_disk(obj, handle, *args, **kwargs):
        calls.append(1)
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(obj, handle, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save_then_fill_the_disk)
    assert train_main(_train_args(data, run)) == 2
    err = _one_line(capsys)
    assert "last.pth: could not be written: No space left on device" in err and "unchanged" in err
    assert load_checkpoint(RunDir(run).last_checkpoint)["iteration"] == 1
    assert [p.name for p in RunDir(run).last_checkpoint.parent.iterdir()] == ["last.pth"]


def test_data_errors_are_one_line(tmp_path, capsys):
    data = tmp_path / "broken"
    (data / "annotations").mkdir(parents=True)
    (data / "annotations" / "instances_train2017.json").write_text("{")
    (data / "annotations" / "instances_val2017.json").write_text("{")
    assert train_main(_train_args(data, tmp_path / "run")) == 2
    assert "instances_train2017.json" in _one_line(capsys)


@pytest.mark.parametrize("tool", ["train", "evaluate"])
def test_an_out_under_a_file_is_refused_before_the_work(tool, data, finished, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    out = tmp_path / "file" / "run"
    if tool == "train":
        code = train_main(_train_args(data, out))
    else:
        code = evaluate_main(_eval_args(data, RunDir(finished).last_checkpoint, out))
    assert code == 2
    assert "is a file, not a folder" in _one_line(capsys)


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_out_is_refused_before_the_work(data, tmp_path, capsys):
    folder = tmp_path / "read_only"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        assert train_main(_train_args(data, folder / "run")) == 2
        assert "not a writable folder" in _one_line(capsys)
    finally:
        folder.chmod(0o700)


@pytest.mark.parametrize("device", ["gpu0", "cuda:99"])
def test_a_device_this_machine_lacks_is_a_usage_error(device, data, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        train_main(_train_args(data, tmp_path / "run") + ["--device", device])
    assert exit_.value.code == 2
    assert "--device" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_an_unwritable_folder_is_named_and_nothing_is_made(tmp_path, monkeypatch):
    """The read-only case as root sees it too: the probe write fails (root ignores permission bits)."""
    import tempfile

    from scnet.records.files import OutputError, check_writable_dir

    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    with pytest.raises(OutputError, match=r"is not a writable folder \(Permission denied\)"):
        check_writable_dir(tmp_path / "new" / "run", "--out")
    assert not (tmp_path / "new").exists()
