"""A run's records on disk (docs/interfaces.md, "Run directory"), one concept per module:

- `scnet.records.files`: files a reader never sees half-written, output paths checked before work;
- `scnet.records.run_dir`: `RunDir`, the names of a run folder's files and the checks that keep it
  one run's (config.json written once, never another run's work resumed or evaluated into it);
- `scnet.records.result`: result.json's schema (COCO metrics, speed, timing), validated both ways;
- `scnet.records.iou`: the IoU recorder behind Figure 1 (iou_records.npz).

The project imports from those modules; the names below are re-exported for code written against
the single module `scnet.records` that this package replaced.
"""
from scnet.records.files import (OutputError, RecordError, atomic_write, check_writable_dir, is_inside,
                                 new_file_mode, read_json, remove_stale_temporaries, write_bytes_atomic,
                                 write_json_atomic, write_text_atomic)
from scnet.records.iou import IOU_FILE, IoURecorder, IoURecords, share_at_or_below_counts
from scnet.records.result import (FORMAT_VERSION, METRIC_KINDS, METRIC_NAMES, RESULT_FILE, coco_stats_to_metrics,
                                  read_result, validate_result, write_result)
from scnet.records.run_dir import (RunDir, RunDirError, check_new_output_file, read_config, read_env, write_config,
                                   write_env)

CONFIG_FILE = RunDir.CONFIG
ENV_FILE = RunDir.ENV
RUN_DIR_MARKERS = RunDir.MARKERS

__all__ = [
    "CONFIG_FILE", "ENV_FILE", "FORMAT_VERSION", "IOU_FILE", "METRIC_KINDS", "METRIC_NAMES", "RESULT_FILE",
    "RUN_DIR_MARKERS", "IoURecorder", "IoURecords", "OutputError", "RecordError", "RunDir", "RunDirError",
    "atomic_write", "check_new_output_file", "check_writable_dir", "coco_stats_to_metrics", "is_inside",
    "new_file_mode", "read_config", "read_env", "read_json", "read_result", "remove_stale_temporaries",
    "share_at_or_below_counts", "validate_result", "write_bytes_atomic", "write_config", "write_env", "write_result",
    "write_json_atomic", "write_text_atomic",
]
