"""Run records: result.json validation, atomic JSON helpers and IoU recording."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from scnet import records
from scnet.config import ConfigError
from scnet.engine.run_config import RunConfig
from scnet.records import files, iou, result, run_dir
from scnet.records.files import RecordError, write_json_atomic
from scnet.records.iou import IoURecorder, IoURecords
from scnet.records.result import FORMAT_VERSION, METRIC_NAMES, coco_stats_to_metrics, read_result, write_result
from scnet.records.run_dir import RunDir, read_config, read_env, write_config, write_env


def make_result(seed: int = 0, ap: float = 40.0) -> dict:
    metric = {"AP": ap, "AP50": 60.0, "AP75": 43.0, "APS": 22.0, "APM": 44.0, "APL": 55.0}
    return {
        "config": {"model": {"stages": 3}, "preset": "scnet_r18_smoke", "scale": "smoke", "seed": seed,
                   "data": {"root": "data/shapes"}, "schedule": {"iterations": 10}},
        "metrics": {"bbox": dict(metric), "segm": dict(metric, AP=ap - 3)},
        "speed": {"images_per_s": 5.5, "device": "cpu"},
        "timing": {"train_s": 12.0, "eval_s": 3.0},
        "status": "done",
    }


# ------------------------------------------------------------------------------------------- result

def test_result_round_trip_fills_format_version(tmp_path):
    path = write_result(tmp_path, make_result(seed=3))
    assert path == tmp_path / "result.json"
    back = read_result(tmp_path)
    assert back["format_version"] == FORMAT_VERSION
    assert back["config"]["seed"] == 3
    assert back["metrics"]["segm"]["AP"] == 37.0
    assert read_result(path) == back
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_result_accepts_none_for_undefined_metric(tmp_path):
    result = make_result()
    result["metrics"]["bbox"]["APS"] = None
    write_result(tmp_path, result)
    assert read_result(tmp_path)["metrics"]["bbox"]["APS"] is None


@pytest.mark.parametrize("mutate, field", [
    (lambda r: r["metrics"]["segm"].pop("AP75"), "metrics.segm.AP75"),
    (lambda r: r["metrics"].pop("bbox"), "metrics.bbox"),
    (lambda r: r["metrics"]["bbox"].__setitem__("AP", -100.0), "metrics.bbox.AP"),
    (lambda r: r["metrics"]["bbox"].__setitem__("AP", "high"), "metrics.bbox.AP"),
    (lambda r: r["config"].pop("seed"), "config.seed"),
    (lambda r: r["config"].pop("model"), "config.model"),
    (lambda r: r.__setitem__("status", "running"), "status"),
    (lambda r: r["speed"].pop("device"), "speed.device"),
    (lambda r: r["timing"].__setitem__("train_s", -1), "timing.train_s"),
    (lambda r: r.__setitem__("format_version", 99), "format_version"),
])
def test_write_result_refuses_bad_field_and_names_it(tmp_path, mutate, field):
    result = make_result()
    mutate(result)
    with pytest.raises(RecordError, match=f"'{field}'"):
        write_result(tmp_path, result)
    assert not (tmp_path / "result.json").exists()


def test_read_result_names_file_for_half_written_and_foreign(tmp_path):
    good = json.dumps(dict(make_result(), format_version=FORMAT_VERSION))
    half = tmp_path / "half" / "result.json"
    half.parent.mkdir()
    half.write_text(good[: len(good) // 2])
    with pytest.raises(RecordError, match="half/result.json.*not valid JSON"):
        read_result(half)
    foreign = tmp_path / "foreign" / "result.json"
    foreign.parent.mkdir()
    foreign.write_text(json.dumps({"accuracy": 0.9}))
    with pytest.raises(RecordError, match="foreign/result.json: missing field 'format_version'"):
        read_result(foreign.parent)
    with pytest.raises(RecordError, match="file not found"):
        read_result(tmp_path / "absent")


def test_coco_stats_to_metrics_percent_and_none():
    stats = [0.401, 0.6, 0.43, -1.0, 0.44, 0.55, 0.3, 0.4, 0.5, 0.1, 0.2, 0.3]
    metrics = coco_stats_to_metrics(stats)
    assert metrics["AP"] == pytest.approx(40.1)
    assert metrics["APS"] is None
    assert list(metrics) == list(METRIC_NAMES)


def test_the_package_re_exports_the_single_module_names():
    """Code written against the former module `scnet.records` still imports every name from it."""
    modules = (files, iou, result, run_dir)
    for name in records.__all__:
        found = [m for m in modules if hasattr(m, name) and getattr(m, name) is getattr(records, name)]
        assert found or name in ("CONFIG_FILE", "ENV_FILE", "RUN_DIR_MARKERS"), name
    assert (records.CONFIG_FILE, records.ENV_FILE, records.RESULT_FILE) == ("config.json", "env.json", "result.json")
    assert records.RUN_DIR_MARKERS == RunDir.MARKERS


def test_config_json_holds_the_spelling_and_its_network(tmp_path):
    config = RunConfig(preset="cascade_mask_rcnn_r18_smoke", data_root=str(tmp_path),
                       model_flags={"sample_consistency": "effective"})
    folder = RunDir(tmp_path / "run")
    folder.write_config_once(config)
    stored = read_config(folder.path)
    assert stored["model_flags"] == {"sample_consistency": "effective"}
    assert stored["model"]["sample_consistency"] == "effective" and stored["model"]["mask_convs"] == 12
    back = folder.read_run_config()
    assert back == config and back.run_id() == config.run_id()
    folder.write_config_once(config.replace(seed=5))  # never overwritten: the config is the run's identity
    assert folder.read_run_config().seed == 0
    # A config.json written before it held "model" still reads, as the same run.
    write_config(folder.path, config.to_dict())
    assert folder.read_run_config().run_id() == config.run_id()


def test_config_json_whose_spelling_no_longer_gives_its_network_is_refused(tmp_path):
    config = RunConfig(preset="cascade_mask_rcnn_r18_smoke", data_root=str(tmp_path))
    edited = {**config.to_frozen_dict(), "model_flags": {"sample_consistency": "effective"}}
    with pytest.raises(ConfigError, match=r"field 'model' .* differs .* in mask_convs, sample_consistency"):
        RunConfig.from_dict(edited)
    without_model = {k: v for k, v in edited.items() if k != "model"}
    assert RunConfig.from_dict(without_model).model_config().mask_convs == 12
    with pytest.raises(ConfigError, match="field 'model' is not a network this code builds"):
        RunConfig.from_dict({**config.to_frozen_dict(), "model": {"stages": 2}})


def test_model_config_fills_in_only_what_the_run_config_leaves_to_the_data(tmp_path):
    """Class counts come from the dataset unless the flags or the run config fix them."""
    config = RunConfig(preset="scnet_r18_smoke", data_root=str(tmp_path), model_flags={"num_classes": 3},
                       num_semantic_classes=9)
    resolved = config.model_config(num_classes=5, num_semantic_classes=7)
    assert (resolved.num_classes, resolved.num_semantic_classes) == (3, 9)
    free = RunConfig(preset="scnet_r18_smoke", data_root=str(tmp_path))
    assert free.model_config(num_classes=5, num_semantic_classes=7).num_classes == 5
    assert free.model_config(num_classes=5, num_semantic_classes=7).num_semantic_classes == 7
    assert free.model_config() is free.model_config()  # resolved once, when the config was made


def test_config_and_env_round_trip(tmp_path):
    write_config(tmp_path, {"model": {"stages": (1, 2)}, "seed": np.int64(4)})
    write_env(tmp_path, {"torch": torch.__version__})
    assert read_config(tmp_path) == {"model": {"stages": [1, 2]}, "seed": 4}
    assert read_env(tmp_path / "env.json")["torch"] == torch.__version__
    with pytest.raises(RecordError, match="bad.json"):
        write_json_atomic(tmp_path / "bad.json", {"x": float("nan")})
    assert not (tmp_path / "bad.json").exists()


# ---------------------------------------------------------------------------------------------- IoU

def test_iou_recorder_shares_means_and_counts_exact(tmp_path):
    rec = IoURecorder(bins=1000, reservoir_size=100, seed=0)
    rec.add("train/stage0", torch.tensor([0.5, 0.6, 0.75, 0.9], dtype=torch.float32))
    rec.add("train/stage2", np.array([0.8, 0.95]))
    rec.add("inference", [0.0, 1.0])
    rec.save(tmp_path)
    view = IoURecords.load(tmp_path)
    assert view.tags == ["inference", "train/stage0", "train/stage2"]
    # float32 0.6 and 0.75 count as at-or-below their decimal thresholds
    assert view.share_at_or_below("train/stage0", 0.6) == pytest.approx(0.5)
    assert view.share_at_or_below("train/stage0", 0.75) == pytest.approx(0.75)
    assert view.share_at_or_below("train/", 0.75) == pytest.approx(3 / 6)
    assert view.share_at_or_below("inference", 0.001) == pytest.approx(0.5)
    assert view.share_at_or_below("train/stage2", 0.85) == pytest.approx(0.5)
    assert view.share_at_or_below("inference", 1.0) == pytest.approx(1.0)
    assert view.mean("train/") == pytest.approx((0.5 + 0.6 + 0.75 + 0.9 + 0.8 + 0.95) / 6, abs=1e-7)
    assert view.counts("train/").sum() == 6 and view.count(["train/stage2", "inference"]) == 4
    with pytest.raises(KeyError, match="recorded tags"):
        view.counts("val/")


def test_iou_recorder_refuses_values_outside_unit_interval():
    rec = IoURecorder()
    with pytest.raises(ValueError, match="train/stage0.*\\[0, 1\\]"):
        rec.add("train/stage0", np.array([0.3, 1.5]))
    with pytest.raises(ValueError, match="finite"):
        rec.add("inference", np.array([np.nan]))


def test_reservoir_is_bounded_and_uniform():
    rec = IoURecorder(bins=100, reservoir_size=2000, seed=1)
    rng = np.random.default_rng(0)
    stream = rng.uniform(size=100_000)
    for chunk in np.array_split(stream, 97):
        rec.add("train/stage2", chunk)
    sample = rec.records().sample("train/stage2")
    assert sample.size == 2000
    assert set(np.round(sample, 6)).issubset(set(np.round(stream.astype(np.float32), 6)))
    # a uniform sample of the stream, not its first 2000 values: later chunks are represented
    late = np.isin(np.round(sample, 6), np.round(stream[50_000:].astype(np.float32), 6)).mean()
    assert 0.42 < late < 0.58
    assert abs(sample.mean() - 0.5) < 0.03


def test_merged_sample_is_proportional_to_stream_sizes():
    rec = IoURecorder(bins=10, reservoir_size=500, seed=0)
    rec.add("train/stage0", np.full(5000, 0.2))
    rec.add("train/stage1", np.full(1000, 0.9))
    merged = rec.records().sample("train/")
    # stage0 keeps 500 of 5000 (10%), so stage1 may contribute only 10% of its 1000
    assert np.isclose(merged, 0.2).sum() == 500
    assert np.isclose(merged, 0.9).sum() == 100


def test_resume_continues_the_same_stream(tmp_path):
    rng = np.random.default_rng(5)
    chunks = [rng.uniform(size=300) for _ in range(6)]
    straight = IoURecorder(bins=50, reservoir_size=100, seed=7)
    for chunk in chunks:
        straight.add("train/stage0", chunk)
    first = IoURecorder(bins=50, reservoir_size=100, seed=7)
    for chunk in chunks[:3]:
        first.add("train/stage0", chunk)
    checkpoint = tmp_path / "ckpt.pth"
    torch.save({"iou": first.state_dict()}, checkpoint)
    resumed = IoURecorder(seed=123)
    resumed.load_state_dict(torch.load(checkpoint, weights_only=True)["iou"])
    for chunk in chunks[3:]:
        resumed.add("train/stage0", chunk)
    a, b = straight.records(), resumed.records()
    np.testing.assert_array_equal(a.sample("train/stage0"), b.sample("train/stage0"))
    np.testing.assert_array_equal(a.counts("train/stage0"), b.counts("train/stage0"))
    assert a.mean("train/stage0") == pytest.approx(b.mean("train/stage0"))


def test_iou_records_load_names_damaged_file(tmp_path):
    (tmp_path / "iou_records.npz").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(RecordError, match="iou_records.npz: not a readable"):
        IoURecords.load(tmp_path)
    with pytest.raises(RecordError, match="file not found"):
        IoURecords.load(tmp_path / "nowhere")


def test_records_view_is_read_only(tmp_path):
    rec = IoURecorder(bins=10, reservoir_size=10)
    rec.add("inference", [0.5])
    rec.save(tmp_path)
    view = IoURecords.load(tmp_path)
    view.counts("inference")[5] = 3  # counts() hands out a fresh array
    assert view.counts("inference").sum() == 1
    original = copy.deepcopy(view.sample("inference"))
    view.sample("inference")[0] = 0.1  # sample() hands out a copy
    np.testing.assert_array_equal(view.sample("inference"), original)


def test_exact_tag_wins_over_prefix():
    rec = IoURecorder(bins=10, reservoir_size=10)
    rec.add("inference", [0.1, 0.6, 0.9])
    rec.add("inference/matched", [0.6, 0.9])
    view = rec.records()
    assert view.count("inference") == 3
    assert view.count("inference/") == 2
    assert view.resolve(["inference", "inference/matched"]) == ["inference", "inference/matched"]
