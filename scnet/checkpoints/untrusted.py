"""Looking at objects an untrusted file built, at a cost bounded by the file's size.

A pickle can share one object many times (its memo), so a few hundred bytes can describe a nested
list whose repr, JSON, `==` or deep copy visits 2^60 elements. `check_graph` walks what the file
built once per object and refuses graphs whose expansion (what those operations would visit) is
out of proportion to the file, nests deeper than any checkpoint, or refers to itself; after it
passes, code may look at the objects freely. Messages still never show such an object whole
(`scnet.messages.describe`).
"""
from __future__ import annotations

from typing import Any, Iterator

from scnet.checkpoints.restricted_pickle import Placeholder

MAX_DEPTH = 100
# A string or bytes object counts one unit per this many characters (what printing it costs).
CHARS_PER_UNIT = 64


class GraphError(ValueError):
    """The objects a file built are too large, too deep or cyclic to be looked at safely."""


def _children(obj: Any) -> Iterator[Any] | None:
    kind = type(obj)
    if kind in (list, tuple, set, frozenset):
        return iter(obj)
    if isinstance(obj, dict):
        return (part for item in obj.items() for part in item)
    if isinstance(obj, Placeholder):
        return iter(vars(obj).values())
    return None


def _leaf_units(obj: Any) -> int:
    if isinstance(obj, (str, bytes, bytearray)):
        return 1 + len(obj) // CHARS_PER_UNIT
    return 1


def check_graph(root: Any, limit: int, *, max_depth: int = MAX_DEPTH) -> int:
    """The expanded size of `root` in units (containers and leaves, strings by length), or
    GraphError when it exceeds `limit`, nests deeper than `max_depth` or contains a cycle.
    Work is linear in the number of distinct objects (each is expanded once)."""
    sizes: dict[int, int] = {}
    on_path: set[int] = set()
    frames: list[list[Any]] = []  # [object, children iterator, units so far]

    def enter(obj: Any) -> int | None:
        """Units of a leaf or an already expanded object, else push a frame and return None."""
        known = sizes.get(id(obj))
        if known is not None:
            return known
        children = _children(obj)
        if children is None:
            return _leaf_units(obj)
        if id(obj) in on_path:
            raise GraphError("the file's objects contain themselves (a cycle)")
        if len(frames) >= max_depth:
            raise GraphError(f"the file's objects nest more than {max_depth} levels deep")
        on_path.add(id(obj))
        frames.append([obj, children, 1])
        return None

    total = enter(root)
    while frames:
        frame = frames[-1]
        child = next(frame[1], _DONE)
        if child is _DONE:
            frames.pop()
            obj, _, units = frame
            on_path.discard(id(obj))
            sizes[id(obj)] = units
            if frames:
                frames[-1][2] += units
            else:
                total = units
        else:
            units = enter(child)
            if units is not None:
                frame[2] += units
        if frames and frames[-1][2] > limit or (total or 0) > limit:
            raise GraphError(f"the file's objects expand to more than {limit:,} elements (shared parts "
                             "counted each time they are used), far more than its size holds")
    return total or 0


_DONE = object()
