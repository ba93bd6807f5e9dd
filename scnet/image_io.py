"""Reading an image file exactly as MMDetection 3.3.0's `LoadImageFromFile` does, for any file.

MMDetection decodes with `cv2.imdecode(bytes, cv2.IMREAD_COLOR)`: the result is always 8-bit, 3-channel
BGR, with the EXIF orientation of the file applied; grey images are replicated to three channels,
16-bit images keep their high byte, an alpha channel is dropped and palettes are expanded. Calling
OpenCV itself (rather than imitating it) keeps every corner of that behaviour the same.

Before decoding, the header's pixel count is checked, so a small file claiming a huge size (a
decompression bomb) is refused in one line instead of exhausting memory.
"""
from __future__ import annotations

import io
import warnings
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from scnet.messages import path_problem

# PIL's own decompression-bomb limit (2 x Image.MAX_IMAGE_PIXELS): ~13 400 x 13 400, far above any
# detection image, far below the ~0.5 GB the uint8 decode of such an image takes.
MAX_IMAGE_PIXELS = 178_956_970


class ImageError(ValueError):
    """An image file that cannot be used; the message names the file and what to do."""


def header_size(path: Path, data: bytes) -> tuple[int, int] | None:
    """(width, height) from the file header without decoding pixels; None when PIL cannot parse it.

    Raises ImageError when the header claims more than MAX_IMAGE_PIXELS.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as opened:
                width, height = opened.size
    except Image.DecompressionBombError as exc:
        raise ImageError(f"{path}: refused to decode: the header claims more than {MAX_IMAGE_PIXELS:,} pixels "
                         f"({exc}); this looks like a decompression bomb; shrink or remove the image") from exc
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError):
        return None  # a format PIL does not know: OpenCV decides (it has its own 2^30-pixel limit)
    if width * height > MAX_IMAGE_PIXELS:
        raise ImageError(f"{path}: refused to decode: the header claims {width}x{height} = {width * height:,} "
                         f"pixels, more than {MAX_IMAGE_PIXELS:,} (a decompression bomb?); shrink or remove the "
                         "image")
    return width, height


def read_bgr(path: str | Path) -> np.ndarray:
    """The image as uint8 `[H, W, 3]` BGR, decoded by `cv2.imdecode(..., IMREAD_COLOR)` like MMDetection."""
    path = Path(path)
    problem = path_problem(path)
    if problem is not None:
        raise ImageError(f"{path}: image file {problem} (check the path)")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ImageError(f"{path}: cannot read the file ({exc.strerror or exc}); check its permissions") from exc
    header_size(path, data)
    image = None
    if data:
        try:
            image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
        except cv2.error:
            image = None
    if image is None or image.ndim != 3 or image.shape[2] != 3 or image.size == 0:
        raise ImageError(f"{path}: is not a readable image (OpenCV cannot decode it); give a JPEG or PNG file")
    if image.shape[0] * image.shape[1] > MAX_IMAGE_PIXELS:
        raise ImageError(f"{path}: refused: the image is {image.shape[1]}x{image.shape[0]}, more than "
                         f"{MAX_IMAGE_PIXELS:,} pixels; shrink it")
    return image
