"""result.json: what a finished run reports (COCO metrics, speed, timing, IoU summary), validated.

The analysis reads only fields checked here; a result that does not validate is refused with the
file and the field named, because the tables must never average a half-written or foreign record.
`result.json` is written last and marks a run done.
"""
from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from scnet.records.files import RecordError, as_read_back, file_in, read_json, write_json_atomic

RESULT_FILE = "result.json"
# The format of the records this code writes and reads (result.json, iou_records.npz).
FORMAT_VERSION = 1

METRIC_KINDS = ("bbox", "segm")
METRIC_NAMES = ("AP", "AP50", "AP75", "APS", "APM", "APL")


def coco_stats_to_metrics(stats: Iterable[float]) -> dict[str, float | None]:
    """pycocotools' `COCOeval.stats` (fractions, -1 where undefined) -> percent dict, None where undefined.

    Undefined entries (no objects of a size range) become None rather than -100, because a number
    there would be averaged into tables as if it were a real result.
    """
    values = [float(v) for v in stats]
    if len(values) < 6:
        raise RecordError(f"COCOeval.stats has {len(values)} entries; expected at least 6 (AP..APL)")
    out: dict[str, float | None] = {}
    for name, value in zip(METRIC_NAMES, values[:6]):
        out[name] = None if (value < 0 or math.isnan(value)) else 100.0 * value
    return out


def _require(mapping: Any, key: str, where: str, source: str, kind: type | tuple[type, ...]) -> Any:
    if not isinstance(mapping, dict) or key not in mapping:
        raise RecordError(f"{source}: missing field '{where}{key}'")
    value = mapping[key]
    if kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, kind)
    if not ok:
        expected = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise RecordError(f"{source}: field '{where}{key}' should be {expected}, found {value!r}")
    return value


def validate_result(result: Any, source: str = "result") -> None:
    """Check the fields the analysis relies on; extra fields are allowed (they are kept, not checked)."""
    if not isinstance(result, dict):
        raise RecordError(f"{source}: a result must be a JSON object, found {type(result).__name__}")
    version = _require(result, "format_version", "", source, int)
    if version != FORMAT_VERSION:
        raise RecordError(f"{source}: field 'format_version' is {version}; this code reads version "
                          f"{FORMAT_VERSION} (update the code or rerun the run)")
    status = _require(result, "status", "", source, str)
    if status != "done":
        raise RecordError(f"{source}: field 'status' is {status!r}; only finished runs ('done') have a result")
    config = _require(result, "config", "", source, dict)
    _require(config, "model", "config.", source, dict)
    _require(config, "preset", "config.", source, str)
    _require(config, "scale", "config.", source, str)
    _require(config, "seed", "config.", source, int)
    metrics = _require(result, "metrics", "", source, dict)
    for kind in METRIC_KINDS:
        block = _require(metrics, kind, "metrics.", source, dict)
        for name in METRIC_NAMES:
            if name not in block:
                raise RecordError(f"{source}: missing field 'metrics.{kind}.{name}'")
            value = block[name]
            if value is None:
                continue
            _require(block, name, f"metrics.{kind}.", source, float)
            if not 0.0 <= value <= 100.0:
                raise RecordError(f"{source}: field 'metrics.{kind}.{name}' = {value} is outside [0, 100]; "
                                  "metrics are COCO AP in percent (use None where COCO reports -1)")
    speed = _require(result, "speed", "", source, dict)
    fps = _require(speed, "images_per_s", "speed.", source, float)
    if fps < 0:
        raise RecordError(f"{source}: field 'speed.images_per_s' = {fps} must be >= 0")
    _require(speed, "device", "speed.", source, str)
    timing = _require(result, "timing", "", source, dict)
    for key in ("train_s", "eval_s"):
        if _require(timing, key, "timing.", source, float) < 0:
            raise RecordError(f"{source}: field 'timing.{key}' must be >= 0")


def write_result(run_dir: str | os.PathLike, result: Mapping[str, Any]) -> Path:
    """Validate and atomically write RUN_DIR/result.json; `format_version` is filled in if absent."""
    payload = dict(result)
    payload.setdefault("format_version", FORMAT_VERSION)
    path = Path(run_dir) / RESULT_FILE
    normalised = as_read_back(payload, path)  # validated in the form readers will see
    validate_result(normalised, str(path))
    return write_json_atomic(path, normalised)


def read_result(path: str | os.PathLike) -> dict[str, Any]:
    """Read and validate a result.json (or the one in a run directory)."""
    file = file_in(path, RESULT_FILE)
    result = read_json(file)
    validate_result(result, str(file))
    return result
