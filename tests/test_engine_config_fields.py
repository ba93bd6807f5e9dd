"""Every field of a run spec is checked for its type and range, naming the field (issue 10, item 9).

A value reaches RunConfig / Schedule / EvalConfig from config.json, from `--set KEY=VALUE` (JSON or a
bare string) and from Python; each wrong kind (1.5 for an int, true for an int, "abc" for a number)
and each value outside its meaning is one ConfigError naming the field.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from experiments.runspec import UsageError, build_matrix
from scnet.config import ConfigError
from scnet.engine.run_config import EvalConfig, RunConfig, Schedule
from scnet.presets import resolve_config

BASE = {"preset": "mask_rcnn_r18_smoke", "data_root": "data/shapes"}

_BAD_INTEGERS = [1.5, True, "abc", "2", [2], math.inf]


def _schedule(**changes: Any) -> dict[str, Any]:
    return {**Schedule(max_iters=10).to_dict(), **changes}


@pytest.mark.parametrize("field", ["max_iters", "batch_size", "warmup_iters", "checkpoint_every", "log_every"])
@pytest.mark.parametrize("value", _BAD_INTEGERS)
def test_integer_schedule_fields_refuse_other_kinds(field: str, value: Any) -> None:
    with pytest.raises(ConfigError, match=rf"schedule field '{field}' must be an integer"):
        RunConfig.from_dict({**BASE, "schedule": _schedule(**{field: value})})


@pytest.mark.parametrize("field", ["batch_size", "max_images", "speed_warmup"])
@pytest.mark.parametrize("value", [2.5, False, "x"])
def test_integer_eval_fields_refuse_other_kinds(field: str, value: Any) -> None:
    with pytest.raises(ConfigError, match=rf"eval field '{field}' must be an integer"):
        RunConfig.from_dict({**BASE, "eval": {field: value}})


@pytest.mark.parametrize("values, message", [
    ({"seed": 1.5}, "'seed' must be an integer >= 0"),
    ({"seed": -1}, "'seed' must be an integer >= 0"),
    ({"seed": 2**64}, "'seed' must be an integer >= 0"),
    ({"num_workers": True}, "'num_workers' must be an integer >= 0"),
    ({"num_workers": -1}, "'num_workers' must be an integer >= 0"),
    ({"amp": "yes"}, "'amp' must be true or false"),
    ({"image_scale": [800.5, 600]}, r"'image_scale'\[0\] must be an integer"),
    ({"image_scale": "1333x800"}, "'image_scale' must be a list of 2 integers"),
    ({"image_scale": [800, 1333]}, "long >= short"),
    ({"image_scale": [100000, 800]}, "8192 >= long"),
    ({"scale": "medium"}, "'scale' must be one of"),
    ({"preset": ""}, "'preset' must be a non-empty string"),
    ({"data_root": 3}, "'data_root' must be a non-empty string"),
    ({"model_flags": ["semantic"]}, "'model_flags' must be an object"),
    ({"schedule": 3}, "'schedule' must be an object"),
    ({"eval": "val"}, "'eval' must be an object"),
    ({"num_workers": None}, "'num_workers' must be an integer >= 0, found None"),
    ({"schedule": _schedule(max_iters=0)}, "'max_iters' must be an integer >= 1"),
    ({"schedule": _schedule(max_iters=None)}, "set exactly one of 'epochs' and 'max_iters'"),
    ({"schedule": _schedule(lr="0.02")}, "'lr' must be a finite number > 0"),
    ({"schedule": _schedule(lr=math.nan)}, "'lr' must be a finite number > 0"),
    ({"schedule": _schedule(lr=0)}, "'lr' must be a finite number > 0"),
    ({"schedule": _schedule(momentum=1.0)}, "'momentum' must be a finite number >= 0 and < 1"),
    ({"schedule": _schedule(weight_decay=-1e-4)}, "'weight_decay' must be a finite number >= 0"),
    ({"schedule": _schedule(warmup_ratio=0)}, "'warmup_ratio' must be a finite number > 0 and <= 1"),
    ({"schedule": _schedule(grad_clip_norm=True)}, "'grad_clip_norm' must be a finite number > 0 or null"),
    ({"schedule": _schedule(lr_steps=[8, 2.5])}, r"'lr_steps'\[1\] must be an integer"),
    ({"schedule": _schedule(lr_steps=[11, 8])}, "'lr_steps' must be increasing"),
    ({"schedule": _schedule(lr_steps="8,11")}, "'lr_steps' must be a list of integers"),
    ({"schedule": _schedule(name="")}, "'name' must be a non-empty string"),
    ({"eval": {"split": "../train"}}, "'split' must be a name without '/'"),
    ({"eval": {"enabled": 1}}, "'enabled' must be true or false"),
    ({"eval": {"max_images": 0}}, "'max_images' must be an integer >= 1 or null"),
])
def test_each_field_is_checked_by_type_and_range(values: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        RunConfig.from_dict({**BASE, **values})


def test_integral_floats_are_the_same_run_as_integers() -> None:
    as_int = RunConfig.from_dict({**BASE, "seed": 3, "schedule": _schedule(max_iters=20, lr_steps=[10])})
    as_float = RunConfig.from_dict({**BASE, "seed": 3.0, "schedule": _schedule(max_iters=20.0, lr_steps=[10.0])})
    assert as_float.schedule.max_iters == 20 and isinstance(as_float.schedule.max_iters, int)
    assert as_float.run_id() == as_int.run_id()


def test_defaults_are_valid_and_round_trip() -> None:
    config = RunConfig(**BASE)
    assert RunConfig.from_dict(config.to_dict()).run_id() == config.run_id()
    assert EvalConfig().split == "val"


@pytest.mark.parametrize("override, message", [
    ("schedule.max_iters=abc", "--set: schedule field 'max_iters' must be an integer >= 1 or null, found 'abc'"),
    ("schedule.batch_size=1.5", "--set: schedule field 'batch_size' must be an integer >= 1, found 1.5"),
    ("schedule.max_iters=2.5", "--set: schedule field 'max_iters' must be an integer >= 1 or null, found 2.5"),
    ("eval.batch_size=true", "--set: eval field 'batch_size' must be an integer >= 1, found True"),
    ("seed=x", "--set: run config field 'seed' must be an integer"),
])
def test_harness_set_overrides_name_the_field(override: str, message: str) -> None:
    from experiments.runspec import parse_overrides

    with pytest.raises(UsageError) as info:
        build_matrix(["table2"], "smoke", Path("/data"), overrides=parse_overrides([override]))
    assert str(info.value).startswith(message)


@pytest.mark.parametrize("flag, value", [
    ("test_score_thr", 1.5), ("test_score_thr", -0.1), ("test_nms_iou", 2.0), ("mask_threshold", -1.0),
    ("rcnn_positive_fraction", 1.25), ("test_max_per_image", 0), ("rpn_test_post_nms", 0),
])
def test_model_probabilities_and_counts_are_ranged(flag: str, value: Any) -> None:
    with pytest.raises(ConfigError, match=rf"{flag}={value}"):
        resolve_config("scnet_r18_smoke", **{flag: value})
