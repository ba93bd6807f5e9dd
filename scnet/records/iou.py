"""IoU recording for Figure 1: the IoUs of the mask branch's training samples and of the detections.

`IoURecorder` keeps, per tag, fine-binned counts (exact shares at bin edges, exact mean) and a bounded
uniform reservoir sample of raw values (for distances and plots), so it can stay on for a whole
training run at constant memory; `IoURecords` reads back what it saved (iou_records.npz).
"""
from __future__ import annotations

import io
import json
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from scnet.records.files import RecordError, file_in, write_bytes_atomic
from scnet.records.result import FORMAT_VERSION

IOU_FILE = "iou_records.npz"
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
        path = file_in(run_dir_or_file, IOU_FILE)
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
