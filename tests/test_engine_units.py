"""Unit tests of the engine's parts that need no model: run spec, schedule, data order, launchers,
checkpoints, generator state, COCO conversion and metrics, IoU matching, logs."""
from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from scnet.config import ConfigError
from scnet.engine import EvalConfig, RunConfig, Schedule, default_schedule
from scnet.engine.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from scnet.engine.coco_eval import (best_match_ious, coco_metrics, detections_to_coco, read_detections,
                                    write_detections)
from scnet.engine.distributed import detect_dist_env, expand_slurm_nodelist
from scnet.engine.lr_schedule import learning_rate
from scnet.engine.run_log import RunLog, read_metrics
from scnet.engine.data_order import ResumableBatchSampler, SeededSamples, ShardSampler
from scnet.engine.rng_state import capture_rng_state, restore_rng_state


# ------------------------------------------------------------------------------------------ run spec

def _config(**changes):
    base = dict(preset="scnet_r18_smoke", data_root="data/shapes", scale="smoke", seed=3,
                image_scale=(256, 192), schedule=default_schedule("smoke", "smoke"))
    base.update(changes)
    return RunConfig(**base)


def test_run_config_round_trips_through_json():
    config = _config(model_flags={"feature_relay": False}, eval=EvalConfig(split="train", max_images=4))
    text = json.dumps(config.to_dict())
    again = RunConfig.from_dict(json.loads(text))
    assert again == config
    assert again.run_id() == config.run_id()
    assert len(config.run_id()) == 12


def test_run_config_unknown_fields_are_named():
    values = _config().to_dict()
    with pytest.raises(ConfigError, match=r"run config: unknown field\(s\) \['learning_rate'\]"):
        RunConfig.from_dict({**values, "learning_rate": 0.1})
    with pytest.raises(ConfigError, match=r"schedule: unknown field\(s\) \['step'\]"):
        RunConfig.from_dict({**values, "schedule": {**values["schedule"], "step": 3}})
    with pytest.raises(ConfigError, match="eval: unknown"):
        RunConfig.from_dict({**values, "eval": {"splt": "val"}})
    with pytest.raises(ConfigError, match="unknown model config field"):
        _config(model_flags={"feature_rely": True})
    with pytest.raises(ConfigError, match="unknown preset"):
        _config(preset="scnet_r5")


def test_run_id_follows_the_resolved_network_not_its_spelling():
    spelled_out = _config(preset="cascade_mask_rcnn_r18_smoke", model_flags=dict(
        sample_consistency="effective", feature_relay=True, global_context=True, semantic=True,
        # SCNet's MMDetection config keeps the assigner's default, builds a residual semantic head and
        # segments boxes above 0.001 (Cascade's: 0.05)
        rcnn_match_low_quality=True, semantic_residual=True, test_score_thr=0.001))
    assert spelled_out.run_id() == _config().run_id()
    assert _config(seed=4).run_id() != _config().run_id()
    assert _config(model_flags={"feature_relay": False}).run_id() != _config().run_id()
    # Speed and logging knobs are not part of the identity.
    assert _config(num_workers=7).run_id() == _config().run_id()
    schedule = default_schedule("smoke", "smoke")
    assert _config(schedule=schedule.replace(checkpoint_every=7, name="x")).run_id() == _config().run_id()
    assert _config(schedule=schedule.replace(lr=schedule.lr / 2)).run_id() != _config().run_id()


def test_schedule_validation():
    with pytest.raises(ConfigError, match="exactly one of 'epochs' and 'max_iters'"):
        Schedule(epochs=2, max_iters=3)
    with pytest.raises(ConfigError, match="increasing"):
        Schedule(max_iters=10, lr_steps=(8, 4))
    with pytest.raises(ConfigError, match="image_scale"):
        _config(image_scale=(100, 200))


def test_paper_schedules():
    s20 = default_schedule("paper", "20e")
    assert (s20.epochs, s20.lr, s20.batch_size, s20.lr_steps) == (20, 0.02, 16, (16, 19))
    assert (s20.momentum, s20.weight_decay, s20.warmup_iters, s20.warmup_ratio) == (0.9, 1e-4, 500, 0.001)
    s1x = default_schedule("paper", "1x")
    assert (s1x.epochs, s1x.lr_steps) == (12, (8, 11))
    smoke = default_schedule("smoke", "smoke")
    assert smoke.max_iters is not None and smoke.max_iters <= 500
    with pytest.raises(ConfigError):
        default_schedule("paper", "smoke")


def test_learning_rate_warmup_and_steps():
    schedule = Schedule(epochs=20, lr=0.02, warmup_iters=500, warmup_ratio=0.001, lr_steps=(16, 19))
    per_epoch = 100
    assert learning_rate(0, schedule, per_epoch) == pytest.approx(0.02 * 0.001)
    assert learning_rate(250, schedule, per_epoch) == pytest.approx(0.02 * (0.001 + 0.999 * 0.5))
    assert learning_rate(500, schedule, per_epoch) == pytest.approx(0.02)
    assert learning_rate(1599, schedule, per_epoch) == pytest.approx(0.02)
    assert learning_rate(1600, schedule, per_epoch) == pytest.approx(0.002)
    assert learning_rate(1900, schedule, per_epoch) == pytest.approx(0.0002)
    by_iters = Schedule(max_iters=100, lr=0.1, warmup_iters=0, lr_steps=(50,))
    assert learning_rate(49, by_iters, 7) == pytest.approx(0.1)
    assert learning_rate(50, by_iters, 7) == pytest.approx(0.01)


# ---------------------------------------------------------------------------------------- data order

def _global_batches(world: int, start: int = 0, epoch: int = 0, seed: int = 5):
    per_rank = [list(ResumableBatchSampler(num_items=23, global_batch=4, seed=seed, epoch=epoch, rank=r,
                                           world_size=world, start_batch=start)) for r in range(world)]
    return [sum((per_rank[r][b] for r in range(world)), []) for b in range(len(per_rank[0]))]


def test_global_batches_do_not_depend_on_process_count():
    one = _global_batches(1)
    assert len(one) == 23 // 4
    assert _global_batches(2) == one
    assert _global_batches(4) == one
    indices = [index for batch in one for index, _ in batch]
    assert len(set(indices)) == len(indices) == 20


def test_resume_skips_to_the_batch_and_order_is_a_function_of_seed_and_epoch():
    full = _global_batches(1)
    assert _global_batches(2, start=3) == full[3:]
    assert _global_batches(1, epoch=1) != full
    assert _global_batches(1, seed=6) != full
    torch.manual_seed(123)  # the global generator plays no part
    assert _global_batches(1) == full


class _RandomDataset:
    """Draws from every global generator, as an augmentation might."""

    def __len__(self):
        return 10

    def __getitem__(self, index):
        return index, random.random(), float(np.random.rand()), float(torch.rand(()))


def test_seeded_samples_are_reproducible_and_leave_global_generators_alone():
    samples = SeededSamples(_RandomDataset())
    torch.manual_seed(0)
    random.seed(0)
    np.random.seed(0)
    expected_next = (random.random(), float(np.random.rand()), float(torch.rand(())))
    torch.manual_seed(0)
    random.seed(0)
    np.random.seed(0)
    first = samples[(3, 77)]
    assert samples[(3, 77)] == first
    assert samples[(3, 78)] != first
    assert (random.random(), float(np.random.rand()), float(torch.rand(()))) == expected_next


def test_shard_sampler_covers_every_image_once():
    shards = [list(ShardSampler(7, 2, rank=r, world_size=3)) for r in range(3)]
    seen = sorted(i for shard in shards for batch in shard for i in batch)
    assert seen == list(range(7))


# ----------------------------------------------------------------------------------------- launchers

def test_expand_slurm_nodelist():
    assert expand_slurm_nodelist("gpu[01-03,07],login1") == ["gpu01", "gpu02", "gpu03", "gpu07", "login1"]
    assert expand_slurm_nodelist("node7") == ["node7"]
    assert expand_slurm_nodelist("a[9-10]") == ["a9", "a10"]


def test_detect_dist_env():
    assert not detect_dist_env({}).is_distributed
    torchrun = detect_dist_env({"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_ADDR": "h",
                                "MASTER_PORT": "1234"})
    assert (torchrun.rank, torchrun.world_size, torchrun.local_rank, torchrun.master_addr,
            torchrun.master_port, torchrun.launcher) == (1, 4, 1, "h", 1234, "torchrun")
    slurm = detect_dist_env({"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1",
                             "SLURM_NODELIST": "gpu[03-06]", "SLURM_JOB_ID": "123456"})
    assert (slurm.rank, slurm.world_size, slurm.local_rank, slurm.master_addr, slurm.launcher) == (
        5, 8, 1, "gpu03", "slurm")
    again = detect_dist_env({"SLURM_PROCID": "0", "SLURM_NTASKS": "8", "SLURM_NODELIST": "gpu[03-06]",
                             "SLURM_JOB_ID": "123456"})
    assert again.master_port == slurm.master_port  # every task of a job agrees without talking
    assert not detect_dist_env({"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}).is_distributed
    given = detect_dist_env({"SLURM_PROCID": "0", "SLURM_NTASKS": "2", "MASTER_ADDR": "x", "MASTER_PORT": "99"})
    assert (given.master_addr, given.master_port) == ("x", 99)
    with pytest.raises(ValueError, match="SLURM_NODELIST"):
        detect_dist_env({"SLURM_PROCID": "0", "SLURM_NTASKS": "2"})


# --------------------------------------------------------------------------- checkpoints, generators

def test_checkpoint_is_atomic_and_checked(tmp_path):
    path = tmp_path / "checkpoints" / "last.pth"
    save_checkpoint(path, {"iteration": 3, "model": {"w": torch.arange(4.0)}})
    state = load_checkpoint(path)
    assert state["iteration"] == 3 and torch.equal(state["model"]["w"], torch.arange(4.0))
    assert [p.name for p in path.parent.iterdir()] == ["last.pth"]
    torch.save({"something": 1}, tmp_path / "foreign.pth")
    with pytest.raises(CheckpointError, match="foreign.pth: not a training checkpoint"):
        load_checkpoint(tmp_path / "foreign.pth")
    (tmp_path / "cut.pth").write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="cut.pth: not a readable checkpoint"):
        load_checkpoint(tmp_path / "cut.pth")


def test_rng_state_round_trip_through_a_checkpoint(tmp_path):
    torch.manual_seed(1)
    random.seed(1)
    np.random.seed(1)
    save_checkpoint(tmp_path / "c.pth", {"rng": capture_rng_state()})
    expected = (torch.rand(3), random.random(), np.random.rand(2))
    torch.manual_seed(9)
    random.seed(9)
    np.random.seed(9)
    restore_rng_state(load_checkpoint(tmp_path / "c.pth")["rng"])
    got = (torch.rand(3), random.random(), np.random.rand(2))
    assert torch.equal(got[0], expected[0]) and got[1] == expected[1] and np.array_equal(got[2], expected[2])


def test_metrics_log_is_cut_back_on_resume(tmp_path):
    log = RunLog(tmp_path)
    for it in (2, 4, 6):
        log.metrics({"iter": it, "loss": float(it)})
    with open(tmp_path / "metrics.jsonl", "a") as handle:
        handle.write('{"iter": 8, "lo')  # the line a kill cut short
    log.truncate_after(4)
    assert [row["iter"] for row in read_metrics(tmp_path)] == [2, 4]
    assert not RunLog(tmp_path / "other", enabled=False).metrics({"iter": 1}) and not (tmp_path / "other").exists()


# ------------------------------------------------------------------------------------- COCO results

def _coco_gt() -> COCO:
    mask = np.zeros((40, 60), dtype=np.uint8)
    mask[10:30, 5:25] = 1
    rle = mask_utils.encode(np.asfortranarray(mask))
    data = {
        "images": [{"id": 7, "width": 60, "height": 40, "file_name": "a.jpg"}],
        "categories": [{"id": 3, "name": "a"}, {"id": 8, "name": "b"}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 3, "bbox": [5, 10, 20, 20], "area": 400.0, "iscrowd": 0,
             "segmentation": {"size": [40, 60], "counts": rle["counts"].decode()}},
            {"id": 2, "image_id": 7, "category_id": 8, "bbox": [30, 0, 30, 40], "area": 1200.0, "iscrowd": 0,
             "segmentation": [[30, 0, 60, 0, 60, 40, 30, 40]]},
        ],
    }
    coco = COCO()
    coco.dataset = data
    coco.createIndex()
    return coco


def _detection(boxes, labels, scores, masks):
    return {"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": torch.tensor(labels),
            "scores": torch.tensor(scores), "masks": torch.stack(masks)}


def _box_mask(x1, y1, x2, y2):
    mask = torch.zeros(40, 60, dtype=torch.bool)
    mask[y1:y2, x1:x2] = True
    return mask


def test_detections_to_coco_maps_labels_boxes_and_masks():
    det = _detection([[5, 10, 25, 30]], [0], [0.9], [_box_mask(5, 10, 25, 30)])
    rows = detections_to_coco(det, 7, [3, 8])
    assert rows[0]["category_id"] == 3 and rows[0]["image_id"] == 7
    assert rows[0]["bbox"] == [5.0, 10.0, 20.0, 20.0]
    decoded = mask_utils.decode({"size": rows[0]["segmentation"]["size"],
                                 "counts": rows[0]["segmentation"]["counts"].encode()})
    assert decoded.sum() == 400 and decoded[10:30, 5:25].all()
    json.dumps(rows)  # JSON-able as written to detections.json
    with pytest.raises(ValueError, match="label 2"):
        detections_to_coco(_detection([[0, 0, 1, 1]], [2], [0.5], [_box_mask(0, 0, 1, 1)]), 7, [3, 8])


def test_perfect_detections_score_100_and_none_score_0():
    coco = _coco_gt()
    det = _detection([[5, 10, 25, 30], [30, 0, 60, 40]], [0, 1], [0.9, 0.8],
                     [_box_mask(5, 10, 25, 30), _box_mask(30, 0, 60, 40)])
    rows = detections_to_coco(det, 7, [3, 8])
    metrics, report = coco_metrics(coco, rows, [7])
    assert metrics["bbox"]["AP"] == pytest.approx(100.0) and metrics["segm"]["AP"] == pytest.approx(100.0)
    assert metrics["segm"]["AP50"] == pytest.approx(100.0)
    assert "Average Precision" in report
    empty, _ = coco_metrics(coco, [], [7])
    assert empty["bbox"]["AP"] == 0.0 and empty["segm"]["AP"] == 0.0


def test_best_match_ious_use_the_same_class():
    coco = _coco_gt()
    det = _detection([[5, 10, 25, 30], [5, 10, 25, 30], [5, 10, 15, 30]], [0, 1, 0], [0.9, 0.8, 0.7],
                     [_box_mask(5, 10, 25, 30)] * 3)
    rows = detections_to_coco(det, 7, [3, 8])
    ious = best_match_ious(rows, coco, 7)
    # exact box; right box but class 8 (whose object does not overlap it); half the box
    assert ious == pytest.approx([1.0, 0.0, 0.5])


def test_detections_file_round_trip(tmp_path):
    rows = [{"image_id": 1, "category_id": 3, "bbox": [0, 0, 1, 1], "score": 0.5}]
    path = write_detections(tmp_path, rows)
    assert path.name == "detections.json" and read_detections(tmp_path) == rows


# ---------------------------------------------------------------------------------------------- CLI

def test_train_cli_builds_the_run_config():
    from scnet.train import build_parser, run_config_from_args

    def parse(*argv):
        return run_config_from_args(build_parser().parse_args(list(argv)))

    paper = parse("--preset", "scnet_r50", "--data", "coco", "--schedule", "1x", "--batch-size", "8",
                  "--set", "feature_relay=false", "--set", "glbctx_weight=1", "--seed", "2")
    assert (paper.scale, paper.schedule.epochs, paper.schedule.lr_steps, paper.schedule.batch_size) == (
        "paper", 12, (8, 11), 8)
    assert paper.model_flags == {"feature_relay": False, "glbctx_weight": 1}
    assert paper.image_scale == (1333, 800) and paper.seed == 2
    smoke = parse("--preset", "scnet_r18_smoke", "--data", "d", "--max-iters", "100")
    assert smoke.scale == "smoke" and smoke.image_scale == (256, 192)
    assert (smoke.schedule.max_iters, smoke.schedule.lr_steps) == (100, (80, 95))


def test_train_cli_rejects_bad_input(capsys):
    from scnet.train import main

    with pytest.raises(SystemExit):
        main(["--preset", "scnet_r5O", "--data", "d", "--out", "o"])
    assert "unknown preset" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--preset", "scnet_r18_smoke", "--data", "d"])
    assert "--out RUN_DIR is required" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--config", "/nonexistent/config.json"])
    assert "file not found" in capsys.readouterr().err


def test_aspect_ratio_grouping_makes_each_global_batch_one_orientation():
    groups = [i % 3 == 0 for i in range(23)]  # 8 portrait-ish, 15 landscape-ish, mixed through the order

    def batches(world, start=0, epoch=0):
        per_rank = [list(ResumableBatchSampler(num_items=23, global_batch=4, seed=5, epoch=epoch, rank=r,
                                               world_size=world, start_batch=start, aspect_groups=groups))
                    for r in range(world)]
        return [sum((per_rank[r][b] for r in range(world)), []) for b in range(len(per_rank[0]))]

    one = batches(1)
    assert len(one) == 23 // 4
    indices = [index for batch in one for index, _ in batch]
    assert len(set(indices)) == len(indices) == 20
    mixed = [batch for batch in one if len({groups[i] for i, _ in batch}) > 1]
    assert len(mixed) <= 1 and (not mixed or mixed[0] is one[-1])  # only the leftovers may mix
    assert batches(2) == one and batches(4) == one
    assert batches(2, start=2) == one[2:]
    assert batches(1, epoch=1) != one
    # one orientation throughout: grouping leaves the shuffled order as it was
    same = [list(ResumableBatchSampler(num_items=23, global_batch=4, seed=5, epoch=0, aspect_groups=[1] * 23))]
    assert same[0] == _global_batches(1)


def test_aspect_grouped_follows_mmdetections_bucket_rule():
    from scnet.engine.data_order import aspect_grouped

    order = [0, 1, 2, 3, 4, 5, 6]
    groups = [0, 1, 1, 0, 1, 0, 0]
    # bucket 1 fills first with 1, 2, 4 (batch 3); bucket 0 then with 0, 3, 5; leftovers: 6
    assert aspect_grouped(order, groups, 3) == [1, 2, 4, 0, 3, 5, 6]
