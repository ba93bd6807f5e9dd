"""The one module that reads and writes a run's records (see docs/interfaces.md, "Run directory").

Every file is written atomically (temp file in the same folder + `os.replace`), so a reader never
sees half a file from a run that died mid-write; `result.json` is written last and marks a run done.
Readers validate what they read and raise `RecordError` naming the file and the field, because the
analysis walks folders that may hold foreign or half-written files and must say which one it skipped.

IoU recording (`IoURecorder`) keeps, per tag, fine-binned counts (exact shares at bin edges, exact
mean) and a bounded uniform reservoir sample of raw values (for distances and plots), so it can stay
on for a whole training run at constant memory.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, BinaryIO, Callable

import numpy as np

FORMAT_VERSION = 1

RESULT_FILE = "result.json"
CONFIG_FILE = "config.json"
ENV_FILE = "env.json"
IOU_FILE = "iou_records.npz"

METRIC_KINDS = ("bbox", "segm")
METRIC_NAMES = ("AP", "AP50", "AP75", "APS", "APM", "APL")


class RecordError(ValueError):
    """A record file that is missing, foreign, half-written or of an unknown format version."""


class OutputError(OSError):
    """An output path that cannot be written (read-only, a file where a folder belongs, disk full);
    the message names the path and what to do. An OSError, so `except OSError` still catches it."""

    def __init__(self, message: str, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno


# --------------------------------------------------------------------------------------------- files

def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None], *, overwrite: bool = True) -> Path:
    """Call `write(handle)` on a temp file beside `path`, fsync, then os.replace it into place, so a
    reader (or a run killed mid-write) never sees half a file. A failed write (disk full, read-only
    folder) removes the temp file, leaves any previous `path` as it was, and raises OutputError.
    With `overwrite=False` the file is linked into place only if `path` does not exist by then."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise _output_error(path, exc) from exc
    try:
        os.fchmod(fd, new_file_mode())  # mkstemp makes 0600; results are shared like any other file
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)  # fails if a file appeared meanwhile: never replace it
            except FileExistsError:
                raise OutputError(f"{path}: a file of that name appeared while this one was being made; it "
                                  "was left as it is (choose another path, or remove it and run again)") from None
            os.unlink(tmp)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(exc, OSError) and not isinstance(exc, OutputError):
            raise _output_error(path, exc) from exc
        raise
    return path


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Remove the temp files `atomic_write` leaves when its process is killed mid-write
    (`.NAME.XXXXXXXX.tmp`); call it only where no other process can be writing (the run's lock
    holder at start). Returns what was removed."""
    removed = []
    try:
        candidates = list(Path(folder).glob(".*.tmp"))
    except OSError:
        return removed
    for path in candidates:
        try:
            if path.is_file() and not path.is_symlink():
                path.unlink()
                removed.append(path)
        except OSError:
            pass
    return removed


def _output_error(path: Path, exc: OSError) -> OutputError:
    kept = " (the previous file is unchanged)" if path.exists() else ""
    reason = exc.strerror or str(exc)
    return OutputError(f"{path}: could not be written: {reason}{kept}; free disk space or make the folder "
                       "writable (or choose another path), then run the same command again", exc.errno)


def check_writable_dir(path: str | os.PathLike, what: str) -> Path:
    """Prove that the folder `path` can be created (if absent) and written, leaving no trace, before
    any long work writes there. `what` names the option the path came from (e.g. "--out").

    The check writes and removes a probe file in the nearest existing folder, because permission
    bits do not tell (root, read-only mounts, ACLs)."""
    path = Path(path)
    existing = next((folder for folder in (path, *path.parents) if folder.exists() or folder.is_symlink()),
                    Path("."))
    if not existing.is_dir():
        from scnet.messages import path_kind

        raise OutputError(f"{what} {path}: {existing} is {path_kind(existing)}, not a folder; choose another path")
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-test.", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OutputError(f"{what} {path}: {existing} is not a writable folder ({exc.strerror or exc}); "
                          "choose a folder you can write to", exc.errno) from exc
    return path


# What marks a folder as a run directory (of scnet.train, scnet.evaluate or experiments.run).
RUN_DIR_MARKERS = (CONFIG_FILE, RESULT_FILE, "checkpoints", "run.lock", "metrics.jsonl")


def is_inside(path: str | os.PathLike | None, folder: str | os.PathLike) -> bool:
    """Whether `path` (e.g. an OSError's filename) lies in `folder`."""
    if not isinstance(path, (str, os.PathLike)):
        return False
    try:
        return Path(os.path.abspath(path)).is_relative_to(os.path.abspath(folder))
    except (OSError, ValueError):
        return False


def is_run_dir(folder: str | os.PathLike) -> bool:
    folder = Path(folder)
    return any((folder / marker).exists() or (folder / marker).is_symlink() for marker in RUN_DIR_MARKERS)


def check_new_output_file(path: str | os.PathLike, what: str, *, force: bool = False) -> Path:
    """Refuse, before any work, an output file that would overwrite one (unless `force`), that is a
    folder, whose folder is a run directory (its records are the run's own), or that cannot be
    written. `what` names the option (e.g. "--out")."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{what} {path}: is a folder; give the path of the file to write")
    folder = path.parent.resolve() if path.parent.exists() else path.parent
    if is_run_dir(folder):
        raise OutputError(f"{what} {path}: {folder} is a run directory, whose files belong to the run; write "
                          "elsewhere")
    if (path.exists() or path.is_symlink()) and not force:
        raise OutputError(f"{what} {path}: the file exists; give another path, or --force to replace it")
    check_writable_dir(path.parent, what)
    return path


def ensure_writable_dir(path: str | os.PathLike, what: str) -> Path:
    """`check_writable_dir`, then create the folder."""
    path = check_writable_dir(path, what)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{what} {path}: cannot be created ({exc.strerror or exc}); choose a folder you can "
                          "write to", exc.errno) from exc
    return path


def new_file_mode() -> int:
    """0666 less the process's umask: the mode `open()` would give a new file, so collaborators on a
    shared cluster can read results and checkpoints exactly as the user's umask allows."""
    try:  # Linux >= 4.7 reports it without changing it
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # elsewhere: read by setting, then restore at once
    os.umask(mask)
    return 0o666 & ~mask


def write_bytes_atomic(path: str | os.PathLike, data: bytes, *, overwrite: bool = True) -> Path:
    return atomic_write(path, lambda handle: handle.write(data), overwrite=overwrite)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Atomically write a text file (tables, captions) so a reader never sees half of it."""
    return write_bytes_atomic(Path(path), text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike, obj: Any, *, overwrite: bool = True) -> Path:
    """Write `obj` as indented JSON; NaN/inf are refused (they are not JSON and break other readers)."""
    try:
        text = json.dumps(obj, indent=2, sort_keys=True, allow_nan=False, default=_json_default)
    except (TypeError, ValueError) as exc:
        raise RecordError(f"{path}: cannot be written as JSON: {exc}") from exc
    return write_bytes_atomic(Path(path), (text + "\n").encode("utf-8"), overwrite=overwrite)


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"object of type {type(value).__name__} is not JSON serialisable")


def read_json(path: str | os.PathLike) -> dict[str, Any]:
    """Read a JSON object; a missing, truncated or non-object file raises RecordError naming it."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (FileNotFoundError, IsADirectoryError) as exc:
        from scnet.messages import path_kind

        kind = path_kind(path)
        raise RecordError(f"{path}: file not found" if kind == "nothing" else f"{path}: is {kind}, not a "
                          "file") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise RecordError(f"{path}: cannot be read: {exc}") from exc
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RecordError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}); "
                          "half-written or not a record file") from exc
    if not isinstance(value, dict):
        raise RecordError(f"{path}: expected a JSON object at top level, found {type(value).__name__}")
    return value


def _file_in(run_dir_or_file: str | os.PathLike, name: str) -> Path:
    path = Path(run_dir_or_file)
    return path / name if path.is_dir() else path


def write_config(run_dir: str | os.PathLike, config: Mapping[str, Any]) -> Path:
    """The run's frozen config (model flags, data, schedule, seed, scale) beside its outputs."""
    return write_json_atomic(Path(run_dir) / CONFIG_FILE, dict(config))


def read_config(run_dir_or_file: str | os.PathLike) -> dict[str, Any]:
    return read_json(_file_in(run_dir_or_file, CONFIG_FILE))


def write_env(run_dir: str | os.PathLike, env: Mapping[str, Any]) -> Path:
    """Versions, git commit and host, so a number can be traced to the code that made it."""
    return write_json_atomic(Path(run_dir) / ENV_FILE, dict(env))


def read_env(run_dir_or_file: str | os.PathLike) -> dict[str, Any]:
    return read_json(_file_in(run_dir_or_file, ENV_FILE))


# -------------------------------------------------------------------------------------------- result

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
    # Round-trip through JSON first so tuples/numpy scalars are validated in the form readers will see.
    try:
        normalised = json.loads(json.dumps(payload, allow_nan=False, default=_json_default))
    except (TypeError, ValueError) as exc:
        raise RecordError(f"{path}: cannot be written as JSON: {exc}") from exc
    validate_result(normalised, str(path))
    return write_json_atomic(path, normalised)


def read_result(path: str | os.PathLike) -> dict[str, Any]:
    """Read and validate a result.json (or the one in a run directory)."""
    file = _file_in(path, RESULT_FILE)
    result = read_json(file)
    validate_result(result, str(file))
    return result


# ----------------------------------------------------------------------------------------- IoU data

DEFAULT_BINS = 1000
DEFAULT_RESERVOIR = 20_000
# float32 IoUs sit up to ~6e-8 away from the decimal they stand for; within this many bin widths of an
# edge a value counts as on the edge, so float32(0.6) is "at or below 0.6" as a float32 comparison says.
_EDGE_TOLERANCE_BINS = 1e-4


def _bin_index(values: np.ndarray, bins: int) -> np.ndarray:
    """Right-closed bins: bin 0 = [0, 1/B], bin i = (i/B, (i+1)/B]; shares at edges k/B are then exact."""
    index = np.ceil(values * bins - _EDGE_TOLERANCE_BINS).astype(np.int64) - 1
    return np.clip(index, 0, bins - 1)


def _as_numpy(ious: Any, tag: str) -> np.ndarray:
    if hasattr(ious, "detach"):  # torch tensor, without importing torch here
        ious = ious.detach().to("cpu").double().numpy()
    values = np.asarray(ious, dtype=np.float64).reshape(-1)
    if values.size and (not np.all(np.isfinite(values)) or values.min() < -1e-6 or values.max() > 1 + 1e-6):
        bad = values[~np.isfinite(values) | (values < -1e-6) | (values > 1 + 1e-6)][:3]
        raise ValueError(f"IoURecorder.add({tag!r}): IoUs must be finite and in [0, 1]; found {bad.tolist()}")
    return np.clip(values, 0.0, 1.0)


def share_at_or_below_counts(counts: np.ndarray, threshold: float) -> float:
    """Share of values <= threshold from right-closed bin counts over [0, 1].

    Exact at bin edges (k / len(counts)), linearly interpolated inside a bin; NaN when empty.
    """
    counts = np.asarray(counts)
    bins = counts.size
    total = counts.sum()
    if total == 0:
        return float("nan")
    position = float(np.clip(threshold, 0.0, 1.0)) * bins
    whole = min(int(math.floor(position + _EDGE_TOLERANCE_BINS)), bins)
    partial = max(position - whole, 0.0)
    below = counts[:whole].sum() + (counts[whole] * partial if whole < bins else 0.0)
    return float(below / total)


class _TagState:
    __slots__ = ("counts", "sample", "filled", "seen", "total")

    def __init__(self, bins: int, capacity: int) -> None:
        self.counts = np.zeros(bins, dtype=np.int64)
        self.sample = np.zeros(capacity, dtype=np.float32)
        self.filled = 0
        self.seen = 0
        self.total = 0.0


class IoURecorder:
    """Accumulates IoUs by tag ("train/stage0", ..., "inference") during a run.

    The reservoir is Vitter's algorithm R applied to each batch with a seeded generator, so the
    sample is uniform over everything seen and the memory stays bounded; `state_dict` carries the
    generator so a resumed run continues the same stream.
    """

    def __init__(self, bins: int = DEFAULT_BINS, reservoir_size: int = DEFAULT_RESERVOIR, seed: int = 0) -> None:
        if bins < 1 or reservoir_size < 1:
            raise ValueError(f"IoURecorder: bins={bins} and reservoir_size={reservoir_size} must be >= 1")
        self.bins = int(bins)
        self.reservoir_size = int(reservoir_size)
        self.seed = int(seed)
        self._rng = np.random.default_rng(seed)
        self._tags: dict[str, _TagState] = {}

    @property
    def tags(self) -> list[str]:
        return sorted(self._tags)

    def add(self, tag: str, ious: Any) -> None:
        if not isinstance(tag, str) or not tag:
            raise ValueError(f"IoURecorder.add: tag must be a non-empty string, got {tag!r}")
        values = _as_numpy(ious, tag)
        state = self._tags.get(tag)
        if state is None:
            state = self._tags[tag] = _TagState(self.bins, self.reservoir_size)
        if values.size == 0:
            return
        state.counts += np.bincount(_bin_index(values, self.bins), minlength=self.bins)
        state.total += float(values.sum())
        self._reservoir_update(state, values)
        state.seen += values.size

    def _reservoir_update(self, state: _TagState, values: np.ndarray) -> None:
        capacity = self.reservoir_size
        free = min(capacity - state.filled, values.size)
        if free > 0:
            state.sample[state.filled:state.filled + free] = values[:free]
            state.filled += free
        rest = values[free:]
        if rest.size == 0:
            return
        # Item number n (0-based, over the whole stream) replaces slot j ~ U{0..n} if j < capacity.
        positions = state.seen + free + np.arange(rest.size, dtype=np.int64)
        slots = self._rng.integers(0, positions + 1)
        keep = slots < capacity
        slots, chosen = slots[keep], rest[keep]
        if slots.size == 0:
            return
        # Later items overwrite earlier ones in the same slot, as the sequential algorithm would.
        _, last = np.unique(slots[::-1], return_index=True)
        last = slots.size - 1 - last
        state.sample[slots[last]] = chosen[last]

    def state_dict(self) -> dict[str, Any]:
        """Plain Python and torch tensors only, so `torch.load(weights_only=True)` can read checkpoints."""
        import torch

        return {
            "format_version": FORMAT_VERSION,
            "bins": self.bins,
            "reservoir_size": self.reservoir_size,
            "seed": self.seed,
            "rng": json.dumps(self._rng.bit_generator.state),
            "tags": {
                tag: {
                    "counts": torch.from_numpy(s.counts.copy()),
                    "sample": torch.from_numpy(s.sample[:s.filled].copy()),
                    "seen": int(s.seen),
                    "total": float(s.total),
                }
                for tag, s in self._tags.items()
            },
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("format_version") != FORMAT_VERSION:
            raise RecordError(f"IoURecorder state: format_version {state.get('format_version')!r}, "
                              f"expected {FORMAT_VERSION}")
        self.bins = int(state["bins"])
        self.reservoir_size = int(state["reservoir_size"])
        self.seed = int(state["seed"])
        self._rng = np.random.default_rng()
        self._rng.bit_generator.state = json.loads(state["rng"])
        self._tags = {}
        for tag, saved in state["tags"].items():
            s = _TagState(self.bins, self.reservoir_size)
            s.counts[:] = np.asarray(saved["counts"], dtype=np.int64)
            sample = np.asarray(saved["sample"], dtype=np.float32)
            s.sample[:sample.size] = sample
            s.filled = int(sample.size)
            s.seen = int(saved["seen"])
            s.total = float(saved["total"])
            self._tags[tag] = s

    def save(self, run_dir: str | os.PathLike) -> Path:
        """Atomically write RUN_DIR/iou_records.npz (arrays by tag index; the tag names in `meta`)."""
        tags = self.tags
        meta = {
            "format_version": FORMAT_VERSION,
            "bins": self.bins,
            "reservoir_size": self.reservoir_size,
            "tags": tags,
            "seen": [int(self._tags[t].seen) for t in tags],
            "total": [float(self._tags[t].total) for t in tags],
        }
        arrays: dict[str, np.ndarray] = {"meta": np.array(json.dumps(meta))}
        for i, tag in enumerate(tags):
            s = self._tags[tag]
            arrays[f"counts_{i}"] = s.counts
            arrays[f"sample_{i}"] = s.sample[:s.filled]
        import io

        buffer = io.BytesIO()
        np.savez_compressed(buffer, **arrays)
        return write_bytes_atomic(Path(run_dir) / IOU_FILE, buffer.getvalue())

    def records(self) -> "IoURecords":
        """A read-only view of what has been recorded so far (for logging without saving)."""
        tags = self.tags
        return IoURecords(
            source="<in memory>",
            bins=self.bins,
            counts={t: self._tags[t].counts.copy() for t in tags},
            samples={t: self._tags[t].sample[:self._tags[t].filled].copy() for t in tags},
            seen={t: self._tags[t].seen for t in tags},
            totals={t: self._tags[t].total for t in tags},
        )


class IoURecords:
    """Read-only view of saved IoU recordings; a tag argument may be a prefix ("train/") merging tags."""

    def __init__(self, source: str, bins: int, counts: dict[str, np.ndarray], samples: dict[str, np.ndarray],
                 seen: dict[str, int], totals: dict[str, float]) -> None:
        self.source = source
        self.bins = bins
        self._counts = counts
        self._samples = samples
        self._seen = seen
        self._totals = totals
        for array in (*counts.values(), *samples.values()):
            array.setflags(write=False)

    @classmethod
    def load(cls, run_dir_or_file: str | os.PathLike) -> "IoURecords":
        path = _file_in(run_dir_or_file, IOU_FILE)
        try:
            with np.load(path, allow_pickle=False) as data:
                meta = json.loads(str(data["meta"]))
                if meta.get("format_version") != FORMAT_VERSION:
                    raise RecordError(f"{path}: field 'format_version' is {meta.get('format_version')!r}; "
                                      f"this code reads version {FORMAT_VERSION}")
                tags = list(meta["tags"])
                counts = {t: np.asarray(data[f"counts_{i}"], dtype=np.int64) for i, t in enumerate(tags)}
                samples = {t: np.asarray(data[f"sample_{i}"], dtype=np.float32) for i, t in enumerate(tags)}
                seen = dict(zip(tags, (int(v) for v in meta["seen"])))
                totals = dict(zip(tags, (float(v) for v in meta["total"])))
                bins = int(meta["bins"])
        except FileNotFoundError as exc:
            raise RecordError(f"{path}: file not found (the run recorded no IoUs?)") from exc
        except RecordError:
            raise
        except Exception as exc:  # zip/npz/JSON damage: name the file, never a bare traceback
            raise RecordError(f"{path}: not a readable IoU record file ({type(exc).__name__}: {exc})") from exc
        return cls(str(path), bins, counts, samples, seen, totals)

    @property
    def tags(self) -> list[str]:
        return sorted(self._counts)

    def resolve(self, tags: str | Iterable[str]) -> list[str]:
        """Exact tag names, or every tag starting with a given prefix; unknown names raise KeyError."""
        wanted = [tags] if isinstance(tags, str) else list(tags)
        found: list[str] = []
        for name in wanted:
            matches = [name] if name in self._counts else [t for t in self.tags if t.startswith(name)]
            if not matches:
                raise KeyError(f"{self.source}: no IoU tag or tag prefix {name!r}; recorded tags: {self.tags}")
            found.extend(t for t in matches if t not in found)
        return found

    def counts(self, tags: str | Iterable[str]) -> np.ndarray:
        """Summed bin counts; bin i covers (i/B, (i+1)/B] (bin 0 includes 0)."""
        names = self.resolve(tags)
        return np.sum([self._counts[t] for t in names], axis=0)

    def bin_edges(self) -> np.ndarray:
        return np.linspace(0.0, 1.0, self.bins + 1)

    def count(self, tags: str | Iterable[str]) -> int:
        return int(sum(self._seen[t] for t in self.resolve(tags)))

    def sample(self, tags: str | Iterable[str], seed: int = 0) -> np.ndarray:
        """A uniform sample of the union of the tags' values.

        Each tag's reservoir is a uniform sample of its own stream; to merge them without
        over-representing a small stream, every tag keeps the same fraction of its stream
        (the smallest reservoir/stream ratio), drawn with a fixed seed.
        """
        names = [t for t in self.resolve(tags) if self._seen[t] > 0]
        if not names:
            return np.zeros(0, dtype=np.float32)
        if len(names) == 1:
            return self._samples[names[0]].copy()
        ratio = min(self._samples[t].size / self._seen[t] for t in names)
        rng = np.random.default_rng(seed)
        parts = []
        for t in names:
            take = int(math.floor(ratio * self._seen[t]))
            pool = self._samples[t]
            parts.append(pool if take >= pool.size else rng.choice(pool, size=take, replace=False))
        return np.concatenate(parts)

    def share_at_or_below(self, tags: str | Iterable[str], threshold: float) -> float:
        """Fraction of recorded IoUs <= threshold (see `share_at_or_below_counts`)."""
        return share_at_or_below_counts(self.counts(tags), threshold)

    def mean(self, tags: str | Iterable[str]) -> float:
        """Exact mean over everything recorded (kept as a running sum, not from the bins)."""
        names = self.resolve(tags)
        n = sum(self._seen[t] for t in names)
        return float("nan") if n == 0 else float(sum(self._totals[t] for t in names) / n)
