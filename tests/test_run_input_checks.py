"""A run refuses bad input before its first iteration, and the tools refuse out-of-range options (issue 10).

Items 6, 8, 9, 10, 11: mismatched train/val categories, an empty evaluation split and a broken val
file stop `run_training` before any checkpoint exists; a mistyped smoke `--data` is an error, not a
freshly generated dataset; --score-thr, mem_gb and the synthetic --size are range-checked.
"""
from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest

from scnet.data import DatasetError
from scnet.engine.run_config import EvalConfig, RunConfig
from tests.test_data_coco import coco_json, write_dataset

PRESET = "mask_rcnn_r18_smoke"


def _config(root: Path, **changes) -> RunConfig:
    return RunConfig(preset=PRESET, data_root=str(root), scale="smoke", num_workers=0, **changes)


def _train_refused(config: RunConfig, run_dir: Path) -> str:
    from scnet.engine.runner import run_training

    with pytest.raises(DatasetError) as info:
        run_training(config, run_dir, progress=False, device="cpu")
    assert not run_dir.exists()  # nothing written: not even the run folder
    return str(info.value)


def test_val_categories_differing_from_train_stop_the_run_before_training(tmp_path: Path) -> None:
    root = write_dataset(tmp_path / "d", coco_json(), split="train")
    val = coco_json()
    val["categories"] = val["categories"][:2]  # category 7 missing: labels would shift
    val["annotations"] = [a for a in val["annotations"] if a["category_id"] != 7]
    write_dataset(root, val, split="val")
    message = _train_refused(_config(root), tmp_path / "run")
    assert "instances_train2017.json and" in message and "instances_val2017.json" in message
    assert "ids only in the first: 7" in message


def test_empty_val_split_stops_the_run_before_training(tmp_path: Path) -> None:
    root = write_dataset(tmp_path / "d", coco_json(), split="train")
    write_dataset(root, {**coco_json(), "annotations": []}, split="val")
    message = _train_refused(_config(root), tmp_path / "run")
    assert "instances_val2017.json: the evaluation split 'val' has no annotation to evaluate against" in message


def test_broken_val_polygon_stops_the_run_before_training(tmp_path: Path) -> None:
    root = write_dataset(tmp_path / "d", coco_json(), split="train")
    val = copy.deepcopy(coco_json())
    val["annotations"][0]["segmentation"] = [[5.0, None, 15.0, 5.0, 15.0, 15.0]]
    write_dataset(root, val, split="val")
    message = _train_refused(_config(root), tmp_path / "run")
    assert "instances_val2017.json: annotations[0] (id 1): field 'segmentation[0]' holds None" in message


def test_evaluation_only_run_checks_its_split_too(tmp_path: Path) -> None:
    from scnet.engine.runner import evaluate_run

    root = write_dataset(tmp_path / "d", {**coco_json(), "annotations": []}, split="val")
    config = _config(root, eval=EvalConfig(split="val"))
    with pytest.raises(DatasetError, match="has no annotation to evaluate against"):
        evaluate_run(tmp_path / "eval", run_config=config, checkpoint=tmp_path / "absent.pth", progress=False,
                     device="cpu")


# ------------------------------------------------------------------ item 8: a mistyped smoke --data


def test_mistyped_smoke_data_is_not_generated(tmp_path: Path) -> None:
    typo = tmp_path / "data" / "shapse"
    message = _train_refused(_config(typo), tmp_path / "run")
    assert f"dataset folder {typo} does not exist" in message
    assert f"python -m scnet.data.synthetic --out {typo}" in message
    assert not typo.exists()


def test_only_the_default_smoke_path_is_generated_on_first_use(tmp_path: Path, monkeypatch) -> None:
    import scnet.data
    from scnet.data.location import is_default_synthetic_root
    from scnet.engine.runner import prepare_data

    made: list[Path] = []
    monkeypatch.setattr(scnet.data, "ensure_synthetic", lambda root, seed: made.append(Path(root)))
    monkeypatch.chdir(tmp_path)
    assert is_default_synthetic_root("data/shapes") and is_default_synthetic_root(tmp_path / "data" / "shapes")
    assert not is_default_synthetic_root("data/shape")
    prepare_data(_config(Path("data/shapes")))
    prepare_data(_config(tmp_path / "elsewhere"))
    assert made == [Path("data/shapes")]


def test_harness_refuses_a_mistyped_smoke_data_path(tmp_path: Path, capsys) -> None:
    from experiments.run import main

    typo = tmp_path / "shapse"
    code = main(["table2", "--data", str(typo), "--runs-dir", str(tmp_path / "runs"), "--out", str(tmp_path / "out"),
                 "--executor", "inline", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and f"error: --data: dataset folder {typo} does not exist" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not typo.exists() and not (tmp_path / "runs").exists()


# ------------------------------------------------------------------ item 9: options out of range


@pytest.mark.parametrize("value, message", [("1.5", "outside [0, 1]"), ("-0.1", "outside [0, 1]"),
                                            ("nan", "outside [0, 1]"), ("abc", "is not a number")])
def test_predict_score_threshold_must_be_a_probability(value: str, message: str, capsys) -> None:
    from scnet.predict import parse_args

    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--checkpoint", "x.pth", "--image", "x.jpg", "--out", "o.json", "--score-thr", value])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--score-thr" in err and message in err


@pytest.mark.parametrize("mem_gb", [0.0001, 0.0009, math.inf, math.nan])
def test_profile_memory_below_one_mib_is_refused(mem_gb: float) -> None:
    from experiments.profile import ProfileError, profile_from_dict

    with pytest.raises(ProfileError, match="'mem_gb' must be at least 1/1024"):
        profile_from_dict({"mem_gb": mem_gb}, "p.toml")
    assert "--mem=1M" in profile_from_dict({"mem_gb": 1 / 1024}, "p.toml").sbatch_flags()


@pytest.mark.parametrize("args, message", [
    (["--size", "100000", "100"], "size 100000x100 must be between 32x32 and 4096x4096"),
    (["--size", "16", "16"], "size 16x16 must be between"),
    (["--train", "10000000"], "train=10000000 and val=50 must both be in 1..200000"),
    (["--max-objects", "5000"], "max_objects <= 100"),
])
def test_synthetic_sizes_are_bounded(tmp_path: Path, args: list[str], message: str, capsys) -> None:
    from scnet.data.synthetic.__main__ import main

    assert main(["--out", str(tmp_path / "s"), *args]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("schedule, message", [
    ({"max_iters": 2.5}, "schedule field 'max_iters' must be an integer >= 1 or null, found 2.5"),
    ({"max_iters": 2, "batch_size": 1.5}, "schedule field 'batch_size' must be an integer >= 1, found 1.5"),
    ({"max_iters": "abc"}, "schedule field 'max_iters' must be an integer >= 1 or null, found 'abc'"),
])
def test_train_config_json_fields_are_named_with_the_file(tmp_path: Path, schedule: dict, message: str,
                                                          capsys) -> None:
    import json

    from scnet.train import main

    config = tmp_path / "run" / "config.json"
    config.parent.mkdir()
    config.write_text(json.dumps({"preset": PRESET, "data_root": str(tmp_path), "scale": "smoke",
                                  "schedule": schedule}))
    with pytest.raises(SystemExit) as exit_info:
        main(["--config", str(config)])
    assert exit_info.value.code == 2
    assert f"{config}: {message}" in capsys.readouterr().err
    assert sorted(p.name for p in config.parent.iterdir()) == ["config.json"]
