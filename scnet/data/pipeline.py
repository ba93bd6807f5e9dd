"""MMDetection 3.3.0's data pipeline, the one path every image takes (training, evaluation, `predict`).

The steps and their MMDetection counterparts:

* decode: `scnet.image_io.read_bgr` (`LoadImageFromFile`: `cv2.imdecode`, `IMREAD_COLOR`, uint8 BGR);
* instance masks are rasterised at the original size (`LoadAnnotations`, `poly2mask=True`);
* `Resize(scale=(1333, 800), keep_ratio=True)`: new size `int(w * s + 0.5)`, `int(h * s + 0.5)` with
  `s = min(long_max / long_side, short_max / short_side)` (mmcv `rescale_size`); the uint8 image with
  `cv2.resize(INTER_LINEAR)`, each mask and the stuff map with `cv2.resize(INTER_NEAREST)`; boxes
  multiplied by `scale_factor = (new_w / w, new_h / h)` in float32, then clipped to the new image;
* `RandomFlip`: image, masks and map mirrored, `x1' = W - x2`, `x2' = W - x1`;
* `PackDetInputs` + the model: here the uint8 BGR image becomes uint8 RGB `[3, H, W]` (BGR->RGB is
  the data preprocessor's first step); the model converts it to float, normalises and pads to a
  multiple of 32 itself, on its own device (`pad_shape` below says to what), as MMDetection's
  `DetDataPreprocessor` does. The semantic map stays uint8 and is padded with 255 (`seg_pad_value`).
  Bytes, not floats, cross the process and device boundaries: a quarter of a float32 image, an eighth
  of an int64 map.

A transform works on the numpy stage of a sample and is called `transform(image, target, meta,
generator)`: `image` uint8 `[H, W, 3]` BGR; `target` numpy arrays `boxes` float32 `[N, 4]` xyxy,
`labels` int64 `[N]`, `masks` uint8 `[N, H, W]`, `ignored_boxes` float32 `[M, 4]`, `ignored_labels`
int64 `[M]` and optionally `semantic_seg` uint8 `[H, W]`; `meta` (`ori_shape`, `img_shape`,
`scale_factor`, `flip`). Every random choice draws from `generator` (see `scnet.data.sample_seeds`).
`pack` turns the result into the model's tensors.
"""
from __future__ import annotations

import hashlib
from typing import Any, Protocol, Sequence

import cv2
import numpy as np
import torch
from torch import Tensor

# As MMDetection's runner does (env_cfg opencv_num_threads=0): data-loader workers each resizing with
# all cores' worth of OpenCV threads would oversubscribe the machine. Results do not depend on it.
cv2.setNumThreads(0)

DEFAULT_SCALE = (1333, 800)
SIZE_DIVISOR = 32
SEMANTIC_PAD_VALUE = 255

Sample = tuple[np.ndarray, dict[str, np.ndarray], dict[str, Any]]
BOX_KEYS = ("boxes", "ignored_boxes")
PLANE_KEYS = ("masks",)


class Transform(Protocol):
    def __call__(self, image: np.ndarray, target: dict[str, np.ndarray], meta: dict[str, Any],
                 generator: torch.Generator | None = None) -> Sample: ...


# ---------------------------------------------------------------------------------------------- geometry
def rescale_size(width: int, height: int, scale: tuple[int, int]) -> tuple[int, int, float]:
    """MMDetection's keep-ratio rule: fit the long side into max(scale) and the short side into min(scale).

    Returns (new_width, new_height, factor), each side rounded half up as mmcv's `rescale_size` does
    (never below 1 pixel, where MMDetection would fail).
    """
    long_max, short_max = max(scale), min(scale)
    if short_max < 1:
        raise ValueError(f"resize scale {scale} must have positive sides")
    factor = min(long_max / max(width, height), short_max / min(width, height))
    return max(1, int(width * factor + 0.5)), max(1, int(height * factor + 0.5)), factor


def padded_shape(img_shape: tuple[int, int], divisor: int = SIZE_DIVISOR) -> tuple[int, int]:
    """The (height, width) the model pads an image of `img_shape` to (a multiple of `divisor`)."""
    return tuple(-(-side // divisor) * divisor for side in img_shape)  # type: ignore[return-value]


def resize_image(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """uint8 bilinear resize, OpenCV's fixed-point kernel (the one MMDetection's numbers come from)."""
    if image.shape[:2] == (height, width):
        return image
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)


def resize_planes(planes: np.ndarray, width: int, height: int) -> np.ndarray:
    """Nearest resize of `[N, H, W]` planes one by one, as `BitmapMasks.rescale` does."""
    if planes.shape[-2:] == (height, width):
        return planes
    if planes.shape[0] == 0:
        return np.zeros((0, height, width), dtype=planes.dtype)
    return np.stack([resize_plane(plane, width, height) for plane in planes])


def resize_plane(plane: np.ndarray, width: int, height: int) -> np.ndarray:
    """Nearest resize of one `[H, W]` map (mask or semantic map)."""
    if plane.shape == (height, width):
        return plane
    return cv2.resize(np.ascontiguousarray(plane), (width, height), interpolation=cv2.INTER_NEAREST)


def rescale_boxes(boxes: np.ndarray, sx: float, sy: float, width: int, height: int) -> np.ndarray:
    """Boxes times (sx, sy) in float32 (as MMDetection's float32 box tensor), clipped to the new image."""
    factor = np.array([sx, sy, sx, sy], dtype=np.float32)
    out = boxes.astype(np.float32, copy=False).reshape(-1, 4) * factor
    out[:, 0::2] = out[:, 0::2].clip(0, width)
    out[:, 1::2] = out[:, 1::2].clip(0, height)
    return out


def flip_boxes(boxes: np.ndarray, width: int) -> np.ndarray:
    flipped = boxes.copy()
    flipped[:, 0] = width - boxes[:, 2]
    flipped[:, 2] = width - boxes[:, 0]
    return flipped


# ---------------------------------------------------------------------------------------------- transforms
class Resize:
    """Keep-ratio resize to fit `scale` (e.g. (1333, 800)): MMDetection's `Resize(keep_ratio=True)`."""

    def __init__(self, scale: tuple[int, int]):
        if len(scale) != 2 or min(scale) < 1:
            raise ValueError(f"Resize scale must be two positive sides like (1333, 800), got {scale!r}")
        self.scale = (int(scale[0]), int(scale[1]))

    def __repr__(self) -> str:
        return f"Resize(scale={self.scale})"

    def __call__(self, image: np.ndarray, target: dict[str, np.ndarray], meta: dict[str, Any],
                 generator: torch.Generator | None = None) -> Sample:
        height, width = image.shape[:2]
        new_width, new_height, _ = rescale_size(width, height, self.scale)
        sx, sy = new_width / width, new_height / height
        image = resize_image(image, new_width, new_height)
        target = dict(target)
        for key in PLANE_KEYS:
            if key in target:
                target[key] = resize_planes(target[key], new_width, new_height)
        if "semantic_seg" in target:
            target["semantic_seg"] = resize_plane(target["semantic_seg"], new_width, new_height)
        for key in BOX_KEYS:
            if key in target:
                target[key] = rescale_boxes(target[key], sx, sy, new_width, new_height)
        prior_sx, prior_sy = meta.get("scale_factor", (1.0, 1.0))
        meta = dict(meta, img_shape=(new_height, new_width), scale_factor=(prior_sx * sx, prior_sy * sy))
        return image, target, meta


class RandomHorizontalFlip:
    """Mirror image, boxes, masks and semantic map left-right with probability `prob`."""

    def __init__(self, prob: float = 0.5):
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"flip probability must be in [0, 1], got {prob}")
        self.prob = prob

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(prob={self.prob})"

    def __call__(self, image: np.ndarray, target: dict[str, np.ndarray], meta: dict[str, Any],
                 generator: torch.Generator | None = None) -> Sample:
        flip = bool(torch.rand((), generator=generator) < self.prob)
        meta = dict(meta, flip=flip)
        if not flip:
            return image, target, meta
        return (*horizontal_flip(image, target), meta)


def horizontal_flip(image: np.ndarray, target: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The mirrored sample: x -> W - x for boxes, last (width) axis reversed for the image and maps."""
    width = image.shape[1]
    target = dict(target)
    for key in BOX_KEYS:
        if key in target:
            target[key] = flip_boxes(target[key], width)
    for key in (*PLANE_KEYS, "semantic_seg"):
        if key in target:
            target[key] = np.ascontiguousarray(target[key][..., ::-1])
    return np.ascontiguousarray(image[:, ::-1]), target


class Compose:
    """Apply transforms in order, handing each the same generator."""

    def __init__(self, transforms: Sequence[Transform]):
        self.transforms = list(transforms)

    def __repr__(self) -> str:
        return f"Compose({self.transforms})"

    def __call__(self, image: np.ndarray, target: dict[str, np.ndarray], meta: dict[str, Any],
                 generator: torch.Generator | None = None) -> Sample:
        for transform in self.transforms:
            image, target, meta = transform(image, target, meta, generator)
        return image, target, meta


def build_transforms(*, train: bool, scale: tuple[int, int] | None = DEFAULT_SCALE,
                     flip_prob: float = 0.5) -> Compose:
    """The paper's pipeline: keep-ratio resize to `scale` (None: keep size), then flip when `train`.

    Paper scale is (1333, 800); smoke scale passes the synthetic image size. Evaluation and
    `predict` use the same resize without flip.
    """
    steps: list[Transform] = []
    if scale is not None:
        steps.append(Resize(scale))
    if train and flip_prob > 0:
        steps.append(RandomHorizontalFlip(flip_prob))
    return Compose(steps)


# ---------------------------------------------------------------------------------------------- to the model
def to_model_image(image_bgr: np.ndarray) -> Tensor:
    """uint8 `[H, W, 3]` BGR -> the model's uint8 `[3, H, W]` RGB (the model makes it float on its device)."""
    return torch.from_numpy(np.ascontiguousarray(image_bgr[:, :, ::-1].transpose(2, 0, 1)))


def pack(image: np.ndarray, target: dict[str, np.ndarray], meta: dict[str, Any]
         ) -> tuple[Tensor, dict[str, Tensor], dict[str, Any]]:
    """The numpy stage -> the model's image, targets (docs/interfaces.md) and meta (+ `pad_shape`).

    Arrays keep their dtype (uint8 masks and semantic map), except a semantic map of more than 255
    classes (uint16, which torch barely supports): int64.
    """
    tensors: dict[str, Tensor] = {}
    for key, value in target.items():
        if value.dtype == np.uint16:
            value = value.astype(np.int64)
        tensors[key] = torch.from_numpy(np.ascontiguousarray(value))
    img_shape = tuple(image.shape[:2])
    meta = dict(meta, img_shape=img_shape, pad_shape=padded_shape(img_shape))
    return to_model_image(image), tensors, meta


def test_input(image_bgr: np.ndarray, scale: tuple[int, int] | None = DEFAULT_SCALE
               ) -> tuple[Tensor, dict[str, Any]]:
    """One decoded image as the test pipeline hands it to the model, with the meta that maps the
    outputs back to the original image (`ori_shape`, `scale_factor`)."""
    height, width = image_bgr.shape[:2]
    meta: dict[str, Any] = {"ori_shape": (height, width), "img_shape": (height, width),
                            "scale_factor": (1.0, 1.0), "flip": False}
    image, _, meta = build_transforms(train=False, scale=scale)(image_bgr, {}, meta)
    image_tensor, _, meta = pack(image, {}, meta)
    return image_tensor, meta


test_input.__test__ = False  # type: ignore[attr-defined]  # not a pytest test despite the name


# ---------------------------------------------------------------------------------------------- reports
def uint8_bgr_chw(image: Tensor) -> np.ndarray:
    """The model input (uint8, or float with whole values) as MMDetection's resized uint8 BGR `[3, H, W]`."""
    pixels = image.detach().cpu()
    if pixels.is_floating_point():
        pixels = pixels.round().clamp(0, 255)
    return np.ascontiguousarray(pixels.to(torch.uint8).numpy()[::-1])


def md5_hex(array: np.ndarray) -> str:
    return hashlib.md5(np.ascontiguousarray(array).tobytes()).hexdigest()


def padded_semantic_map(semantic_seg: Tensor, pad_shape: tuple[int, int]) -> np.ndarray:
    """The semantic target as MMDetection's data preprocessor holds it: uint8 `[1, Hp, Wp]`, 255 padding."""
    height, width = semantic_seg.shape[-2:]
    padded = np.full((1, *pad_shape), SEMANTIC_PAD_VALUE, dtype=np.uint8)
    padded[0, :height, :width] = semantic_seg.detach().cpu().numpy().astype(np.uint8)
    return padded
