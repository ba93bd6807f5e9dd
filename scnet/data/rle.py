"""Checking compressed COCO RLE strings before pycocotools decodes them.

pycocotools' decoder trusts its input: a string with characters outside its alphabet, a number cut
off in the middle, or runs that do not add up to height * width decode to masks made of whatever
memory follows (b"000" for a 5x5 mask "decodes" to over a thousand pixels), with no error. So every
compressed RLE is parsed here once, when the annotation file is checked, and refused unless it
describes exactly `height * width` pixels.
"""
from __future__ import annotations

# pycocotools writes each run length as 5-bit groups, least significant first, in characters
# chr(48 + group) with bit 0x20 meaning "more groups follow" and bit 0x10 of the last group the sign;
# runs after the third are stored as differences to the run two places before.
_FIRST_CHAR, _LAST_CHAR = 48, 48 + 63


def compressed_rle_problem(counts: str, height: int, width: int) -> str | None:
    """None if `counts` is a valid compressed RLE of a `height` x `width` mask, else what is wrong."""
    runs: list[int] = []
    value, shift, position = 0, 0, 0
    for position, char in enumerate(counts):
        if not _FIRST_CHAR <= ord(char) <= _LAST_CHAR:
            return f"character {char!r} at position {position} is not part of the RLE alphabet ('0'..'o')"
        code = ord(char) - _FIRST_CHAR
        value |= (code & 0x1F) << shift
        shift += 5
        if code & 0x20:
            continue
        if code & 0x10:
            value -= 1 << shift  # sign-extend the last group
        if len(runs) > 2:
            value += runs[-2]
        if value < 0:
            return f"run {len(runs)} has negative length {value}"
        runs.append(value)
        value, shift = 0, 0
    if shift:
        return f"it ends in the middle of a number (position {position})"
    total = sum(runs)
    if total != height * width:
        return f"its runs cover {total} pixels, not height*width = {height}*{width} = {height * width}"
    return None
