"""Which runs produced which table row: by comparing resolved networks, not preset names.

The rule: a run belongs to a row when the scales agree and every `ModelConfig` field except the
dataset facts (`num_classes`, `num_semantic_classes`) equals the row's
`experiments.tables.model_config_for(row, scale)`. That is the same as comparing with
`model_config_for(row, scale, num_classes=<run's>, num_semantic_classes=<run's>)`, because the
dataset facts change nothing else. Fields a run's config lacks (written by older code) take
`ModelConfig`'s default; fields `ModelConfig` does not know are ignored. Numbers compare as floats
(3 == 3.0) and lists as tuples, so a JSON round trip does not change a run's identity.
"""
from __future__ import annotations

import dataclasses
import json
from functools import lru_cache
from typing import Any, Iterable, Mapping

from experiments.tables import RowSpec, model_config_for
from scnet.config import ModelConfig

DATASET_FIELDS = ("num_classes", "num_semantic_classes")
_DEFAULTS = ModelConfig().to_dict()
_ARCH_FIELDS = tuple(f.name for f in dataclasses.fields(ModelConfig) if f.name not in DATASET_FIELDS)


def _canonical(value: Any) -> Any:
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return round(float(value), 9)
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    return str(value)


def model_key(model: Mapping[str, Any]) -> str:
    """A string that is equal for two model configs exactly when they describe the same network."""
    values = {name: _canonical(model.get(name, _DEFAULTS[name])) for name in _ARCH_FIELDS}
    return json.dumps(values, sort_keys=True)


@lru_cache(maxsize=None)
def row_key(row: RowSpec, scale: str) -> str:
    return model_key(model_config_for(row, scale).to_dict())


def rows_for_model(model: Mapping[str, Any], scale: str, rows: Iterable[RowSpec]) -> list[RowSpec]:
    """The rows, among `rows`, whose network `model` (a resolved ModelConfig as a dict) is at `scale`."""
    key = model_key(model)
    return [row for row in rows if row.run and row_key(row, scale) == key]
