"""Writing a matplotlib figure as files that a reader never sees half-written."""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from scnet.records.files import write_bytes_atomic  # noqa: E402


def save_figure(fig: plt.Figure, paths: Sequence[str | os.PathLike], *, dpi: int = 150) -> list[Path]:
    """Each path in the format its suffix names (.png, .pdf), written atomically; the figure is closed."""
    written = []
    try:
        for path in map(Path, paths):
            buffer = io.BytesIO()
            fig.savefig(buffer, format=path.suffix[1:], dpi=dpi, bbox_inches="tight")
            written.append(write_bytes_atomic(path, buffer.getvalue()))
    finally:
        plt.close(fig)
    return written
