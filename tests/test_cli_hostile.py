"""Careless commands (issue 15, items 4-10): each ends in one `error:` line, exit 2, before any work,
with nothing written or overwritten. A two-iteration smoke run on CPU serves as the run to damage."""
from __future__ import annotations

import json
import re
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from experiments.run import main as harness_main
from scnet import build_model
from scnet.checkpoints import save_weights
from scnet.engine.checkpoint import load_checkpoint
from scnet.engine.run_lock import INHERITED_LOCK_ENV, RunLock
from scnet.evaluate import main as evaluate_main
from scnet.predict import main as predict_main
from scnet.records.result import read_result
from scnet.records.run_dir import RunDir
from scnet.train import main as train_main

from tests.test_run_dir_safety import SIZE, _eval_args as eval_args, _train_args  # noqa: F401
from tests.test_run_dir_safety import data, finished, one_thread  # noqa: F401 (fixtures: the same smoke run)

PRESET = "mask_rcnn_r18_smoke"
ORACLE_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "oracle" / "train" / "coffee"


def train_args(data: Path, out: Path, *extra: str, device: str | None = "cpu") -> list[str]:
    args = _train_args(data, out, *extra)
    if device is None:  # no --device: the run chooses (and may require a GPU)
        at = args.index("--device")
        del args[at:at + 2]
    return args


def copy_run(run_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run_dir, tmp_path / "copy"))


def one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and "Traceback" not in err, err
    return err


def unfinish(run_dir: Path, **changes) -> None:
    """Rewrite the run's checkpoint as one of iteration 1 of 2 (so the run resumes), with `changes`
    (None removes a field)."""
    path = RunDir(run_dir).last_checkpoint
    state = load_checkpoint(path)
    (run_dir / "result.json").unlink(missing_ok=True)
    state["iteration"] = 1
    for key, value in changes.items():
        if value is None:
            state.pop(key)
        else:
            state[key] = value
    torch.save(state, path)


# ------------------------------------------------------------- item 4: training checkpoint fields

@pytest.mark.slow
def test_a_checkpoint_missing_a_field_is_one_line_on_resume(data, finished, tmp_path, capsys):
    run = copy_run(finished, tmp_path)
    unfinish(run, optimizer=None)
    assert train_main(train_args(data, run)) == 2
    assert "field 'optimizer' is missing" in one_line(capsys)


def test_a_checkpoint_missing_a_field_is_one_line_in_evaluate(finished, tmp_path, capsys):
    run = copy_run(finished, tmp_path)
    state = load_checkpoint(RunDir(run).last_checkpoint)
    del state["iou_recorder"]
    torch.save(state, RunDir(run).last_checkpoint)
    before = (run / "result.json").read_bytes()
    assert evaluate_main(["--run", str(run), "--no-progress", "--device", "cpu", "--workers", "0"]) == 2
    assert "field 'iou_recorder' is missing" in one_line(capsys)
    assert (run / "result.json").read_bytes() == before


def test_non_finite_weights_are_named_not_blamed_on_the_learning_rate(data, finished, tmp_path, capsys):
    run = copy_run(finished, tmp_path)
    state = load_checkpoint(RunDir(run).last_checkpoint)
    model = dict(state["model"])
    model["rpn.conv.weight"] = torch.full_like(model["rpn.conv.weight"], float("nan"))
    unfinish(run, model=model)
    assert train_main(train_args(data, run)) == 2
    err = one_line(capsys)
    assert "'rpn.conv.weight'" in err and "NaN or infinite" in err and "learning rate" not in err
    assert str(RunDir(run).last_checkpoint) in err


def test_a_class_count_beyond_the_bound_is_refused_before_the_model_is_built(tmp_path, capsys):
    """The class count read from a file's classifier (or given) sizes the model: bounded, and refused
    before anything is allocated. A stride-0 view (10**6 rows from one float) is refused outright."""
    state = build_model(PRESET).state_dict()
    state["roi_heads.box_heads.0.classifier.weight"] = torch.zeros(1).expand(10 ** 6 + 1, 256)
    path = tmp_path / "huge.pth"
    torch.save(state, path)
    image = tmp_path / "photo.png"
    Image.fromarray(np.zeros((40, 60, 3), dtype=np.uint8)).save(image)
    args = ["--preset", PRESET, "--checkpoint", str(path), "--image", str(image), "--out", str(tmp_path / "d.json")]
    assert predict_main(args) == 2
    assert "more elements than its data in the file" in one_line(capsys)
    state["roi_heads.box_heads.0.classifier.weight"] = torch.zeros(10 ** 6 + 1, 1)
    torch.save(state, path)
    assert predict_main(args) == 2
    assert "num_classes=1000000 is above 10,000" in one_line(capsys)
    assert predict_main(args + ["--num-classes", "100000000"]) == 2
    assert "num_classes=100000000 is above 10,000" in one_line(capsys)
    assert not (tmp_path / "d.json").exists()


# ---------------------------------------------------------------------------- item 5: run lock

def test_a_second_train_or_evaluate_on_a_held_run_is_refused(data, finished, tmp_path, capsys):
    run = copy_run(finished, tmp_path)
    (run / "result.json").unlink()
    with RunLock(run):
        assert train_main(train_args(data, run)) == 2
        assert "locked by another process" in one_line(capsys)
        assert evaluate_main(["--run", str(run), "--no-progress", "--device", "cpu"]) == 2
        assert "locked by another process" in one_line(capsys)
    assert not (run / "result.json").exists()
    fresh = tmp_path / "fresh"
    with RunLock(fresh):
        assert train_main(train_args(data, fresh)) == 2
        one_line(capsys)
    assert sorted(p.name for p in fresh.iterdir()) == ["run.lock"]


@pytest.mark.slow
def test_a_lock_handed_down_by_the_local_executor_is_used(data, tmp_path, monkeypatch):
    run = tmp_path / "run"
    with RunLock(run) as lock:
        monkeypatch.setenv(INHERITED_LOCK_ENV, str(lock.fileno()))
        assert train_main(train_args(data, run)) == 0
    assert read_result(run)["status"] == "done"


# ------------------------------------------------------------------------------ item 6: --out

@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    return save_weights(tmp_path_factory.mktemp("w") / "m.pth", build_model(PRESET), preset=PRESET)


@pytest.mark.slow
def test_predict_refuses_an_existing_file_and_any_run_folder(weights, finished, tmp_path, capsys):
    image = tmp_path / "photo.png"
    Image.fromarray(np.zeros((40, 60, 3), dtype=np.uint8)).save(image)
    existing = tmp_path / "dets.json"
    existing.write_text("mine")
    args = ["--checkpoint", str(weights), "--image", str(image), "--device", "cpu"]
    assert predict_main(args + ["--out", str(existing)]) == 2
    assert "the file exists" in one_line(capsys) and existing.read_text() == "mine"
    result = finished / "result.json"
    before = result.read_bytes()
    for out in (result, finished / "new.json"):
        assert predict_main(args + ["--out", str(out), "--force"]) == 2
        assert "is a run directory" in one_line(capsys)
    assert result.read_bytes() == before and not (finished / "new.json").exists()
    assert predict_main(args + ["--out", str(existing), "--force"]) == 0
    assert existing.read_text().startswith("[")


@pytest.mark.skipif(not ORACLE_DATA.is_dir(), reason="shared/reference is not beside the repo")
def test_train_step_checks_out_before_the_work(weights, finished, tmp_path, capsys):
    from scnet.train_step import main as step_main

    def step(out, *extra):
        return step_main(["--preset", PRESET, "--checkpoint", str(tmp_path / "absent.pth"), "--data",
                          str(ORACLE_DATA), "--image-id", "1", "--flip", "off", "--sampler", "all", "--out",
                          str(out), *extra])

    existing = tmp_path / "step.json"
    existing.write_text("mine")
    assert step(existing) == 2  # refused for the file, before the absent checkpoint is looked at
    assert "the file exists" in one_line(capsys) and existing.read_text() == "mine"
    assert step(finished / "result.json", "--force") == 2
    assert "is a run directory" in one_line(capsys)


# ------------------------------------------------------------------------- item 8: train_step inputs

@pytest.mark.skipif(not ORACLE_DATA.is_dir(), reason="shared/reference is not beside the repo")
@pytest.mark.parametrize("rows, match", [
    ("[[0, 0, NaN, 10]]", "finite numbers"),
    ("[[0, 0, Infinity, 10]]", "finite numbers"),
    ("[[0, 0, 1e12, 10]]", "beyond \\+-100,000 pixels"),
    ("[" + ",".join(["[0,0,1,1]"] * 100_001) + "]", "100,001 boxes, more than the limit of 100,000"),
    ("[" * 100_000 + "]" * 100_000, "cannot read it as JSON"),
])
def test_train_step_proposals_are_bounded(rows, match, weights, tmp_path, capsys):
    from scnet.train_step import main as step_main

    proposals = tmp_path / "p.json"
    proposals.write_text(rows)
    code = step_main(["--preset", PRESET, "--checkpoint", str(weights), "--data", str(ORACLE_DATA), "--image-id",
                      "1", "--flip", "off", "--sampler", "all", "--proposals", str(proposals), "--out",
                      str(tmp_path / "o.json")])
    assert code == 2
    assert re.search(match, one_line(capsys))
    assert not (tmp_path / "o.json").exists()


@pytest.mark.parametrize("seed", [str(2 ** 64), "-1"])
def test_train_step_seed_must_fit_64_bits(seed, capsys):
    from scnet.train_step import main as step_main

    with pytest.raises(SystemExit) as exit_:
        step_main(["--preset", PRESET, "--checkpoint", "c", "--data", "d", "--image-id", "1", "--flip", "off",
                   "--sampler", "all", "--seed", seed, "--out", "o.json"])
    assert exit_.value.code == 2 and "2**64 - 1" in one_line(capsys)


# ------------------------------------------------------------------- item 7: expected conditions

@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a usable GPU")
def test_paper_scale_without_a_gpu_is_one_line_before_anything(data, tmp_path, capsys):
    out = tmp_path / "run"
    assert train_main(train_args(data, out, "--scale", "paper", device=None)) == 2
    assert "needs a GPU (paper-scale training)" in one_line(capsys)
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a usable GPU")
def test_harness_checks_the_gpus_once_before_writing_any_run(tmp_path, capsys):
    runs = tmp_path / "runs"
    code = harness_main(["table2", "--scale", "paper", "--executor", "local", "--data", str(tmp_path / "coco"),
                         "--runs-dir", str(runs), "--no-progress"])
    assert code == 2
    assert "--scale paper --executor local" in one_line(capsys)
    assert not runs.exists()


def test_a_bad_backbone_file_stops_the_run_before_its_folder_is_written(data, tmp_path, capsys):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    out = tmp_path / "run"
    assert train_main(train_args(data, out, "--backbone-weights", str(bad))) == 2
    assert "bad.pth: not readable as a plain PyTorch state dict" in one_line(capsys)
    assert not out.exists()
    nan = tmp_path / "nan.pth"
    torch.save({"conv1.weight": torch.full((2,), float("nan"))}, nan)
    assert train_main(train_args(data, out, "--backbone-weights", str(nan))) == 2
    assert "NaN or infinite" in one_line(capsys)
    assert not out.exists()


def test_ctrl_c_says_how_to_resume(data, tmp_path, capsys, monkeypatch):
    import scnet.engine.runner as runner

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "run_training", interrupted)
    assert train_main(train_args(data, tmp_path / "run")) == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err and "run the same command again to resume" in err


def test_ctrl_c_in_predict_and_train_step_is_one_line_and_writes_nothing(tmp_path, capsys, monkeypatch):
    import scnet.predict
    import scnet.train_step

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(scnet.predict, "read_bgr", interrupted)
    monkeypatch.setattr(scnet.train_step, "check_new_output_file", interrupted)
    out = tmp_path / "out.json"
    assert predict_main(["--checkpoint", "c.pth", "--image", "i.png", "--device", "cpu", "--out", str(out)]) == 130
    assert scnet.train_step.main(["--preset", "mask_rcnn_r18_smoke", "--checkpoint", "c.pth", "--data", str(tmp_path),
                                  "--image-id", "1", "--flip", "off", "--sampler", "all", "--out", str(out)]) == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("interrupted: nothing was written") == 2
    assert not out.exists()


def test_a_run_folder_made_unwritable_mid_run_is_one_line(data, tmp_path, capsys, monkeypatch):
    import scnet.engine.run_log as run_log

    real_open = open

    def refuse_metrics(path, *args, **kwargs):
        if str(path).endswith("metrics.jsonl"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(run_log, "open", refuse_metrics, raising=False)
    out = tmp_path / "run"
    assert train_main(train_args(data, out)) == 2
    err = one_line(capsys)
    assert "metrics.jsonl: could not be written (Permission denied)" in err and "resumes" in err


@pytest.mark.parametrize("mode", ["--status", "--dry-run"])
def test_runs_dir_that_is_a_file_is_one_line(mode, tmp_path, capsys):
    (tmp_path / "runs").write_text("x")
    assert harness_main(["table2", mode, "--runs-dir", str(tmp_path / "runs"), "--data", str(tmp_path / "d")]) == 2
    assert "is a file, not a folder" in one_line(capsys)


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_images_per_s_per_gpu_must_be_finite(value, tmp_path, capsys):
    assert harness_main(["table2", "--dry-run", f"--images-per-s-per-gpu={value}", "--runs-dir",
                         str(tmp_path / "runs")]) == 2
    assert "positive finite number" in one_line(capsys)


def test_a_nul_byte_in_a_profile_string_is_refused(tmp_path):
    from experiments.profile import ProfileError, load_profile

    profile = tmp_path / "p.toml"
    profile.write_text('partition = "gpu\\u0000x"\n')
    with pytest.raises(ProfileError, match="'partition' holds a NUL byte or a control character"):
        load_profile(profile)
    profile.write_text('setup = ["module load cuda\\u0000"]\n')
    with pytest.raises(ProfileError, match="'setup' holds a NUL byte"):
        load_profile(profile)


def test_a_too_long_file_name_in_the_dataset_is_one_line(data, tmp_path, capsys):
    root = Path(shutil.copytree(data, tmp_path / "data"))
    annotations = root / "annotations" / "instances_train2017.json"
    content = json.loads(annotations.read_text())
    content["images"][0]["file_name"] = "x" * 300 + ".png"
    annotations.write_text(json.dumps(content))
    assert train_main(train_args(root, tmp_path / "run")) == 2
    assert "name of over 255 bytes" in one_line(capsys)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("stds", ["[[0.1,0.1],[0.1,0.1],[0.1,0.1]]", "[[0.1,0.1,0.2,0.2,0.3]]"])
def test_bbox_target_stds_of_the_wrong_length_is_one_line(stds, data, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        train_main(train_args(data, tmp_path / "run", "--set", f"bbox_target_stds={stds}"))
    assert exit_.value.code == 2
    assert "bbox_target_stds" in one_line(capsys)
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- item 9: leftovers

def test_evaluate_with_a_bad_checkpoint_leaves_no_folder(data, tmp_path, capsys):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"junk")
    out = tmp_path / "new" / "eval"
    assert evaluate_main(eval_args(data, bad, out)) == 2
    assert "could not be read as a PyTorch checkpoint" in one_line(capsys)
    assert not (tmp_path / "new").exists()
    wrong = save_weights(tmp_path / "htc.pth", build_model("htc_r18_smoke"))
    assert evaluate_main(eval_args(data, wrong, out)) == 2
    assert "does not fit" in one_line(capsys)
    assert not (tmp_path / "new").exists()


def test_stale_checkpoint_temporaries_are_removed_when_the_run_starts(data, finished, tmp_path):
    run = copy_run(finished, tmp_path)
    unfinish(run)
    stale = RunDir(run).last_checkpoint.parent / ".last.pth.k2j3h4.tmp"
    stale.write_bytes(b"half a checkpoint")
    assert train_main(train_args(data, run)) == 0
    assert not stale.exists()
    assert sorted(p.name for p in RunDir(run).last_checkpoint.parent.iterdir()) == ["last.pth"]


# ------------------------------------------------------------------------- item 10: misleading texts

def test_paths_are_described_as_what_they_are(data, tmp_path, capsys):
    (tmp_path / "folder.pth").mkdir()
    assert harness_main(["table2", "--dry-run", "--backbone-weights", str(tmp_path / "folder.pth"),
                         "--runs-dir", str(tmp_path / "runs")]) == 2
    err = one_line(capsys)
    assert "--backbone-weights" in err and "is a folder" in err and "--set" not in err
    (tmp_path / "link").symlink_to(tmp_path / "gone")
    assert train_main(train_args(data, tmp_path / "link" / "run")) == 2
    assert "is a symbolic link to" in one_line(capsys)


def test_fetch_does_not_blame_the_network_for_a_file_in_the_way(tmp_path, capsys, monkeypatch):
    from scnet.weights.fetch import main as fetch_main

    (tmp_path / "hub").mkdir()
    (tmp_path / "hub" / "checkpoints").write_text("in the way")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    assert fetch_main(["fetch", "--preset", "scnet_r50"]) == 2
    err = one_line(capsys)
    assert "is a file, not a folder" in err and "network" not in err


def test_dataset_errors_are_one_line_with_file_names_escaped(data, tmp_path, capsys):
    root = Path(shutil.copytree(data, tmp_path / "data"))
    annotations = root / "annotations" / "instances_train2017.json"
    content = json.loads(annotations.read_text())
    content["images"][0]["file_name"] = "evil\x1b[2J\x07name.png"
    annotations.write_text(json.dumps(content))
    assert train_main(train_args(root, tmp_path / "run")) == 2
    err = one_line(capsys)
    assert "evil\\x1b[2J\\x07name.png" in err and "\x1b" not in err and "\x07" not in err
    # a semantic preset reads the data while its config is made: still one line, not a usage block
    for split in ("train", "val"):
        (root / "annotations" / f"instances_{split}2017.json").write_text("{")
    try:
        code = evaluate_main(["--checkpoint", "c.pth", "--preset", "scnet_r18_smoke", "--data", str(root), "--out",
                              str(tmp_path / "o")])
    except SystemExit as exit_:
        code = exit_.code
    assert code == 2
    assert "2017.json" in one_line(capsys)


def test_finite_numbers_in_model_configs():
    from scnet.config import ConfigError
    from scnet.presets import resolve_config

    for flags in ({"glbctx_weight": math.inf}, {"stage_loss_weights": [1.0, math.nan, 0.25]},
                  {"stage_iou_thresholds": [[0.5], [0.6], [0.7]]}):
        with pytest.raises(ConfigError):
            resolve_config("scnet_r50", **flags)
