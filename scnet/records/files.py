"""Files that a reader never sees half-written, and output paths checked before any work.

Every record, checkpoint, table and figure is written through `atomic_write` (a temp file in the same
folder, fsync, `os.replace`), so a run killed mid-write leaves the previous file or none. Readers
validate what they read and raise `RecordError` naming the file, because the analysis walks folders
that may hold foreign or half-written files and must say which one it skipped.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable

import numpy as np


class RecordError(ValueError):
    """A record file that is missing, foreign, half-written or of an unknown format version."""


class OutputError(OSError):
    """An output path that cannot be written (read-only, a file where a folder belongs, disk full);
    the message names the path and what to do. An OSError, so `except OSError` still catches it."""

    def __init__(self, message: str, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno


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


def is_inside(path: str | os.PathLike | None, folder: str | os.PathLike) -> bool:
    """Whether `path` (e.g. an OSError's filename) lies in `folder`."""
    if not isinstance(path, (str, os.PathLike)):
        return False
    try:
        return Path(os.path.abspath(path)).is_relative_to(os.path.abspath(folder))
    except (OSError, ValueError):
        return False


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


def as_read_back(obj: Any, path: str | os.PathLike) -> Any:
    """`obj` as a reader of its JSON file at `path` will see it (tuples as lists, NumPy numbers as
    numbers), so it can be validated in that form before it is written; NaN/inf are refused."""
    try:
        return json.loads(json.dumps(obj, allow_nan=False, default=_json_default))
    except (TypeError, ValueError) as exc:
        raise RecordError(f"{path}: cannot be written as JSON: {exc}") from exc


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


def file_in(run_dir_or_file: str | os.PathLike, name: str) -> Path:
    """`run_dir_or_file` itself, or the file `name` in it when it is a folder."""
    path = Path(run_dir_or_file)
    return path / name if path.is_dir() else path


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
