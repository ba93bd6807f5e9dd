"""An unpickler for downloaded checkpoints: it calls nothing but a few checked builders, and its work
and memory are bounded by the size of what it reads.

A `.pth` file is a pickle, and a pickle may name any importable function and call it while loading.
MMDetection checkpoints also pickle mmengine objects (ConfigDict, HistoryBuffer) and numpy arrays
into `meta` and `message_hub`, which `torch.load(weights_only=True)` refuses; and weights_only
admits `bytearray(n)`, `_codecs.encode` with any codec and `torch.Tensor(n)` (via NEWOBJ), so a
33-byte file allocates gigabytes or a small one encodes punycode for minutes.

What this unpickler admits (`BUILDERS`): the tensor rebuilds of `torch.save` (`_rebuild_tensor`,
`_v2`, `_v3`, `_rebuild_parameter`, `_rebuild_from_type_v2`) over storages the caller supplies
through `persistent_load`, `torch.Size`, dtypes, `OrderedDict`, `set`, `frozenset`, `complex`,
`bytearray` of given bytes and `_codecs.encode(text, "latin1")` (how protocol-2 pickles spell bytes).
Each is a function of ours that checks its arguments before calling torch or the builtin. Every
other global, numpy's included, becomes an inert `Placeholder` class that only stores what it is
given. Objects can be created (NEWOBJ, INST, OBJ) only of placeholder classes, state can be set
(BUILD) only on placeholders and on an OrderedDict's `_metadata`, and items can be set or appended
only on plain containers and placeholders.

Bounds: every call and every hash of a key is charged to a work budget proportional to the bytes
read (`WORK_PER_BYTE`), a declared length (BYTEARRAY8) may not exceed the bytes left in the input,
and dictionary keys and set members must hash in bounded time (strings, bytes, small integers,
flat tuples of them). Anything else stops the load with `pickle.UnpicklingError`.
"""
from __future__ import annotations

import _compat_pickle
import collections
import math
import pickle
import struct
import sys
from typing import Any, Callable

import torch

# Work units (calls, argument items, hashed key items) allowed per byte of pickle, on top of a
# fixed allowance. A real checkpoint uses about one per opcode.
WORK_PER_BYTE = 16
WORK_ALLOWANCE = 1_000_000
MAX_TENSOR_DIMS = 64
# Integers hash to themselves modulo this prime: beyond it, distinct keys can share a hash and make
# a dict quadratic to fill.
_HASH_MODULUS = sys.hash_info.modulus


class Placeholder:
    """Stands in for an object of a class (or the result of a function) that is not allowed here.

    It keeps what the file gave it (`args`, `kwargs`, `state`, `items`, `elements`) as plain data
    and has no method that calls anything it was given. Its repr names only its global.
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
        if not isinstance(values, list):
            raise pickle.UnpicklingError(f"{self!r}: extend() with {type(values).__name__}")
        self.__dict__.setdefault("elements", []).extend(values)

    def __repr__(self) -> str:
        return f"<not loaded: {self.qualified_name}(...)>"


_placeholders: dict[str, type[Placeholder]] = {}


def placeholder_for(qualified_name: str) -> type[Placeholder]:
    """One inert class per global name (so equal names give the same class, as imports would)."""
    qualified_name = qualified_name[:200]
    if qualified_name not in _placeholders:
        short = qualified_name.rsplit(".", 1)[-1] or "global"
        _placeholders[qualified_name] = type(short if short.isidentifier() else "global", (Placeholder,),
                                             {"qualified_name": qualified_name, "__module__": __name__})
    return _placeholders[qualified_name]


class TypeToken:
    """What `torch.Tensor` / `torch.nn.Parameter` resolve to: a name the tensor builders accept as
    `new_type`, never a class the file could instantiate (`torch.Tensor(n)` allocates n floats)."""

    def __init__(self, cls: type) -> None:
        self.cls = cls

    def __repr__(self) -> str:
        return f"<type {self.cls.__name__}>"


class StorageType:
    """A storage class named in a persistent id (`torch.FloatStorage`): only its dtype is used."""

    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype

    def __repr__(self) -> str:
        return f"<storage of {self.dtype}>"


def _refuse(what: str) -> pickle.UnpicklingError:
    return pickle.UnpicklingError(f"{what}, which checkpoints never do")


# ------------------------------------------------------------------------------------- builders

def _int(value: Any, name: str, low: int = 0) -> int:
    if type(value) is not int or value < low:
        raise pickle.UnpicklingError(f"tensor {name} must be an integer >= {low}, found {type(value).__name__}")
    return value


def _shape(value: Any, name: str) -> tuple[int, ...]:
    if not isinstance(value, tuple) or len(value) > MAX_TENSOR_DIMS:
        raise pickle.UnpicklingError(f"tensor {name} must be a tuple of at most {MAX_TENSOR_DIMS} integers")
    return tuple(_int(v, name) for v in value)


def _no_hooks(hooks: Any) -> None:
    if hooks is not None and (not isinstance(hooks, dict) or hooks):
        raise _refuse("the file attaches backward hooks to a tensor")


def _no_state(state: Any) -> None:
    if state is not None and state != {} and state != ():
        if not (isinstance(state, tuple) and all(part in (None, {}) for part in state)):
            raise _refuse("the file sets attributes on a tensor")


def _storage(value: Any) -> torch.storage.TypedStorage:
    if not isinstance(value, torch.storage.TypedStorage):
        raise pickle.UnpicklingError(f"a tensor's storage must come from the file's storage records, "
                                     f"found {type(value).__name__}")
    return value


def _view(storage: Any, offset: Any, size: Any, stride: Any, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A tensor over existing storage bytes: `set_` checks the bounds, nothing is allocated."""
    storage = _storage(storage)
    dtype = storage.dtype if dtype is None else dtype
    offset, size, stride = _int(offset, "offset"), _shape(size, "size"), _shape(stride, "stride")
    if len(size) != len(stride):
        raise pickle.UnpicklingError("a tensor's size and stride have different lengths")
    last = offset + sum((n - 1) * step for n, step in zip(size, stride)) if all(size) else -1
    element_size, nbytes = torch._utils._element_size(dtype), storage._untyped_storage.nbytes()
    if (last + 1) * element_size > nbytes:
        raise pickle.UnpicklingError("a tensor reaches past the end of its storage (out of bounds)")
    if math.prod(size) * element_size > nbytes:  # what any copy of it would allocate
        raise pickle.UnpicklingError("a tensor has more elements than its data in the file (an overlapping or "
                                     "stride-0 view), which checkpoints never hold")
    return torch.empty((0,), dtype=dtype).set_(storage._untyped_storage, offset, size, stride)


def rebuild_tensor(storage: Any, storage_offset: Any, size: Any, stride: Any) -> torch.Tensor:
    return _view(storage, storage_offset, size, stride)


def rebuild_tensor_v2(storage: Any, storage_offset: Any, size: Any, stride: Any, requires_grad: Any = False,
                      backward_hooks: Any = None, metadata: Any = None) -> torch.Tensor:
    _no_hooks(backward_hooks)
    _no_state(metadata)
    tensor = _view(storage, storage_offset, size, stride)
    tensor.requires_grad = bool(requires_grad) and tensor.is_floating_point()
    return tensor


def rebuild_tensor_v3(storage: Any, storage_offset: Any, size: Any, stride: Any, requires_grad: Any,
                      backward_hooks: Any, dtype: Any, metadata: Any = None) -> torch.Tensor:
    if not isinstance(dtype, torch.dtype):
        raise pickle.UnpicklingError(f"tensor dtype must be a torch dtype, found {type(dtype).__name__}")
    _no_hooks(backward_hooks)
    _no_state(metadata)
    tensor = _view(storage, storage_offset, size, stride, dtype)
    tensor.requires_grad = bool(requires_grad) and tensor.is_floating_point()
    return tensor


def _tensor(value: Any) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise pickle.UnpicklingError(f"a parameter's data must be a tensor, found {type(value).__name__}")
    return value


def rebuild_parameter(data: Any, requires_grad: Any, backward_hooks: Any) -> torch.nn.Parameter:
    _no_hooks(backward_hooks)
    data = _tensor(data)
    return torch.nn.Parameter(data, requires_grad=bool(requires_grad) and data.is_floating_point())


def rebuild_parameter_with_state(data: Any, requires_grad: Any, backward_hooks: Any, state: Any
                                 ) -> torch.nn.Parameter:
    _no_state(state)
    return rebuild_parameter(data, requires_grad, backward_hooks)


_TENSOR_BUILDERS: set[Callable[..., Any]] = set()


def rebuild_from_type_v2(func: Any, new_type: Any, args: Any, state: Any) -> torch.Tensor:
    if func not in _TENSOR_BUILDERS or not isinstance(new_type, TypeToken) or not isinstance(args, tuple):
        raise _refuse("the file rebuilds a tensor through another function or type")
    _no_state(state)
    tensor = func(*args)
    return tensor if type(tensor) is new_type.cls else tensor.as_subclass(new_type.cls)


_TENSOR_BUILDERS.update({rebuild_tensor, rebuild_tensor_v2, rebuild_tensor_v3, rebuild_parameter,
                         rebuild_parameter_with_state})


def make_size(dims: Any = ()) -> torch.Size:
    if not isinstance(dims, (tuple, list)) or len(dims) > MAX_TENSOR_DIMS:
        raise pickle.UnpicklingError(f"torch.Size takes at most {MAX_TENSOR_DIMS} integers")
    return torch.Size([_int(v, "size") for v in dims])


def make_ordered_dict(*args: Any) -> collections.OrderedDict:
    if args:
        raise _refuse("the file builds an OrderedDict from arguments (torch.save fills it item by item)")
    return collections.OrderedDict()


def make_complex(real: Any = 0.0, imag: Any = 0.0) -> complex:
    if not all(type(v) in (int, float) for v in (real, imag)):
        raise _refuse("the file builds a complex number from something other than two numbers")
    return complex(real, imag)


def latin1_bytes(text: Any, encoding: Any = "latin1") -> bytes:
    """`_codecs.encode(text, "latin1")`: protocol 2's spelling of a bytes object. Other codecs
    (punycode, idna, ...) cost far more than their input and are never what a pickle means."""
    if type(text) is not str or encoding not in ("latin1", "latin-1"):
        raise _refuse("the file calls _codecs.encode with another codec than latin1")
    return text.encode("latin1")


def make_bytearray(data: Any = b"", encoding: Any = None) -> bytearray:
    """bytearray of given bytes (or latin1 text), never of a count (`bytearray(3e9)` allocates it)."""
    if type(data) is str and encoding in ("latin1", "latin-1"):
        return bytearray(data.encode("latin1"))
    if type(data) is bytes and encoding is None:
        return bytearray(data)
    raise _refuse("the file builds a bytearray from something other than bytes")


# ------------------------------------------------------------------------------------ resolution

def _builders() -> dict[str, Any]:
    builders: dict[str, Any] = {
        "collections.OrderedDict": make_ordered_dict,
        "builtins.set": set,  # wrapped in Unpickler._call: members checked and charged
        "builtins.frozenset": frozenset,
        "builtins.complex": make_complex,
        "builtins.bytearray": make_bytearray,
        "_codecs.encode": latin1_bytes,
        "torch.Size": make_size,
        "torch.Tensor": TypeToken(torch.Tensor),
        "torch.nn.parameter.Parameter": TypeToken(torch.nn.Parameter),
        "torch._utils._rebuild_tensor": rebuild_tensor,
        "torch._utils._rebuild_tensor_v2": rebuild_tensor_v2,
        "torch._utils._rebuild_tensor_v3": rebuild_tensor_v3,
        "torch._utils._rebuild_parameter": rebuild_parameter,
        "torch._utils._rebuild_parameter_with_state": rebuild_parameter_with_state,
        "torch._tensor._rebuild_from_type_v2": rebuild_from_type_v2,
        "torch.tensor._rebuild_from_type_v2": rebuild_from_type_v2,  # torch < 1.9 spelling
        "torch.UntypedStorage": StorageType(torch.uint8),
        "torch.storage.UntypedStorage": StorageType(torch.uint8),
    }
    for name, value in vars(torch).items():
        if isinstance(value, torch.dtype):
            builders[f"torch.{name}"] = value
        elif name.endswith("Storage") and name[0].isupper():
            try:
                dtype = torch.serialization.StorageType(name).dtype
            except (KeyError, AttributeError):
                continue
            if dtype in (torch.qint8, torch.quint8, torch.qint32, torch.quint4x2, torch.quint2x4):
                continue  # quantized tensors need quantizer state this loader does not rebuild
            for module in ("torch", "torch.cuda"):
                builders[f"{module}.{name}"] = StorageType(dtype)
    return builders


BUILDERS: dict[str, Any] = _builders()
_CONTAINER_BUILDERS = (set, frozenset)
_FUNCTIONS = frozenset(value for value in BUILDERS.values() if callable(value) and value not in _CONTAINER_BUILDERS)


class Unpickler(pickle._Unpickler):  # the pure-Python unpickler: its opcodes can be restricted
    """`remaining()` (bytes left in the input) bounds declared lengths; `budget` the work."""

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, file: Any, *, remaining: Callable[[], int], budget: int | None = None,
                 persistent_load: Callable[[Any], Any] | None = None) -> None:
        super().__init__(file, encoding="utf-8")  # torch.load's choice for Python 2 strings
        self._remaining = remaining
        self.budget = WORK_ALLOWANCE + WORK_PER_BYTE * remaining() if budget is None else budget
        if persistent_load is not None:
            self.persistent_load = persistent_load

    def persistent_load(self, pid: Any) -> Any:
        raise _refuse("the file refers to external data here")

    # -- accounting
    def charge(self, units: int) -> None:
        self.budget -= units
        if self.budget < 0:
            raise pickle.UnpicklingError("the pickle asks for far more work than its size justifies "
                                         f"(over {WORK_PER_BYTE} operations per byte)")

    def _key(self, key: Any) -> None:
        """Dictionary keys and set members must hash in bounded time."""
        kind = type(key)
        if kind is tuple:
            self.charge(len(key))
            for part in key:
                if type(part) is tuple:
                    raise _refuse("the file uses a nested tuple as a dictionary key or set member")
                self._key(part)
        elif kind is int:
            if not -_HASH_MODULUS < key < _HASH_MODULUS:
                raise _refuse("the file uses an integer of over 60 bits as a dictionary key")
        elif kind in (str, bytes, bool, type(None), torch.dtype) or isinstance(key, Placeholder):
            return
        else:
            raise _refuse(f"the file uses a {kind.__name__} as a dictionary key or set member")

    # -- calls
    def _call(self, func: Any, args: Any, kwargs: Any = None) -> Any:
        if not isinstance(args, tuple) or (kwargs is not None and not isinstance(kwargs, dict)):
            raise pickle.UnpicklingError("call arguments must be a tuple (and a dict)")
        self.charge(1 + len(args) + (len(kwargs) if kwargs else 0))
        if isinstance(func, type) and issubclass(func, Placeholder):
            return func(*args, **(kwargs or {}))
        if kwargs:
            raise _refuse("the file passes keyword arguments to a builder")
        if func in _CONTAINER_BUILDERS:
            if len(args) > 1 or (args and not isinstance(args[0], (list, tuple))):
                raise _refuse(f"the file builds a {func.__name__} from something other than a list")
            members = args[0] if args else ()
            self.charge(len(members))
            for member in members:
                self._key(member)
            return func(members)
        if callable(func) and func in _FUNCTIONS:
            if func is latin1_bytes or func is make_bytearray:
                self.charge(sum(len(a) for a in args if isinstance(a, (str, bytes))))
            return func(*args)
        raise _refuse(f"the file calls a {type(func).__name__}")  # never its repr: the file built it

    def load_reduce(self) -> None:
        args = self.stack.pop()
        self.stack[-1] = self._call(self.stack[-1], args)

    def _new(self, cls: Any, args: Any, kwargs: Any = None) -> Any:
        if not (isinstance(cls, type) and issubclass(cls, Placeholder)):
            what = f"torch.{cls.cls.__name__}" if isinstance(cls, TypeToken) else f"a {type(cls).__name__}"
            raise _refuse(f"the file creates an object of {what} directly (NEWOBJ)")
        return self._call(cls, args, kwargs)

    def load_newobj(self) -> None:
        args = self.stack.pop()
        cls = self.stack.pop()
        self.append(self._new(cls, args))

    def load_newobj_ex(self) -> None:
        kwargs = self.stack.pop()
        args = self.stack.pop()
        cls = self.stack.pop()
        self.append(self._new(cls, args, kwargs))

    def _instantiate(self, klass: Any, args: list) -> None:  # INST and OBJ (protocols 0 and 1)
        self.append(self._call(klass, tuple(args)))

    # -- state and items
    def load_build(self) -> None:
        state = self.stack.pop()
        inst = self.stack[-1]
        if isinstance(inst, Placeholder):
            inst.__setstate__(state)
        elif type(inst) is collections.OrderedDict and isinstance(state, dict) and set(state) <= {"_metadata"}:
            if "_metadata" in state:  # a state dict's per-module versions (torch.nn.Module)
                inst._metadata = state["_metadata"]  # type: ignore[attr-defined]
        else:
            raise _refuse(f"the file sets the state of a {type(inst).__name__}")

    def _item_target(self, target: Any) -> Any:
        if type(target) not in (dict, collections.OrderedDict) and not isinstance(target, Placeholder):
            raise _refuse(f"the file sets items on a {type(target).__name__}")
        return target

    def load_setitem(self) -> None:
        value = self.stack.pop()
        key = self.stack.pop()
        self._key(key)
        self._item_target(self.stack[-1])[key] = value

    def load_setitems(self) -> None:
        items = self.pop_mark()
        target = self._item_target(self.stack[-1])
        for i in range(0, len(items) - 1, 2):
            self._key(items[i])
            target[items[i]] = items[i + 1]

    def load_dict(self) -> None:
        items = self.pop_mark()
        for key in items[::2]:
            self._key(key)
        self.append({items[i]: items[i + 1] for i in range(0, len(items) - 1, 2)})

    def load_additems(self) -> None:
        items = self.pop_mark()
        target = self.stack[-1]
        if type(target) is not set:
            raise _refuse(f"the file adds set members to a {type(target).__name__}")
        for item in items:
            self._key(item)
        target.update(items)

    def load_frozenset(self) -> None:
        items = self.pop_mark()
        for item in items:
            self._key(item)
        self.append(frozenset(items))

    def _append_target(self, target: Any) -> Any:
        if type(target) is not list and not isinstance(target, Placeholder):
            raise _refuse(f"the file appends to a {type(target).__name__}")
        return target

    def load_append(self) -> None:
        value = self.stack.pop()
        self._append_target(self.stack[-1]).append(value)

    def load_appends(self) -> None:
        items = self.pop_mark()
        self._append_target(self.stack[-1]).extend(items)

    def load_bytearray8(self) -> None:
        (length,) = struct.unpack("<Q", self.read(8))
        if length > self._remaining():
            raise pickle.UnpicklingError(f"BYTEARRAY8 declares {length} bytes, more than the file holds")
        data = bytearray(self.read(length))
        self.append(data)

    for _opcode, _method in ((pickle.REDUCE, load_reduce), (pickle.NEWOBJ, load_newobj),
                             (pickle.NEWOBJ_EX, load_newobj_ex), (pickle.BUILD, load_build),
                             (pickle.SETITEM, load_setitem), (pickle.SETITEMS, load_setitems),
                             (pickle.DICT, load_dict), (pickle.ADDITEMS, load_additems),
                             (pickle.FROZENSET, load_frozenset), (pickle.APPEND, load_append),
                             (pickle.APPENDS, load_appends), (pickle.BYTEARRAY8, load_bytearray8)):
        dispatch[_opcode[0]] = _method
    del _opcode, _method

    def find_class(self, module: str, name: str) -> Any:
        if self.proto < 3 and (module, name) in _compat_pickle.NAME_MAPPING:  # Python 2 spellings
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif self.proto < 3 and module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        qualified_name = f"{module}.{name}"
        allowed = BUILDERS.get(qualified_name)
        return allowed if allowed is not None else placeholder_for(qualified_name)
