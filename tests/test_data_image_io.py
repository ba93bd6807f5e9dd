"""Every image file is read as MMDetection's OpenCV reader reads it (cv2.imdecode, IMREAD_COLOR), and a
decompression bomb is refused before decoding, in one line naming the file."""
from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from scnet.data import CocoInstances, DatasetError
from scnet.image_io import MAX_IMAGE_PIXELS, ImageError, read_bgr

W, H = 48, 36


def opencv(path: Path) -> np.ndarray:
    return cv2.imdecode(np.fromfile(path, dtype=np.uint8), cv2.IMREAD_COLOR)


def colour_pixels() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (H, W, 3), dtype=np.uint8)


def test_grey_8bit_png_becomes_three_equal_channels(tmp_path: Path) -> None:
    grey = colour_pixels()[:, :, 0]
    Image.fromarray(grey).save(tmp_path / "grey.png")
    image = read_bgr(tmp_path / "grey.png")
    assert image.shape == (H, W, 3) and image.dtype == np.uint8
    for channel in range(3):
        np.testing.assert_array_equal(image[:, :, channel], grey)
    np.testing.assert_array_equal(image, opencv(tmp_path / "grey.png"))


def test_grey_16bit_png_keeps_its_high_byte_not_white(tmp_path: Path) -> None:
    values = (np.arange(H * W, dtype=np.uint32).reshape(H, W) * 37 % 65536).astype(np.uint16)
    assert cv2.imwrite(str(tmp_path / "grey16.png"), values)
    image = read_bgr(tmp_path / "grey16.png")
    np.testing.assert_array_equal(image, opencv(tmp_path / "grey16.png"))
    np.testing.assert_array_equal(image[:, :, 1], (values >> 8).astype(np.uint8))
    assert image.min() < 50 and image.max() > 200  # the old PIL path read these as all-white


def test_16bit_colour_png_is_8bit_bgr(tmp_path: Path) -> None:
    values = colour_pixels().astype(np.uint16) * 257
    assert cv2.imwrite(str(tmp_path / "colour16.png"), values)
    image = read_bgr(tmp_path / "colour16.png")
    np.testing.assert_array_equal(image, colour_pixels())
    np.testing.assert_array_equal(image, opencv(tmp_path / "colour16.png"))


def exif_rotated_jpeg(path: Path, orientation: int) -> np.ndarray:
    """A JPEG whose stored pixels are W x H with an EXIF orientation tag; returns its stored pixels."""
    rgb = colour_pixels()
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(rgb).save(path, quality=95, exif=exif)
    return cv2.imdecode(np.fromfile(path, dtype=np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    stored = exif_rotated_jpeg(tmp_path / "rotated.jpg", orientation=6)  # 6: rotate 90 degrees clockwise
    image = read_bgr(tmp_path / "rotated.jpg")
    assert image.shape == (W, H, 3)
    np.testing.assert_array_equal(image, np.rot90(stored, k=-1))
    np.testing.assert_array_equal(image, opencv(tmp_path / "rotated.jpg"))


def test_rgba_png_drops_alpha_without_blending(tmp_path: Path) -> None:
    rgba = np.concatenate([colour_pixels(), np.zeros((H, W, 1), dtype=np.uint8)], axis=2)  # fully transparent
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "rgba.png")
    image = read_bgr(tmp_path / "rgba.png")
    np.testing.assert_array_equal(image, rgba[:, :, 2::-1])
    np.testing.assert_array_equal(image, opencv(tmp_path / "rgba.png"))


def test_palette_png_is_expanded_to_its_colours(tmp_path: Path) -> None:
    indices = (np.arange(H * W).reshape(H, W) % 4).astype(np.uint8)
    palette = [255, 0, 0, 0, 255, 0, 0, 0, 255, 10, 20, 30] + [0] * (256 * 3 - 12)
    image = Image.fromarray(indices, mode="P")
    image.putpalette(palette)
    image.save(tmp_path / "palette.png")
    bgr = read_bgr(tmp_path / "palette.png")
    expected = np.array(palette[:12], dtype=np.uint8).reshape(4, 3)[indices][:, :, ::-1]
    np.testing.assert_array_equal(bgr, expected)
    np.testing.assert_array_equal(bgr, opencv(tmp_path / "palette.png"))


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height RGB pixels (a decompression bomb's shape)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.mark.parametrize("width, height", [(50_000, 50_000), (20_000, 10_000)])
def test_decompression_bomb_is_refused_in_one_line_naming_the_file(tmp_path: Path, width: int, height: int) -> None:
    assert width * height > MAX_IMAGE_PIXELS
    path = tmp_path / "bomb.png"
    path.write_bytes(png_claiming(width, height))
    with pytest.raises(ImageError) as info:
        read_bgr(path)
    message = str(info.value)
    assert str(path) in message and "decompression bomb" in message and "\n" not in message


def test_decompression_bomb_in_a_dataset_is_a_dataset_error_naming_the_file(tmp_path: Path) -> None:
    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    (root / "train2017").mkdir()
    (root / "train2017" / "bomb.png").write_bytes(png_claiming(50_000, 50_000))
    data = {"images": [{"id": 1, "file_name": "bomb.png", "width": 50_000, "height": 50_000}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "area": 100,
                             "iscrowd": 0, "segmentation": [[0, 0, 10, 0, 10, 10, 0, 10]]}],
            "categories": [{"id": 1, "name": "thing"}]}
    (root / "annotations" / "instances_train2017.json").write_text(json.dumps(data))
    dataset = CocoInstances(root, "train", semantic=None)
    with pytest.raises(DatasetError, match=r"bomb\.png.*decompression bomb") as info:
        dataset[0]
    assert "\n" not in str(info.value)


def test_a_16bit_grey_dataset_image_is_the_model_input_of_its_high_byte(tmp_path: Path) -> None:
    """The issue's case: a grey 16-bit PNG in a dataset reached the model as an all-white image."""
    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    (root / "train2017").mkdir()
    values = (np.arange(H * W, dtype=np.uint32).reshape(H, W) * 37 % 65536).astype(np.uint16)
    assert cv2.imwrite(str(root / "train2017" / "g.png"), values)
    data = {"images": [{"id": 1, "file_name": "g.png", "width": W, "height": H}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 2, 10, 10], "area": 100,
                             "iscrowd": 0, "segmentation": [[2, 2, 12, 2, 12, 12, 2, 12]]}],
            "categories": [{"id": 1, "name": "thing"}]}
    (root / "annotations" / "instances_train2017.json").write_text(json.dumps(data))
    image, _, _ = CocoInstances(root, "train", semantic=None)[0]
    for channel in range(3):
        np.testing.assert_array_equal(image[channel].numpy(), (values >> 8).astype(np.uint8))


def test_empty_and_truncated_files_are_not_readable_images(tmp_path: Path) -> None:
    (tmp_path / "empty.jpg").write_bytes(b"")
    buffer = io.BytesIO()
    Image.fromarray(colour_pixels()).save(buffer, format="PNG")
    (tmp_path / "cut.png").write_bytes(buffer.getvalue()[:40])
    for name in ("empty.jpg", "cut.png"):
        with pytest.raises(ImageError, match=rf"{name}.*not a readable image"):
            read_bgr(tmp_path / name)
