"""An unpickler that never fails on classes it cannot import.

MMDetection checkpoints pickle mmengine objects (ConfigDict, HistoryBuffer, ...) into `meta` and
`message_hub`; we want their tensors without installing mmengine, so unknown classes become inert
placeholders that keep whatever state was pickled for them.
"""
from __future__ import annotations

import pickle
from typing import Any


class Placeholder:
    """Stands in for an object whose class is not importable here."""

    _qualified_name = "?"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args, self.kwargs = args, kwargs

    def __setstate__(self, state: Any) -> None:
        self.state = state

    # Subclasses of dict and list are rebuilt item by item (SETITEMS / APPENDS opcodes).
    def __setitem__(self, key: Any, value: Any) -> None:
        self.__dict__.setdefault("items", {})[key] = value

    def append(self, value: Any) -> None:
        self.__dict__.setdefault("elements", []).append(value)

    def extend(self, values: Any) -> None:
        for value in values:
            self.append(value)

    def __call__(self, *args: Any, **kwargs: Any) -> "Placeholder":
        return type(self)(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<unimportable {self._qualified_name}>"


def _placeholder_for(module: str, name: str) -> type:
    return type(name, (Placeholder,), {"_qualified_name": f"{module}.{name}"})


class Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return super().find_class(module, name)
        except (ImportError, AttributeError):
            return _placeholder_for(module, name)


def load(file: Any, **kwargs: Any) -> Any:
    return Unpickler(file, **kwargs).load()


# torch.load(pickle_module=...) looks these up on the module it is given.
dump = pickle.dump
dumps = pickle.dumps
loads = pickle.loads
__name__ = __name__
