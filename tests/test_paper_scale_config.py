"""Paper-scale run configs: float32 unless --amp, MMDetection's unclipped schedules (smoke ones clip),
and the semantic head's class count fixed from the training data, in the run id, used by evaluation."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from experiments.run import main as harness_main
from experiments.runspec import build_matrix
from scnet.config import ConfigError
from scnet.data.synthetic import CLASSES
from scnet.engine import RunConfig, default_schedule
from scnet.engine.semantic_classes import (STUFF_ZIP, StuffMapsMissing, check_training_classes,
                                           semantic_classes_for, with_semantic_classes)

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------------------- precision

def test_float32_by_default_and_amp_is_part_of_the_run_id():
    for scale in ("smoke", "paper"):
        config = RunConfig(preset="scnet_r50" if scale == "paper" else "scnet_r18_smoke", data_root="d", scale=scale)
        assert config.amp is False
        assert config.replace(amp=True).run_id() != config.run_id()


def test_train_cli_amp_opt_in():
    from scnet.train import build_parser, run_config_from_args

    def parse(*argv):
        return run_config_from_args(build_parser().parse_args(["--preset", "mask_rcnn_r50", "--data", "d", *argv]))

    assert parse().amp is False and parse("--amp").amp is True
    assert parse("--no-amp").amp is False  # the old spelling still means float32
    with pytest.raises(ConfigError, match="--amp or --no-amp"):
        parse("--amp", "--no-amp")


def test_harness_amp_flag_makes_other_runs(tmp_path, capsys):
    def run_ids(*extra):
        assert harness_main(["table4", "--dry-run", "--data", str(tmp_path / "d"),
                             "--runs-dir", str(tmp_path / "runs"), *extra]) == 0
        return {line[:12] for line in capsys.readouterr().out.splitlines() if line[12:14] == "  "}

    fp32, amp = run_ids(), run_ids("--amp")
    assert len(fp32) == len(amp) == 4 and not fp32 & amp


def test_paper_schedules_are_mmdetections_and_smoke_ones_are_stable_by_design():
    for name in ("20e", "1x"):
        paper = default_schedule("paper", name)
        assert paper.grad_clip_norm is None  # MMDetection's configs: optim_wrapper without clip_grad
        assert (paper.lr, paper.warmup_iters, paper.warmup_ratio) == (0.02, 500, 0.001)
        smoke = default_schedule("smoke", name)
        assert smoke.grad_clip_norm is not None and smoke.warmup_iters > 0 and smoke.lr <= 0.01


# ---------------------------------------------------------------------------------- semantic classes

def _coco_root(root: Path, categories: int, stuff: int | None = None) -> Path:
    (root / "annotations").mkdir(parents=True)
    cats = [{"id": i + 1, "name": f"c{i}"} for i in range(categories)]
    for split in ("train", "val"):
        (root / "annotations" / f"instances_{split}2017.json").write_text(
            json.dumps({"images": [], "annotations": [], "categories": cats}))
    if stuff is not None:
        add_stuff_maps(root, stuff)
    return root


def add_stuff_maps(root: Path, classes: int | None) -> None:
    for split in ("train", "val"):
        (root / "stuffthingmaps" / f"{split}2017").mkdir(parents=True, exist_ok=True)
    if classes is not None:
        (root / "dataset_info.json").write_text(json.dumps({"num_semantic_classes": classes}))


def test_semantic_class_count_comes_from_the_training_data(tmp_path):
    # Paper scale: COCO-stuff's 183 (the maps are required; the count needs no scan of them).
    assert semantic_classes_for(tmp_path / "coco", "paper") == 183
    with pytest.raises(StuffMapsMissing) as missing:
        semantic_classes_for(tmp_path / "coco", "paper", check_maps=True)
    message = str(missing.value)
    assert STUFF_ZIP in message and str(tmp_path / "coco" / "stuffthingmaps" / "train2017") in message
    assert "val2017" in message
    # Smoke scale: a folder to be made is the synthetic dataset; derived maps have categories + 1.
    assert semantic_classes_for(tmp_path / "later", "smoke") == len(CLASSES) + 1
    root = _coco_root(tmp_path / "mine", categories=3)
    assert semantic_classes_for(root, "smoke") == 4
    add_stuff_maps(root, 12)
    assert semantic_classes_for(root, "smoke") == 12


def test_adding_stuff_maps_later_makes_a_new_run(tmp_path):
    root = _coco_root(tmp_path / "mine", categories=3)

    def matrix_ids():
        return [spec.run_id for spec in build_matrix(["table2"], "smoke", root)]

    before = matrix_ids()
    configs = [spec.config for spec in build_matrix(["table2"], "smoke", root)]
    assert [config.num_semantic_classes for config in configs] == [4] * 6
    add_stuff_maps(root, 9)
    after = matrix_ids()
    # Every Table 2 network has a semantic branch: all six are new runs.
    assert len(before) == len(after) == 6 and not set(before) & set(after)
    # A model without a semantic branch does not depend on the maps.
    plain = with_semantic_classes(RunConfig(preset="mask_rcnn_r18_smoke", data_root=str(root)))
    assert plain.num_semantic_classes is None


def test_the_run_config_sizes_the_semantic_head_not_the_evaluated_split(tmp_path):
    from scnet.engine.runner import build_run_model

    config = RunConfig(preset="scnet_r18_smoke", data_root=str(tmp_path), num_semantic_classes=7)
    val_split = SimpleNamespace(num_classes=6, num_semantic_classes=183)  # val maps of another kind
    model = build_run_model(config, val_split)
    assert model.config.num_semantic_classes == 7
    assert config.identity()["model"]["num_semantic_classes"] == 7
    # Training refuses data whose maps no longer match the configured count...
    with pytest.raises(ConfigError, match="183 classes but the run was configured with num_semantic_classes=7"):
        check_training_classes(config, SimpleNamespace(num_semantic_classes=183, semantic_source="stuff"))
    # ...and paper-scale semantic runs refuse derived (thing-only) maps, naming the zip.
    paper = RunConfig(preset="scnet_r50", data_root=str(tmp_path), scale="paper", num_semantic_classes=183)
    with pytest.raises(StuffMapsMissing, match=STUFF_ZIP):
        check_training_classes(paper, SimpleNamespace(num_semantic_classes=81, semantic_source="derived"))
    with pytest.raises(ConfigError, match="num_semantic_classes"):
        RunConfig(preset="scnet_r18_smoke", data_root="d", num_semantic_classes=7,
                  model_flags={"num_semantic_classes": 8})


def test_harness_refuses_semantic_paper_runs_without_stuff_maps(harness, tmp_path, monkeypatch):
    coco = _coco_root(tmp_path / "coco", categories=80)
    for name in ("train2017", "val2017"):
        (coco / name).mkdir()
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    done = harness("table2", "--scale", "paper", "--data", str(coco), "--runs-dir", str(tmp_path / "runs"),
                   "--profile", str(REPO / "slurm" / "profiles" / "example.toml"))
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert STUFF_ZIP in done.stderr and str(coco / "stuffthingmaps") in done.stderr
    assert not (tmp_path / "runs").exists()
