"""An unpickler for downloaded checkpoints that can call nothing outside a small allow-list.

A `.pth` file is a pickle, and a pickle may name any importable function (`os.system`,
`builtins.eval`, ...) and call it while loading. MMDetection checkpoints also pickle mmengine objects
(ConfigDict, HistoryBuffer, ...) into `meta` and `message_hub`, so `torch.load(weights_only=True)`
refuses them, and it cannot fill a dict subclass item by item either. This unpickler resolves a
global only if it is on `ALLOWED_GLOBALS` (tensor and storage rebuilding, dtypes, OrderedDict,
numpy arrays: what `weights_only=True` accepts plus numpy's array rebuild); every other global,
importable or not, becomes an inert `Placeholder` class. Placeholders only store what they are
given: building, calling, filling or `__setstate__` on them runs no code from the file, so a
`__reduce__` payload ends up as data (`<not loaded: posix.system(...)>`), never as a call. State
is set (BUILD) only on data objects, so a file cannot rewire an allowed class either.

Used as `torch.load(..., weights_only=False, pickle_module=restricted_pickle)`: torch then builds
its unpickler as a subclass of ours, so every global, in the zip format and in the legacy format
(whose first pickle torch reads with our `load`), goes through `find_class` below.
"""
from __future__ import annotations

import _compat_pickle
import collections
import pickle
from typing import Any

import numpy as np
import torch

try:  # numpy >= 2 pickles arrays with numpy._core names; 1.x with numpy.core
    from numpy._core.multiarray import _reconstruct as _np_reconstruct
    from numpy._core.multiarray import scalar as _np_scalar
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct as _np_reconstruct  # type: ignore[no-redef]
    from numpy.core.multiarray import scalar as _np_scalar  # type: ignore[no-redef]


def _allowed_globals() -> dict[str, Any]:
    allowed: dict[str, Any] = {
        "collections.OrderedDict": collections.OrderedDict,
        "builtins.set": set,
        "builtins.frozenset": frozenset,
        "builtins.complex": complex,
        "builtins.bytearray": bytearray,
        "_codecs.encode": __import__("_codecs").encode,  # bytes in protocol-2 pickles
        "torch.Size": torch.Size,
        "torch.device": torch.device,
        "torch.Tensor": torch.Tensor,
        "torch.nn.parameter.Parameter": torch.nn.Parameter,
        "torch._tensor._rebuild_from_type_v2": torch._tensor._rebuild_from_type_v2,
        "numpy.ndarray": np.ndarray,
        "numpy.dtype": np.dtype,
    }
    for name in ("_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_tensor_v3", "_rebuild_parameter",
                 "_rebuild_parameter_with_state", "_rebuild_device_tensor_from_cpu_tensor",
                 "_rebuild_device_tensor_from_numpy"):
        if hasattr(torch._utils, name):
            allowed[f"torch._utils.{name}"] = getattr(torch._utils, name)
    for name, value in vars(torch).items():
        if isinstance(value, torch.dtype):
            allowed[f"torch.{name}"] = value
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[f"{module}._reconstruct"] = _np_reconstruct
        allowed[f"{module}.scalar"] = _np_scalar
    return allowed


ALLOWED_GLOBALS: dict[str, Any] = _allowed_globals()


class Placeholder:
    """Stands in for an object of a class (or the result of a function) that is not allowed here.

    It keeps what the file gave it (`args`, `state`, `items`, `elements`) as plain data and has no
    method that calls anything it was given.
    """

    qualified_name = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> "Placeholder":
        return super().__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.__dict__["args"] = args
        self.__dict__["kwargs"] = kwargs

    def __setstate__(self, state: Any) -> None:
        self.__dict__["state"] = state

    # Subclasses of dict and list are rebuilt item by item (SETITEMS / APPENDS opcodes).
    def __setitem__(self, key: Any, value: Any) -> None:
        self.__dict__.setdefault("items", {})[key] = value

    def append(self, value: Any) -> None:
        self.__dict__.setdefault("elements", []).append(value)

    def extend(self, values: Any) -> None:
        if not isinstance(values, (list, tuple)):
            raise pickle.UnpicklingError(f"{self!r}: extend() with {type(values).__name__}")
        for value in values:
            self.append(value)

    def __repr__(self) -> str:
        return f"<not loaded: {self.qualified_name}(...)>"


_placeholders: dict[str, type[Placeholder]] = {}


def placeholder_for(qualified_name: str) -> type[Placeholder]:
    """One inert class per global name (so equal names give the same class, as imports would)."""
    if qualified_name not in _placeholders:
        short = qualified_name.rsplit(".", 1)[-1] or "global"
        _placeholders[qualified_name] = type(short if short.isidentifier() else "global", (Placeholder,),
                                             {"qualified_name": qualified_name, "__module__": __name__})
    return _placeholders[qualified_name]


def _may_build(inst: Any) -> bool:
    """BUILD (setting pickled state on an object) only on data objects, never on a class or a
    function: that would let a file rewire methods of allowed classes (e.g. `torch.Tensor`)."""
    if isinstance(inst, Placeholder) or isinstance(inst, np.dtype):
        return True
    return type(inst) in (collections.OrderedDict, torch.Tensor, torch.nn.Parameter, np.ndarray)


class Unpickler(pickle._Unpickler):  # the pure-Python unpickler: its opcodes can be restricted
    dispatch = dict(pickle._Unpickler.dispatch)

    def _load_build(self) -> None:
        inst = self.stack[-2]  # BUILD pops the state, then sets it on the object below it
        if not _may_build(inst):
            raise pickle.UnpicklingError(f"the file sets the state of {type(inst).__name__} {inst!r:.60}, "
                                         "which checkpoints never do")
        pickle._Unpickler.load_build(self)

    dispatch[pickle.BUILD[0]] = _load_build

    def find_class(self, module: str, name: str) -> Any:
        if self.proto < 3 and (module, name) in _compat_pickle.NAME_MAPPING:  # Python 2 spellings
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif self.proto < 3 and module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        qualified_name = f"{module}.{name}"
        allowed = ALLOWED_GLOBALS.get(qualified_name)
        return allowed if allowed is not None else placeholder_for(qualified_name)


def load(file: Any, **kwargs: Any) -> Any:
    return Unpickler(file, **kwargs).load()


# torch.load(pickle_module=...) looks these up on the module it is given.
dump = pickle.dump
dumps = pickle.dumps
