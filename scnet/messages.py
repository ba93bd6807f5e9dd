"""The text of one-line user messages: cut at a word, never mid-word, and with what came from a
file (a dataset's file names, a checkpoint's strings) made safe for a terminal."""
from __future__ import annotations

import re
from pathlib import Path

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def shorten(text: str, width: int = 300) -> str:
    """`text` on one line; if longer than `width`, cut at the last space before it, marked with '...'."""
    text = " ".join(str(text).split())
    if len(text) <= width:
        return text
    cut = text.rfind(" ", 0, width - 4)
    return text[: cut if cut > width // 2 else width - 4] + " ..."


def printable(text: str, width: int | None = 200) -> str:
    """A string from a file as a terminal should show it: control characters (newlines, escape
    sequences, NUL) escaped as \\xNN / \\uNNNN, and at most `width` characters."""
    text = str(text)
    if width is not None and len(text) > width:
        text = text[:width] + "..."
    return _CONTROL.sub(lambda match: match.group().encode("unicode_escape").decode("ascii"), text)


def describe(value: object, width: int = 60) -> str:
    """A short description of a value that came from a file or a command line, for messages: a
    number or a (quoted, escaped, cut) string as such, anything else by its type, never its repr."""
    if value is None or isinstance(value, (bool, float)):
        return repr(value)
    if isinstance(value, int):
        return repr(value) if abs(value) < 10 ** 30 else "a very large integer"
    if isinstance(value, str):
        return f"'{printable(value, width)}'"
    placeholder_of = getattr(type(value), "qualified_name", None)  # scnet.checkpoints.restricted_pickle
    if isinstance(placeholder_of, str):
        return f"an object of {printable(placeholder_of, width)}, which would need code to load (not loaded)"
    return f"a {type(value).__name__}"


def path_kind(path: Path) -> str:
    """What is at `path`, in words: 'a file', 'a folder', 'a symbolic link to X, which does not
    exist', 'a device, FIFO or socket', or 'nothing'."""
    if path.is_file():
        return "a file"
    if path.is_dir():
        return "a folder"
    if path.is_symlink():
        try:
            target = printable(str(path.readlink()))
        except OSError:
            target = "a target"
        return f"a symbolic link to {target}, which does not exist"
    if path.exists():
        return "a device, FIFO or socket"
    return "nothing"


def path_problem(path: Path) -> str | None:
    """Why `path` cannot be read as an input file, in words (a folder, a dangling symbolic link, a
    FIFO, absent), or None for a regular file."""
    kind = path_kind(path)
    if kind == "a file":
        return None
    if kind == "nothing":
        return "does not exist"
    return f"is {kind}, not a file" if kind in ("a folder", "a device, FIFO or socket") else f"is {kind}"
