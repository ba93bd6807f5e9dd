"""The one exception type the data layer raises for bad input on disk.

A single type lets callers (the CLI, the experiment harness) catch "the data is wrong" separately from
programming errors; every message names the file, the field and what to do about it.
"""
from __future__ import annotations


class DatasetError(ValueError):
    """A dataset on disk that cannot be used as it is: missing files, malformed JSON, bad values."""
