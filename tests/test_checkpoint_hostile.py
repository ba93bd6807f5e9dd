"""Hostile checkpoint files (issue 15, items 1-4): whatever a file holds, reading it ends in one
WeightsError line, at a cost bounded by the file's size, without running or extracting anything.

Files that would blow up an unbounded loader are read in a subprocess limited to 1 GiB more address
space than it starts with and to a timeout, so a regression fails fast instead of eating the machine.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
import torch

from tests import hostile_files as h
from scnet.checkpoints.loading import WeightsError, read_checkpoint_file, read_weights
from scnet.checkpoints.torch_file import read_torch_file
from scnet.messages import shorten

REPO = Path(__file__).resolve().parents[1]

# Read one file with every byte of headroom above 1 GiB refused; print the outcome on one line.
_CHILD = """
import resource, sys
from scnet.checkpoints.loading import WeightsError, read_weights
size = int(open("/proc/self/status").read().split("VmSize:")[1].split()[0]) * 1024
resource.setrlimit(resource.RLIMIT_AS, (size + (1 << 30), size + (1 << 30)))
try:
    weights = read_weights(sys.argv[1])
except WeightsError as exc:
    print("error:", exc)
    sys.exit(2)
print("loaded", repr(weights.meta)[:200])
"""


def read_in_child(path: Path, timeout: float = 120) -> tuple[int, str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    try:
        done = subprocess.run([sys.executable, "-c", _CHILD, str(path)], capture_output=True, text=True,
                              timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        pytest.fail(f"reading {path.name} did not finish in {timeout} s")
    return done.returncode, (done.stdout + done.stderr).strip()


def refused(path: Path, match: str) -> str:
    with pytest.raises(WeightsError, match=match) as err:
        read_checkpoint_file(path)
    message = str(err.value)
    assert "\n" not in message and str(path) in message
    return message


# ---------------------------------------------------------------------- item 1: allow-listed globals

@pytest.mark.slow
def test_numpy_array_with_an_object_dtype_set_by_build_is_an_inert_placeholder(tmp_path):
    """The memory-corruption file: numpy rebuilt it and printing it crashed (exit 139)."""
    path = h.zip_file(tmp_path / "object_dtype.pth", h.numpy_object_array())
    code, out = read_in_child(path)
    assert code == 2, out
    assert out.startswith("error:") and "Traceback" not in out
    assert "holds an object of numpy.core.multiarray._reconstruct, which would need code to load" in out
    payload = read_torch_file(path)
    leaf = payload["state_dict"]["rpn_head.rpn_conv.weight"]
    assert repr(leaf).startswith("<not loaded: numpy.core.multiarray._reconstruct")


@pytest.mark.slow
def test_a_nested_list_of_a_few_hundred_bytes_is_refused_not_printed(tmp_path):
    """2**60 elements through the memo: its repr took minutes and gigabytes."""
    data = h.nested_list_bomb(60)
    assert len(data) < 1000
    path = h.zip_file(tmp_path / "nested.pth", data)
    code, out = read_in_child(path)
    assert code == 2 and "expand to more than" in out, out


@pytest.mark.parametrize("case, body, match", [
    ("cycle", b"]q\x00h\x00a", "contain themselves"),
    ("deep", b"]" * 150 + b"a" * 149, "nest more than"),
])
def test_cyclic_or_deep_objects_are_refused(case, body, match, tmp_path):
    path = h.zip_file(tmp_path / f"{case}.pth", h.program(h.dict_((h.text("meta"), body))))
    refused(path, match)


@pytest.mark.parametrize("name, body, match", [
    ("build_on_a_list", b"]" + h.dict_() + b"b", "sets the state of a list"),
    ("newobj_tensor", h.global_("torch", "Tensor") + h.tuple_(h.int_(2 ** 31 - 1)) + b"\x81",
     "creates an object"),
    ("call_a_dtype", h.call(h.global_("torch", "float32")), "calls a dtype"),
    ("hooks", h.call(h.global_("torch._utils", "_rebuild_tensor_v2"), h.storage_pid("0", 1), h.int_(0),
                     h.tuple_(h.int_(1)), h.tuple_(h.int_(1)), b"\x89",
                     h.dict_((h.text("k"), h.int_(1)))), "backward hooks"),
    ("setitem_on_a_tensor", h.call(h.global_("torch", "Size")) + h.text("k") + h.int_(1) + b"s",
     "sets items on a Size"),
])
def test_only_data_and_tensor_rebuilds_are_admitted(name, body, match, tmp_path):
    path = h.zip_file(tmp_path / f"{name}.pth", h.program(body), {"0": b"\0" * 4})
    refused(path, match)


# ---------------------------------------------------------------------------- item 2: amplification

@pytest.mark.slow
def test_bytearray_of_a_count_is_refused(tmp_path):
    """33 bytes that asked for bytearray(3e9)."""
    data = h.program(h.call(h.global_("__builtin__", "bytearray"), h.int_(3 * 10 ** 9)))
    path = h.zip_file(tmp_path / "bytearray.pth", data)
    code, out = read_in_child(path)
    assert code == 2 and "bytearray from something other than bytes" in out, out


@pytest.mark.slow
def test_only_the_latin1_codec_is_admitted(tmp_path):
    """_codecs.encode with punycode ran for minutes on 140 KB (quadratic in distinct characters: these
    24 KB take ~45 s)."""
    distinct = "".join(chr(0x4E00 + i) for i in range(8000))
    data = h.program(h.call(h.global_("_codecs", "encode"), h.text(distinct), h.text("punycode")))
    path = h.zip_file(tmp_path / "punycode.pth", data)
    code, out = read_in_child(path, timeout=30)
    assert code == 2 and "another codec than latin1" in out, out


def test_repeated_calls_on_one_shared_argument_run_out_of_budget(tmp_path):
    """set() of one memoized 50k-item list, 2000 times: 10**8 items of work from ~20 KB."""
    items = b"]q\x00(" + h.int_(1) * 50_000 + b"e"
    calls = b"".join(h.global_("builtins", "set") + b"h\x00\x85R0" for _ in range(2000))
    path = h.zip_file(tmp_path / "work.pth", h.program(items + calls + b"N"))
    refused(path, "far more work than its size")


def test_colliding_integer_keys_are_refused(tmp_path):
    """Integers congruent modulo 2**61 - 1 share a hash: a dict of them fills in quadratic time."""
    modulus = sys.hash_info.modulus
    pairs = [(h.int_(k * modulus), b"N") for k in range(1, 4)]
    path = h.zip_file(tmp_path / "collide.pth", h.program(h.dict_(*pairs)))
    refused(path, "integer of over 60 bits")


@pytest.mark.slow
def test_a_zip_entry_larger_than_the_file_is_refused_before_inflating(tmp_path):
    """A 2 MB zip that inflated to 2.8 GB: entries may not claim more than the file's size."""
    path = tmp_path / "deflated.pth"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("archive/data.pkl", h.state_dict_of(h.rebuild_tensor(h.storage_pid("0", 2 ** 24),
                                                                             (2 ** 24,), (1,))))
        with archive.open("archive/data/0", "w") as entry:
            for _ in range(16):
                entry.write(bytes(1 << 22))  # 64 MiB of zeros, ~64 KB compressed
    assert path.stat().st_size < 1 << 20
    code, out = read_in_child(path)
    assert code == 2 and "uncompressed, more than the file's" in out, out


@pytest.mark.parametrize("numel, record, match", [
    (10 ** 12, b"\0" * 16, "declares 4,000,000,000,000 bytes but its record holds 16"),
    (4, None, "has no record"),
])
def test_zip_storages_must_match_their_records(numel, record, match, tmp_path):
    data = h.state_dict_of(h.rebuild_tensor(h.storage_pid("0", numel), (numel,), (1,)))
    path = h.zip_file(tmp_path / "storage.pth", data, {"0": record} if record is not None else {})
    refused(path, match)


@pytest.mark.slow
def test_a_tensor_larger_than_its_storage_is_refused_without_allocating(tmp_path):
    data = h.state_dict_of(h.rebuild_tensor(h.storage_pid("0", 4), (10 ** 6, 10 ** 6), (10 ** 6, 1)))
    path = h.zip_file(tmp_path / "view.pth", data, {"0": b"\0" * 16})
    code, out = read_in_child(path)
    assert code == 2 and "out of bounds" in out, out


def test_a_legacy_file_declaring_more_storage_than_it_holds_is_refused(tmp_path):
    pid = h.tuple_(h.text("storage"), h.global_("torch", "FloatStorage"), h.text("0"), h.text("cpu"),
                   h.int_(10 ** 10), b"N") + b"Q"
    main = h.state_dict_of(h.call(h.global_("torch._utils", "_rebuild_tensor_v2"), pid, h.int_(0),
                                  h.tuple_(h.int_(10 ** 10)), h.tuple_(h.int_(1)), b"\x89",
                                  h.call(h.global_("collections", "OrderedDict"))))
    path = h.legacy_file(tmp_path / "legacy.pth", main, ["0"], b"\0" * 64)
    code, out = read_in_child(path)
    assert code == 2 and "storages declare 40,000,000,000 bytes" in out, out


def test_legacy_files_still_load(tmp_path):
    """torch < 1.6's format (some published backbone files) is read, bounded, not refused."""
    state = {"conv.weight": torch.arange(6.0).reshape(2, 3), "bn.running_mean": torch.ones(3)}
    torch.save(state, tmp_path / "old.pth", _use_new_zipfile_serialization=False)
    loaded = read_torch_file(tmp_path / "old.pth")
    assert all(torch.equal(loaded[k], v) for k, v in state.items())


def test_byte_array8_longer_than_the_input_is_refused(tmp_path):
    data = b"\x80\x05\x96" + (2 ** 40).to_bytes(8, "little") + b"."
    path = h.zip_file(tmp_path / "ba8.pth", data)
    refused(path, "BYTEARRAY8 declares")


# ------------------------------------------------------------------------------ item 3: tar format

@pytest.mark.slow
def test_the_legacy_tar_format_is_refused_without_extracting(tmp_path, monkeypatch):
    """torch's tar loader hangs on a FIFO member, follows symlinks and mknods devices."""
    path = tmp_path / "old.tar.pth"
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as archive:
        for name, kind in (("storages", tarfile.FIFOTYPE), ("tensors", tarfile.SYMTYPE),
                           ("pickle", tarfile.CHRTYPE)):
            info = tarfile.TarInfo(name)
            info.type = kind
            info.linkname = "/etc/passwd" if kind == tarfile.SYMTYPE else ""
            archive.addfile(info)
    monkeypatch.chdir(tmp_path)
    before = set(os.listdir(tmp_path))
    code, out = read_in_child(path, timeout=60)
    assert code == 2 and "legacy tar format" in out and "torch.save" in out, out
    assert set(os.listdir(tmp_path)) == before


# -------------------------------------------------------------------- item 4: other loader mistakes

def test_non_string_state_dict_keys_are_one_line(tmp_path):
    torch.save({0: torch.zeros(1), 1: torch.ones(1)}, tmp_path / "ints.pth")
    with pytest.raises(WeightsError, match=r"key that is 0, not a tensor name"):
        read_weights(tmp_path / "ints.pth", format="native")
    torch.save({"state_dict": {("a", 1): torch.zeros(1)}}, tmp_path / "tuple.pth")
    with pytest.raises(WeightsError, match=r"key that is a tuple"):
        read_weights(tmp_path / "tuple.pth", format="mmdet")


def test_non_finite_weights_are_named_at_load(tmp_path):
    torch.save({"state_dict": {"rpn_head.rpn_conv.weight": torch.tensor([1.0, float("nan")])}}, tmp_path / "nan.pth")
    with pytest.raises(WeightsError, match="'rpn_head.rpn_conv.weight' .* NaN or infinite"):
        read_weights(tmp_path / "nan.pth")


def test_input_paths_say_what_they_are(tmp_path):
    (tmp_path / "folder.pth").mkdir()
    (tmp_path / "dangling.pth").symlink_to(tmp_path / "gone.pth")
    refused(tmp_path / "folder.pth", "is a folder, not a file")
    refused(tmp_path / "dangling.pth", "symbolic link to .*gone.pth, which does not exist")
    refused(tmp_path / "absent.pth", "does not exist")


def test_long_messages_are_cut_at_a_word():
    text = "word " * 100
    cut = shorten(text, 50)
    assert len(cut) <= 50 and cut.endswith(" ...") and cut[:-4].split() == ["word"] * len(cut[:-4].split())
    assert shorten("short message", 50) == "short message"
