"""Counting the points where a GPU step would stall on the host: every op whose output size or value
the host must read before it can go on (`.item()`/`bool()` of a tensor, `nonzero`, boolean-mask
indexing and assignment, `unique`, NMS, `bincount`, `repeat_interleave` by a tensor, copies to the
host), and tensors made from Python data (`torch.tensor(list)`, `new_tensor`, indexing with a list),
which PyTorch copies to a GPU and then waits for (a number assigned through an index, `x[m] = 0`, is
not: it is filled on the device).

The count is taken on any device, CPU included, by watching the ops as they are dispatched, so that a
CPU-only test can hold the heads to a budget: it is a property of the code, as deterministic as the
ops it runs, not a timing. Each point is attributed to the innermost line of this project that led
to it (ops run by autograd to `backward: <node>`).

    with count_sync_points() as points:
        losses = model(images, targets)
        sum(losses.values()).backward()
    points.total, points.by_kind(), points.by_line()

Not seen: `Tensor.to(device)` towards the host (write `.cpu()` for a deliberate host read, which is
counted), and ops run in threads the counter was not entered in (the CPU RoIAlign pool: none of its
ops reads the device). On CUDA, `torch.cuda.set_sync_debug_mode("warn")` sees what actually synchronises;
`benchmarks/sync_points.py` reports both there.
"""
from __future__ import annotations

import sys
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

_ROOT = str(Path(__file__).resolve().parents[1])
_THIS = str(Path(__file__).resolve())
_MASK_DTYPES = (torch.bool, torch.uint8)

_SCALAR_READS = {"_local_scalar_dense", "equal"}
_BY_NAME = {"lift_fresh": "host-to-device copy", "nonzero": "nonzero", "nonzero_numpy": "nonzero",
            "argwhere": "nonzero", "masked_select": "boolean-mask index", "_unique2": "unique", "_unique": "unique",
            "unique_dim": "unique", "unique_consecutive": "unique", "unique_dim_consecutive": "unique",
            "nms": "nms", "bincount": "bincount"}
_HOST_READS = {"tolist", "numpy", "cpu"}
KINDS = ("scalar read", "nonzero", "boolean-mask index", "boolean-mask assign", "unique", "nms", "bincount",
         "repeat_interleave", "host copy", "host-to-device copy")


def _has_mask(indices: Any) -> bool:
    return any(isinstance(i, torch.Tensor) and i.dtype in _MASK_DTYPES for i in indices or ())


def _kind(name: str, overload: str, args: tuple, kwargs: dict) -> str | None:
    """What kind of host read the aten/torchvision op `name.overload` is, or None when it needs none.
    (Under inference mode composite ops arrive whole: `where(cond)`, `nonzero(as_tuple=True)`.)"""
    if name in _SCALAR_READS:
        return "scalar read"
    if name in _BY_NAME:
        return _BY_NAME[name]
    if name == "index" and _has_mask(args[1]):
        return "boolean-mask index"
    if name in ("index_put", "index_put_", "_index_put_impl_") and _has_mask(args[1]):
        return "boolean-mask assign"
    if name == "where" and overload == "":  # torch.where(condition): nonzero
        return "nonzero"
    if name == "repeat_interleave" and overload != "self_int" and kwargs.get("output_size") is None:
        return "repeat_interleave"  # repeats given as a tensor: the output size is their sum
    return None


def _source_line() -> str:
    """`path:line` of the innermost frame of this repository (not this module) on the stack."""
    node = torch._C._current_autograd_node()
    if node is not None:
        return f"backward: {node.name()}"
    frame = sys._getframe(2)
    while frame is not None:
        path = frame.f_code.co_filename
        if path.startswith(_ROOT) and path != _THIS and "/.venv/" not in path:
            return f"{Path(path).relative_to(_ROOT)}:{frame.f_lineno}"
        frame = frame.f_back
    return "<outside the repository>"


class SyncPoints:
    """The points counted so far: (kind, source line) -> count."""

    def __init__(self) -> None:
        self.counts: Counter[tuple[str, str]] = Counter()
        self.in_scalar_setitem = False

    def add(self, kind: str) -> None:
        if kind == "host-to-device copy" and self.in_scalar_setitem:
            return  # `x[i] = 0.0` wraps the number in a tensor, which on a GPU is filled there, not copied
        self.counts[(kind, _source_line())] += 1

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def by_kind(self) -> dict[str, int]:
        out: Counter[str] = Counter()
        for (kind, _), n in self.counts.items():
            out[kind] += n
        return dict(out)

    def by_line(self) -> dict[str, int]:
        out: Counter[str] = Counter()
        for (kind, line), n in self.counts.items():
            out[f"{line} ({kind})"] += n
        return dict(out.most_common())


class _DispatchWatch(TorchDispatchMode):
    def __init__(self, points: SyncPoints) -> None:
        super().__init__()
        self.points = points

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        kind = _kind(func._schema.name.split("::")[-1], func._schema.overload_name, args, kwargs)
        if kind is not None:
            self.points.add(kind)
        return func(*args, **kwargs)


class _HostReadWatch(TorchFunctionMode):
    """`tolist`, `numpy` and `cpu` copy a device tensor to the host; on a CPU tensor they dispatch no
    op the other watch could see."""

    def __init__(self, points: SyncPoints) -> None:
        super().__init__()
        self.points = points

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", None)
        if name in _HOST_READS and args and isinstance(args[0], torch.Tensor):
            self.points.add("host copy")
        if name == "__setitem__" and len(args) == 3 and isinstance(args[2], (bool, int, float)):
            self.points.in_scalar_setitem = True
            try:
                return func(*args, **(kwargs or {}))
            finally:
                self.points.in_scalar_setitem = False
        return func(*args, **(kwargs or {}))


class count_sync_points:  # noqa: N801 (a context manager, named for the `with` line it reads in)
    """Context manager collecting the sync points of the code it wraps into a `SyncPoints`."""

    def __init__(self) -> None:
        self.points = SyncPoints()
        self._modes = (_HostReadWatch(self.points), _DispatchWatch(self.points))

    def __enter__(self) -> SyncPoints:
        for mode in self._modes:
            mode.__enter__()
        return self.points

    def __exit__(self, *exc: Any) -> None:
        for mode in reversed(self._modes):
            mode.__exit__(*exc)


@contextmanager
def gpu_paths() -> Iterator[None]:
    """Paste masks (one host read per image), run NMS (one call, never split by group) and RoIAlign's
    backward (torchvision's kernel, not the CPU's separable one) as on a GPU, whatever the device: the
    CPU's own paths read the host where a GPU's do not, and a count means what a GPU would wait for.
    One switch for the benchmark and the tests, so they count the same path."""
    from scnet.models import nms as nms_module
    from scnet.models import roi_features, roi_heads
    from scnet.models.postprocess import paste_masks_batched

    cpu_paste, cpu_split = roi_heads.paste_masks, nms_module.CPU_SPLIT_ABOVE
    cpu_backward = roi_features.CPU_SEPARABLE_BACKWARD
    roi_heads.paste_masks, nms_module.CPU_SPLIT_ABOVE = paste_masks_batched, None
    roi_features.CPU_SEPARABLE_BACKWARD = False
    try:
        yield
    finally:
        roi_heads.paste_masks, nms_module.CPU_SPLIT_ABOVE = cpu_paste, cpu_split
        roi_features.CPU_SEPARABLE_BACKWARD = cpu_backward
