"""Reading a `torch.save` file without trusting it: every checkpoint, weight file and training
checkpoint of this project is read here (see docs/interfaces.md, "Checkpoint files").

Formats:
- zip (torch >= 1.6, what torch.save writes today; MMDetection's files): the central directory is
  read first, and the uncompressed sizes of all entries together may not exceed the file's size
  (torch writes them stored, uncompressed), so a small deflated entry cannot expand into gigabytes.
  `data.pkl` goes through `restricted_pickle`; each storage it names must be an entry of exactly the
  declared size, read into memory only then.
- the legacy pickle format (torch < 1.6): the storages' declared sizes together may not exceed the
  bytes left in the file before any is allocated; their data must follow, sized as declared.
- the legacy tar format (torch < 0.4) is refused: torch's loader extracts its members to disk
  (a FIFO member hangs, a symlink member reads a local file, a device member is created).

Afterwards `untrusted.check_graph` bounds what the file built, so callers may print, compare and
walk it. Every problem is a `TorchFileError` whose message says what is wrong, without the path
(callers add it) and without any object of the file.
"""
from __future__ import annotations

import io
import os
import pickle
import struct
import sys
import tarfile
import zipfile
from pathlib import Path
from typing import Any, BinaryIO

import torch

from scnet.checkpoints import restricted_pickle
from scnet.checkpoints.untrusted import GraphError, check_graph
from scnet.messages import shorten

RESAVE_HINT = ("load it once with a torch version that reads it, in a trusted environment, and save it again "
               "with torch.save (zip format)")
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001
# Expanded elements allowed per byte of pickle (see untrusted.check_graph), plus an allowance.
GRAPH_UNITS_PER_BYTE = 16
GRAPH_ALLOWANCE = 100_000


class TorchFileError(ValueError):
    """A file that is not a readable, well-formed torch.save file; the message says why."""


class _BoundedInput:
    """A file's bytes from its current position to `end`; reads never ask for more (a declared
    length of 3e9 reads what is there, without allocating 3e9 bytes first)."""

    def __init__(self, handle: BinaryIO, end: int) -> None:
        self.handle, self.end = handle, end

    def remaining(self) -> int:
        return max(0, self.end - self.handle.tell())

    def read(self, size: int = -1) -> bytes:
        remaining = self.remaining()
        return self.handle.read(remaining if size is None or size < 0 else min(size, remaining))

    def readline(self, size: int = -1) -> bytes:
        remaining = self.remaining()
        return self.handle.readline(remaining if size is None or size < 0 else min(size, remaining))


def _unpickle(stream: _BoundedInput, persistent_load: Any = None) -> Any:
    unpickler = restricted_pickle.Unpickler(stream, remaining=stream.remaining, persistent_load=persistent_load)
    return unpickler.load()


def _storage_id(pid: Any, fields: int) -> tuple:
    if not isinstance(pid, tuple) or len(pid) != fields or pid[0] not in ("storage", b"storage"):
        raise TorchFileError("the pickle refers to external data that is not a tensor storage")
    storage_type, key = pid[1], pid[2]
    if not isinstance(storage_type, restricted_pickle.StorageType):
        raise TorchFileError("a storage record names an unknown storage type")
    if not isinstance(key, (str, int)) or isinstance(key, bool):
        raise TorchFileError("a storage record has a key that is neither a string nor an integer")
    numel = pid[4]
    if type(numel) is not int or numel < 0:
        raise TorchFileError("a storage record declares a negative or non-integer size")
    return pid


def _typed(untyped: torch.UntypedStorage, dtype: torch.dtype) -> torch.storage.TypedStorage:
    return torch.storage.TypedStorage(wrap_storage=untyped, dtype=dtype, _internal=True)


def _element_size(dtype: torch.dtype) -> int:
    return torch._utils._element_size(dtype)


# --------------------------------------------------------------------------------------------- zip

def _read_zip(handle: BinaryIO, file_size: int) -> Any:
    try:
        archive = zipfile.ZipFile(handle)
        entries = archive.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, OSError, EOFError) as exc:
        raise TorchFileError(f"a damaged zip archive ({exc})") from None
    expanded = sum(info.file_size for info in entries)
    if expanded > file_size:
        raise TorchFileError(f"its zip entries claim {expanded:,} bytes uncompressed, more than the file's "
                             f"{file_size:,}; torch.save never compresses, so the file is crafted or damaged")
    by_name = {info.filename: info for info in entries}
    pickles = [name for name in by_name if name.endswith("/data.pkl") and name.count("/") == 1]
    if len(pickles) != 1:
        raise TorchFileError("a zip archive without exactly one <name>/data.pkl: not a torch.save file")
    prefix = pickles[0][: -len("data.pkl")]
    order = archive.read(by_name[f"{prefix}byteorder"]) if f"{prefix}byteorder" in by_name else b"little"
    if order not in (b"little", b"big"):
        raise TorchFileError("its byteorder record is neither 'little' nor 'big'")
    swap = order.decode() != sys.byteorder
    storages: dict[str, torch.storage.TypedStorage] = {}

    def load_storage(pid: Any) -> torch.storage.TypedStorage:
        _, storage_type, key, _location, numel = _storage_id(pid, 5)
        key = str(key)
        if key in storages:
            return storages[key]
        dtype = storage_type.dtype
        info = by_name.get(f"{prefix}data/{key}")
        nbytes = numel * _element_size(dtype)
        if info is None:
            raise TorchFileError(f"storage {key[:40]!r} has no record data/{key[:40]} in the archive")
        if info.file_size != nbytes:
            raise TorchFileError(f"storage {key[:40]!r} declares {nbytes:,} bytes but its record holds "
                                 f"{info.file_size:,}")
        data = torch.empty(nbytes, dtype=torch.uint8)
        with archive.open(info) as source:
            _read_exactly(source, data, f"record data/{key[:40]}")
        untyped = data.untyped_storage()
        if swap:
            untyped.byteswap(dtype)
        storages[key] = _typed(untyped, dtype)
        return storages[key]

    with archive.open(by_name[pickles[0]]) as source:
        data_pkl = source.read()
    stream = _BoundedInput(io.BytesIO(data_pkl), len(data_pkl))
    payload = _unpickle(stream, load_storage)
    return payload, len(data_pkl)


def _read_exactly(source: Any, data: torch.Tensor, what: str, chunk: int = 1 << 24) -> None:
    view = memoryview(data.numpy()).cast("B")
    filled = 0
    while filled < len(view):
        part = source.read(min(len(view) - filled, chunk))
        if not part:
            raise TorchFileError(f"{what} ends after {filled:,} of its {len(view):,} bytes (a truncated file)")
        view[filled:filled + len(part)] = part
        filled += len(part)


# ------------------------------------------------------------------------------------------ legacy

def _read_legacy(handle: BinaryIO, file_size: int) -> Any:
    stream = _BoundedInput(handle, file_size)
    if _unpickle(stream) != _LEGACY_MAGIC:
        raise TorchFileError("neither a zip archive nor torch's legacy format (no magic number)")
    if _unpickle(stream) != _LEGACY_PROTOCOL:
        raise TorchFileError("torch's legacy format of an unknown protocol version")
    sys_info = _unpickle(stream)
    if not isinstance(sys_info, dict) or sys_info.get("little_endian") is not True:
        raise TorchFileError(f"saved on a big-endian machine (or without system info); {RESAVE_HINT}")
    roots: dict[Any, tuple[torch.storage.TypedStorage, int, torch.Tensor]] = {}
    views: dict[Any, torch.storage.TypedStorage] = {}
    declared = [0]
    start = handle.tell()

    def load_storage(pid: Any) -> torch.storage.TypedStorage:
        _, storage_type, key, _location, numel, view = _storage_id(pid, 6)
        dtype = storage_type.dtype
        if key not in roots:
            nbytes = numel * _element_size(dtype)
            declared[0] += nbytes
            if declared[0] > file_size - start:
                raise TorchFileError(f"its storages declare {declared[0]:,} bytes, more than the "
                                     f"{file_size - start:,} left in the file")
            data = torch.empty(nbytes, dtype=torch.uint8)
            roots[key] = (_typed(data.untyped_storage(), dtype), numel, data)
        root = roots[key][0]
        if view is None:
            return root
        if not (isinstance(view, tuple) and len(view) == 3 and all(type(v) is int and v >= 0 for v in view[1:])):
            raise TorchFileError("a storage view is not (key, offset, size)")
        view_key, offset, size = view
        size_of = _element_size(dtype)
        if (offset + size) * size_of > root._untyped_storage.nbytes():
            raise TorchFileError("a storage view reaches past its storage")
        if view_key not in views:
            views[view_key] = _typed(root._untyped_storage[offset * size_of:(offset + size) * size_of], dtype)
        return views[view_key]

    payload = _unpickle(stream, load_storage)
    pickle_bytes = handle.tell()
    keys = _unpickle(stream)
    if not isinstance(keys, list) or len(keys) != len(roots) or set(map(_hashable_key, keys)) != set(roots):
        raise TorchFileError("its list of storage keys does not match the storages its pickle names")
    for key in keys:
        _storage, numel, data = roots[key]
        header = stream.read(8)
        if len(header) != 8 or struct.unpack("<q", header)[0] != numel:
            raise TorchFileError("a storage's size header differs from its declared size (a damaged file)")
        _read_exactly(stream.handle, data, "a storage")
    return payload, pickle_bytes


def _hashable_key(key: Any) -> Any:
    if not isinstance(key, (str, int)) or isinstance(key, bool):
        raise TorchFileError("its list of storage keys holds something that is not a key")
    return key


# --------------------------------------------------------------------------------------------- api

def read_torch_file(path: str | os.PathLike) -> Any:
    """The object a torch.save file holds, built without running code from it and at a cost bounded
    by its size; globals this loader does not rebuild come back as `restricted_pickle.Placeholder`s."""
    path = Path(path)
    try:
        handle = open(path, "rb")
    except OSError as exc:
        raise TorchFileError(f"cannot be opened ({exc.strerror or exc})") from None
    with handle:
        try:
            file_size = os.fstat(handle.fileno()).st_size
            head = handle.read(4)
            handle.seek(0)
            if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
                payload, pickle_bytes = _read_zip(handle, file_size)
            elif head[:1] == b"\x80":
                payload, pickle_bytes = _read_legacy(handle, file_size)
            elif _is_tar(handle):
                raise TorchFileError(f"torch's legacy tar format, which is not read here (its loader extracts "
                                     f"members to disk); {RESAVE_HINT}")
            else:
                raise TorchFileError("neither a zip archive (torch.save) nor torch's legacy format")
        except TorchFileError:
            raise
        except (pickle.UnpicklingError, GraphError) as exc:
            raise TorchFileError(str(exc)) from None
        except MemoryError:
            raise TorchFileError("reading it ran out of memory") from None
        except Exception as exc:  # noqa: BLE001 - whatever a malformed file triggers gets one line
            raise TorchFileError(f"a malformed file ({type(exc).__name__}: {shorten(str(exc), 160)})") from None
    try:
        check_graph(payload, GRAPH_ALLOWANCE + GRAPH_UNITS_PER_BYTE * pickle_bytes)
    except GraphError as exc:
        raise TorchFileError(str(exc)) from None
    return payload


def _is_tar(handle: BinaryIO) -> bool:
    """Reads the first header only; nothing is extracted."""
    try:
        tarfile.open(fileobj=handle, mode="r:").close()
        return True
    except (tarfile.TarError, OSError, ValueError, EOFError):
        return False
    finally:
        handle.seek(0)


