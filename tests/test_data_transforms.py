"""Keep-ratio resize and horizontal flip (MMDetection's rules, OpenCV's kernels) and their reproducible
randomness. Samples here are the pipeline's numpy stage: uint8 BGR [H, W, 3] images, numpy targets."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from scnet.data import build_transforms, epoch_permutation, sample_generator
from scnet.data.pipeline import (RandomHorizontalFlip, Resize, horizontal_flip, pack, padded_shape, rescale_size,
                                 test_input, to_model_image, uint8_bgr_chw)

W, H = 40, 30


def sample() -> tuple[np.ndarray, dict[str, np.ndarray], dict]:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    masks = np.zeros((2, H, W), dtype=np.uint8)
    masks[0, 4:10, 6:20] = 1
    masks[1, 15:29, 30:39] = 1
    semantic = np.zeros((H, W), dtype=np.uint8)
    semantic[masks[0].astype(bool)] = 3
    semantic[masks[1].astype(bool)] = 255
    target = {"boxes": np.array([[6.0, 4.0, 20.0, 10.0], [30.0, 15.0, 39.0, 29.0]], dtype=np.float32),
              "labels": np.array([2, 0]), "masks": masks, "semantic_seg": semantic,
              "ignored_boxes": np.array([[1.0, 2.0, 5.0, 7.0]], dtype=np.float32), "ignored_labels": np.array([1])}
    meta = {"image_id": 1, "ori_shape": (H, W), "img_shape": (H, W), "scale_factor": (1.0, 1.0), "flip": False}
    return image, target, meta


def tight_box(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]


@pytest.mark.parametrize("width, height, scale, expected", [
    (640, 427, (1333, 800), (1199, 800)),   # a typical COCO image
    (640, 480, (1333, 800), (1067, 800)),   # short side limits
    (480, 640, (1333, 800), (800, 1067)),   # portrait: same rule on the rotated sides
    (1000, 200, (1333, 800), (1333, 267)),  # very wide: long side limits
    (2000, 1500, (800, 1333), (1067, 800)),  # scale order does not matter; downscaling
    (256, 192, (256, 192), (256, 192)),     # smoke scale, identity
])
def test_rescale_size_follows_mmdetection(width: int, height: int, scale: tuple[int, int],
                                          expected: tuple[int, int]) -> None:
    new_w, new_h, _ = rescale_size(width, height, scale)
    assert (new_w, new_h) == expected


def test_upscale_by_two_records_meta_and_scales_targets() -> None:
    image, target, meta = sample()
    out_image, out, out_meta = Resize((80, 60))(image, target, meta)
    assert out_image.shape == (60, 80, 3) and out_image.dtype == np.uint8
    assert out_meta["img_shape"] == (60, 80) and out_meta["ori_shape"] == (H, W)
    assert out_meta["scale_factor"] == (2.0, 2.0)
    np.testing.assert_array_equal(out["boxes"], target["boxes"] * 2)
    np.testing.assert_array_equal(out["ignored_boxes"], target["ignored_boxes"] * 2)
    # nearest: every source pixel becomes a 2x2 block
    block = np.ones((2, 2), dtype=np.uint8)
    for k in range(2):
        np.testing.assert_array_equal(out["masks"][k], np.kron(target["masks"][k], block))
    np.testing.assert_array_equal(out["semantic_seg"], np.kron(target["semantic_seg"], block))
    assert out["semantic_seg"].dtype == np.uint8


def test_image_is_resized_as_uint8_by_opencv_bilinear() -> None:
    image, target, meta = sample()
    out_image, _, _ = Resize((1333, 800))(image, target, meta)
    expected = cv2.resize(image, (1067, 800), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(out_image, expected)


def test_image_interpolation_is_bilinear_with_half_pixel_centres() -> None:
    image = np.zeros((2, 2, 3), dtype=np.uint8)
    image[:, 1] = 100
    target = {"boxes": np.zeros((0, 4), dtype=np.float32), "masks": np.zeros((0, 2, 2), dtype=np.uint8)}
    out_image, out, _ = Resize((4, 4))(image, target, {})
    # output column x samples source x' = (x + 0.5) / 2 - 0.5: -0.25, 0.25, 0.75, 1.25 -> 0, 25, 75, 100
    assert out_image[0, :, 0].tolist() == [0, 25, 75, 100]
    assert out["masks"].shape == (0, 4, 4)


def test_downscale_picks_nearest_source_pixels() -> None:
    image, target, meta = sample()
    _, out, out_meta = Resize((20, 15))(image, target, meta)
    assert out_meta["scale_factor"] == (0.5, 0.5)
    np.testing.assert_array_equal(out["masks"], target["masks"][:, ::2, ::2])


def test_non_integer_scale_factor_is_per_axis_and_boxes_are_clipped() -> None:
    image, target, meta = sample()
    target["boxes"][1, 2] = W + 5.0  # reaches past the right border
    _, out, out_meta = Resize((1333, 800))(image, target, meta)
    assert out_meta["img_shape"] == (800, 1067)
    sx, sy = out_meta["scale_factor"]
    assert sx == pytest.approx(1067 / W) and sy == pytest.approx(800 / H)
    assert out["boxes"][0].tolist() == pytest.approx([6 * sx, 4 * sy, 20 * sx, 10 * sy])
    assert out["boxes"].dtype == np.float32
    assert out["boxes"][1, 2] == 1067
    assert out["masks"].shape == (2, 800, 1067)


def test_flip_mirrors_boxes_masks_semantic_and_image_consistently() -> None:
    image, target, _ = sample()
    flipped_image, flipped = horizontal_flip(image, target)
    assert flipped["boxes"].tolist() == [[W - 20.0, 4.0, W - 6.0, 10.0], [W - 39.0, 15.0, W - 30.0, 29.0]]
    assert flipped["ignored_boxes"].tolist() == [[W - 5.0, 2.0, W - 1.0, 7.0]]
    for k in range(2):
        assert tight_box(flipped["masks"][k]) == flipped["boxes"][k].tolist()
    np.testing.assert_array_equal(flipped["semantic_seg"][:, 0], target["semantic_seg"][:, W - 1])
    np.testing.assert_array_equal(flipped_image[:, 0], image[:, W - 1])
    np.testing.assert_array_equal(horizontal_flip(*horizontal_flip(image, target))[1]["masks"], target["masks"])
    assert flipped["labels"] is target["labels"]


def test_flip_decision_comes_from_the_generator() -> None:
    flip = RandomHorizontalFlip(0.5)
    decisions = [flip(*sample(), sample_generator(0, 0, i))[2]["flip"] for i in range(200)]
    again = [flip(*sample(), sample_generator(0, 0, i))[2]["flip"] for i in range(200)]
    next_epoch = [flip(*sample(), sample_generator(0, 1, i))[2]["flip"] for i in range(200)]
    assert decisions == again
    assert decisions != next_epoch
    assert 70 <= sum(decisions) <= 130
    assert all(RandomHorizontalFlip(1.0)(*sample(), torch.Generator())[2]["flip"] for _ in range(5))


def test_build_transforms_train_resizes_then_flips_eval_only_resizes() -> None:
    train, evaluation = build_transforms(train=True, scale=(80, 60)), build_transforms(train=False, scale=(80, 60))
    image, target, meta = sample()
    flips = []
    for i in range(40):
        out_image, out, out_meta = train(image, target, meta, sample_generator(3, 0, i))
        ref_image, ref, ref_meta = evaluation(image, target, meta, sample_generator(3, 0, i))
        assert ref_meta["flip"] is False and out_meta["img_shape"] == ref_meta["img_shape"] == (60, 80)
        if out_meta["flip"]:
            ref_image, ref = horizontal_flip(ref_image, ref)
        np.testing.assert_array_equal(out_image, ref_image)
        np.testing.assert_array_equal(out["masks"], ref["masks"])
        np.testing.assert_array_equal(out["boxes"], ref["boxes"])
        flips.append(out_meta["flip"])
    assert any(flips) and not all(flips)
    assert build_transforms(train=False, scale=None)(image, target, meta)[0] is image


def test_pack_gives_the_model_uint8_rgb_and_tensors() -> None:
    image, target, meta = sample()
    tensor, targets, packed_meta = pack(image, target, meta)
    assert tensor.dtype == torch.uint8 and tensor.shape == (3, H, W)
    np.testing.assert_array_equal(tensor[0].numpy(), image[:, :, 2])  # R first
    np.testing.assert_array_equal(uint8_bgr_chw(tensor), image.transpose(2, 0, 1))
    np.testing.assert_array_equal(uint8_bgr_chw(tensor.float()), image.transpose(2, 0, 1))
    assert targets["semantic_seg"].dtype == torch.uint8 and targets["masks"].dtype == torch.uint8
    np.testing.assert_array_equal(targets["semantic_seg"].numpy(), target["semantic_seg"])
    assert targets["boxes"].dtype == torch.float32
    assert packed_meta["pad_shape"] == padded_shape((H, W)) == (32, 64)


def test_pack_sends_one_byte_per_pixel_and_channel() -> None:
    """A quarter of the float32 image and an eighth of the int64 map the pipeline sent before."""
    image, target, meta = sample()
    tensor, targets, _ = pack(image, target, meta)
    assert tensor.numel() * tensor.element_size() == 3 * H * W
    semantic = targets["semantic_seg"]
    assert semantic.numel() * semantic.element_size() == H * W


def test_a_semantic_map_of_more_than_255_classes_is_packed_as_int64() -> None:
    image, target, meta = sample()
    wide = target["semantic_seg"].astype(np.uint16)
    wide[0, 0] = 300
    _, targets, _ = pack(image, dict(target, semantic_seg=wide), meta)
    assert targets["semantic_seg"].dtype == torch.int64 and int(targets["semantic_seg"][0, 0]) == 300


def test_test_input_resizes_and_records_how_to_map_back() -> None:
    image, _, _ = sample()
    tensor, meta = test_input(image, (80, 60))
    assert tensor.shape == (3, 60, 80)
    assert meta["ori_shape"] == (H, W) and meta["scale_factor"] == (2.0, 2.0) and meta["pad_shape"] == (64, 96)
    torch.testing.assert_close(tensor, to_model_image(cv2.resize(image, (80, 60), interpolation=cv2.INTER_LINEAR)))


def test_bad_transform_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="Resize scale"):
        Resize((0, 800))
    with pytest.raises(ValueError, match="flip probability"):
        RandomHorizontalFlip(1.5)


def test_epoch_permutation_is_a_reproducible_shuffle() -> None:
    order = epoch_permutation(50, seed=1, epoch=2)
    assert sorted(order) == list(range(50))
    assert order == epoch_permutation(50, seed=1, epoch=2)
    assert order != epoch_permutation(50, seed=1, epoch=3)
    assert np.any(np.array(order) != np.arange(50))
