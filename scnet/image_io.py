"""Reading an image for inference and resizing it the way the paper's test pipeline does."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError


class ImageError(ValueError):
    pass


def read_rgb(path: str | Path) -> torch.Tensor:
    """[3, H, W] float32 RGB 0..255."""
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"image {path} does not exist (check the --image path)")
    try:
        with Image.open(path) as im:
            array = np.array(im.convert("RGB"))
    except (UnidentifiedImageError, OSError) as exc:
        raise ImageError(f"{path} is not a readable image ({exc}); give a JPEG or PNG file") from exc
    return torch.from_numpy(array).permute(2, 0, 1).float()


def keep_ratio_scale(height: int, width: int, scale: tuple[int, int]) -> float:
    """MMDetection's rescale factor: fit the long side within max(scale) and the short within min(scale)."""
    long_edge, short_edge = max(scale), min(scale)
    return min(long_edge / max(height, width), short_edge / min(height, width))


def resize_for_test(image: torch.Tensor, scale: tuple[int, int] = (1333, 800)) -> tuple[torch.Tensor, dict]:
    """The resized image and the meta (ori_shape, scale_factor) that maps outputs back to the original."""
    h, w = image.shape[-2:]
    factor = keep_ratio_scale(h, w, scale)
    new_h, new_w = int(h * factor + 0.5), int(w * factor + 0.5)
    if (new_h, new_w) != (h, w):
        image = F.interpolate(image[None], size=(new_h, new_w), mode="bilinear", align_corners=False)[0]
    meta = {"ori_shape": (h, w), "img_shape": (new_h, new_w), "scale_factor": (new_w / w, new_h / h)}
    return image, meta
