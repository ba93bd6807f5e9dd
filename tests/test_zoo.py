"""MMDetection's model-zoo numbers as data (results/paper/mmdet_zoo.csv) and the one-run zoo check."""
from __future__ import annotations

import io
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest

from analysis import zoo
from scnet.records.result import METRIC_NAMES, write_result
from scnet.engine.run_config import RunConfig, default_schedule

# The figures design.md and issue 17 quote, each read again in MMDetection's metafiles (the CSV cites them).
QUOTED = {
    ("scnet_r50", "20e"): (44.5, 40.0), ("scnet_r101", "20e"): (45.8, 40.9),
    ("scnet_x101_64x4d", "20e"): (47.5, 42.3), ("htc_r50", "20e"): (43.3, 38.3), ("htc_r101", "20e"): (44.8, 39.6),
    ("scnet_r50", "1x"): (43.5, 39.2), ("htc_r50", "1x"): (42.3, 37.4), ("cascade_mask_rcnn_r50", "1x"): (41.2, 35.9),
}


def test_zoo_data_holds_the_quoted_figures_with_a_citation_each():
    data = zoo.load_zoo()
    assert not data.duplicated(["preset", "schedule", "column"]).any()
    assert {(p, s): (zoo.zoo_values(p, s)["APbb"], zoo.zoo_values(p, s)["AP"]) for p, s in QUOTED} == QUOTED
    assert len(data) == 2 * len(QUOTED)
    for line in data.itertuples():
        assert line.source.startswith("open-mmlab/mmdetection configs/") and len(line.source_commit) == 40
        assert line.weights.startswith("https://download.openmmlab.com/mmdetection/") and line.weights.endswith(".pth")
        assert line.verified.startswith("yes") and line.mmdet_config.endswith(".py")
        assert line.schedule in zoo.ZOO_SCHEDULES


def _run(root: Path, preset: str, schedule: str = "1x", *, flags: dict | None = None, amp: bool = False,
         box: float = 43.0, mask: float = 39.0) -> Path:
    config = RunConfig(preset=preset, data_root="/coco", scale="paper", model_flags=flags or {},
                       schedule=default_schedule("paper", schedule), amp=amp, num_semantic_classes=183
                       if preset.startswith(("scnet", "htc")) else None)
    run_dir = root / f"{preset}_{schedule}"
    metrics = {name: 30.0 for name in METRIC_NAMES}
    write_result(run_dir, {
        "config": {**config.to_dict(), "model": config.model_config(num_classes=80).to_dict()},
        "metrics": {"bbox": dict(metrics, AP=box), "segm": dict(metrics, AP=mask)},
        "speed": {"images_per_s": 5.0, "device": "cuda"}, "timing": {"train_s": 1.0, "eval_s": 1.0},
        "status": "done"})
    return run_dir


def test_one_run_check_sets_ours_beside_the_zoo(tmp_path):
    check = zoo.check_run(_run(tmp_path, "scnet_r50", box=43.1, mask=39.4))
    assert (check.preset, check.schedule, check.zoo) == ("scnet_r50", "1x", {"AP": 39.2, "APbb": 43.5})
    text = check.to_markdown()
    assert "| box AP | 43.5 | 43.1 | -0.4 |" in text and "| mask AP | 39.2 | 39.4 | +0.2 |" in text
    assert "scnet_r50_fpn_1x_coco-c3f09857.pth" in text
    # Cascade Mask R-CNN with its own test config (0.05) is the zoo's model
    assert zoo.check_run(_run(tmp_path, "cascade_mask_rcnn_r50")).zoo == {"AP": 35.9, "APbb": 41.2}


@pytest.mark.parametrize("preset,schedule,changes,message", [
    ("cascade_mask_rcnn_r50", "1x", dict(flags={"test_score_thr": 0.001}), "differs from cascade_mask_rcnn_r50's own "
                                                                           "network in test_score_thr"),
    ("scnet_r50", "1x", dict(flags={"global_context": False}), "in global_context"),
    ("scnet_r50", "1x", dict(amp=True), "--amp"),
    ("mask_rcnn_r50", "1x", {}, "the zoo has 1x numbers for cascade_mask_rcnn_r50, htc_r50, scnet_r50, not 'mask_rcnn_r50'"),
    ("scnet_r101", "1x", {}, "not 'scnet_r101'"),
])
def test_one_run_check_refuses_what_the_zoo_did_not_train(tmp_path, preset, schedule, changes, message):
    run_dir = _run(tmp_path, preset, schedule, **changes)
    with pytest.raises(zoo.ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        zoo.check_run(run_dir)


def test_the_20e_zoo_judges_20e_runs_and_the_cli_exits_2_on_a_bad_run(tmp_path):
    good = _run(tmp_path, "htc_r101", "20e", box=44.0, mask=39.0)
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out):
        assert zoo.main([str(good)]) == 0
    assert "| box AP | 44.8 | 44.0 | -0.8 |" in out.getvalue()
    with redirect_stderr(err):
        assert zoo.main([str(good), str(tmp_path / "absent")]) == 2
    assert err.getvalue().startswith("error: ") and err.getvalue().count("\n") == 1
