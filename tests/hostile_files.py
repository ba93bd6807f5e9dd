"""Small hand-written hostile torch files for the loader tests (issue 15): pickles spelled opcode by
opcode, wrapped in the zip or legacy layout torch.save uses. Nothing here allocates much: the files
only *claim* large sizes."""
from __future__ import annotations

import pickle
import struct
import zipfile
from pathlib import Path


def global_(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def text(value: str) -> bytes:
    data = value.encode("utf-8")
    return b"X" + struct.pack("<I", len(data)) + data


def int_(value: int) -> bytes:
    if -2 ** 31 <= value < 2 ** 31:
        return b"J" + struct.pack("<i", value)
    data = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(data)]) + data  # LONG1


def tuple_(*items: bytes) -> bytes:
    return b"(" + b"".join(items) + b"t"


def call(function: bytes, *args: bytes) -> bytes:
    return function + tuple_(*args) + b"R"


def dict_(*pairs: tuple[bytes, bytes]) -> bytes:
    return b"}(" + b"".join(k + v for k, v in pairs) + b"u"


def program(body: bytes) -> bytes:
    """A protocol-2 pickle whose top-level object is `body`."""
    return b"\x80\x02" + body + b"."


def storage_pid(key: str, numel: int, storage: str = "FloatStorage") -> bytes:
    """A zip-format persistent id for storage `key` (BINPERSID)."""
    return tuple_(text("storage"), global_("torch", storage), text(key), text("cpu"), int_(numel)) + b"Q"


def rebuild_tensor(pid: bytes, size: tuple[int, ...], stride: tuple[int, ...]) -> bytes:
    return call(global_("torch._utils", "_rebuild_tensor_v2"), pid, int_(0), tuple_(*map(int_, size)),
                tuple_(*map(int_, stride)), b"\x89", call(global_("collections", "OrderedDict")))


def zip_file(path: Path, data_pkl: bytes, records: dict[str, bytes] | None = None,
             compress: int = zipfile.ZIP_STORED) -> Path:
    """A torch.save zip archive holding `data_pkl` and storage records data/<key>."""
    with zipfile.ZipFile(path, "w", compression=compress) as archive:
        archive.writestr("archive/data.pkl", data_pkl)
        archive.writestr("archive/byteorder", "little")
        archive.writestr("archive/version", "3\n")
        for key, data in (records or {}).items():
            archive.writestr(f"archive/data/{key}", data)
    return path


def legacy_file(path: Path, main_pickle: bytes, keys: list[str], data: bytes = b"") -> Path:
    """torch's legacy (pre-1.6) layout: magic, protocol, sys_info, the object, keys, storage data."""
    head = (pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2) + pickle.dumps(1001, protocol=2)
            + pickle.dumps({"protocol_version": 1001, "little_endian": True,
                            "type_sizes": {"short": 2, "int": 4, "long": 4}}, protocol=2))
    path.write_bytes(head + main_pickle + pickle.dumps(keys, protocol=2) + data)
    return path


def state_dict_of(value: bytes) -> bytes:
    """An MMDetection-looking checkpoint {"state_dict": {"rpn_head.rpn_conv.weight": value}}."""
    return program(dict_((text("state_dict"), dict_((text("rpn_head.rpn_conv.weight"), value)))))


def nested_list_bomb(levels: int = 60) -> bytes:
    """[[L, L]] nested `levels` deep through the memo: a few hundred bytes, 2**levels elements."""
    body = b"]q\x00"  # L0 = [] memo 0
    for level in range(1, levels + 1):
        body += b"](h" + bytes([level - 1]) + b"h" + bytes([level - 1]) + b"eq" + bytes([level])
    return program(body + dict_((text("meta"), b"h" + bytes([levels])), (text("state_dict"), b"}")))


def numpy_object_array() -> bytes:
    """numpy's array rebuild over 8 bytes of the file with a uint64 dtype, whose state BUILD then
    sets again with the object flags: unpickled by numpy, printing the array dereferences those bytes
    as a PyObject pointer (exit 139)."""
    dtype = call(global_("numpy", "dtype"), text("u8"), b"\x89", b"\x88") + b"q\x01"  # memo 1
    dtype_state = tuple_(int_(3), text("<"), b"N", b"N", b"N", int_(-1), int_(-1), int_(0))
    array = call(global_("numpy.core.multiarray", "_reconstruct"), global_("numpy", "ndarray"),
                 tuple_(int_(0)), call(global_("_codecs", "encode"), text("b"), text("latin1")))
    array_state = tuple_(int_(1), tuple_(int_(1)), dtype + dtype_state + b"b", b"\x89",
                         call(global_("_codecs", "encode"), text("\x41" * 8), text("latin1")))
    object_state = tuple_(int_(3), text("|"), b"N", b"N", b"N", int_(-1), int_(-1), int_(63))
    # the array (built) as the state dict's tensor, then the shared dtype re-stated as an object dtype
    return program(dict_((text("state_dict"), dict_((text("rpn_head.rpn_conv.weight"), array + array_state + b"b"))),
                         (text("meta"), b"h\x01" + object_state + b"b")))
