"""Resizing, padding, normalisation and input checks."""

import numpy as np
import pytest
import torch
from PIL import Image

from maskadapter.errors import InputError
from maskadapter.transforms import (
    CLIP_PIXEL_MEAN,
    CLIP_PIXEL_STD,
    ImageTransform,
    check_box,
    check_image,
    check_points,
)


@pytest.mark.parametrize(
    "hw,resized,padded",
    [
        ((480, 640), (800, 1067), (800, 1088)),  # short side to 800
        ((1000, 4000), (333, 1333), (352, 1344)),  # long side capped at 1333
        ((800, 800), (800, 800), (800, 800)),
        ((300, 451), (800, 1203), (800, 1216)),
    ],
)
def test_default_sizes(hw, resized, padded):
    t = ImageTransform()
    assert t.resized_hw(hw) == resized
    assert t.padded_hw(hw) == padded


@pytest.mark.parametrize("hw", [(8, 800), (800, 8), (8, 30000), (1, 100000)])
def test_resized_sides_never_vanish(hw):
    t = ImageTransform()
    rh, rw = t.resized_hw(hw)
    assert rh >= 1 and rw >= 1 and max(rh, rw) <= t.max_size
    ph, pw = t.padded_hw(hw)
    assert ph % 32 == 0 and pw % 32 == 0 and ph >= rh and pw >= rw


def test_image_tensor_is_normalised_and_zero_padded():
    t = ImageTransform(short_side=64, max_size=100)
    image = np.zeros((30, 45, 3), np.uint8)
    image[..., 0] = 200
    x = t.image_to_tensor(image)
    assert x.shape == (1, 3, 64, 96) and x.dtype == torch.float32
    rh, rw = t.resized_hw((30, 45))
    assert (rh, rw) == (64, 96)
    expected = (200 - CLIP_PIXEL_MEAN[0]) / CLIP_PIXEL_STD[0]
    assert torch.allclose(x[0, 0, :rh, :rw], torch.tensor(expected), atol=1e-5)
    assert torch.allclose(x[0, 1, :rh, :rw], torch.tensor(-CLIP_PIXEL_MEAN[1] / CLIP_PIXEL_STD[1]), atol=1e-5)
    t2 = ImageTransform(short_side=50, max_size=100)
    x2 = t2.image_to_tensor(image)
    assert x2.shape == (1, 3, 64, 96)
    assert t2.resized_hw((30, 45)) == (50, 75)
    assert (x2[0, :, 50:, :] == 0).all() and (x2[0, :, :, 75:] == 0).all()


def test_masks_follow_the_image_and_come_back():
    t = ImageTransform(short_side=96, max_size=200)
    masks = np.zeros((2, 60, 90), bool)
    masks[0, 10:40, 20:70] = True
    masks[1, :, 45:] = True
    x = t.masks_to_tensor(masks)
    assert x.shape == (1, 2) + t.padded_hw((60, 90))
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    back = t.tensor_to_masks(x, (60, 90))
    assert back.shape == masks.shape
    iou = (back & masks).sum((1, 2)) / (back | masks).sum((1, 2))
    assert (iou > 0.95).all()
    assert t.masks_to_tensor(np.zeros((0, 60, 90), bool)).shape == (1, 0) + t.padded_hw((60, 90))


def test_check_image_accepts_common_forms():
    rgb = np.random.randint(0, 255, (20, 30, 3), np.uint8)
    assert check_image(rgb) is not None and check_image(rgb).shape == (20, 30, 3)
    assert check_image(np.zeros((20, 30), np.uint8)).shape == (20, 30, 3)
    assert check_image(np.zeros((20, 30, 4), np.uint8)).shape == (20, 30, 3)
    assert check_image(Image.new("L", (30, 20))).shape == (20, 30, 3)
    assert check_image(np.ones((20, 30, 3), np.float32)).max() == 255


@pytest.mark.parametrize(
    "bad,match",
    [
        (None, "no image"),
        ("picture.png", "not an image file"),  # a path: read by load_image, missing here
        (12, "expected an image"),
        (np.zeros((20, 30, 2), np.uint8), "HxWx3"),
        (np.zeros((4, 30, 3), np.uint8), "too small"),
        (np.zeros((20, 30, 3), bool), "uint8"),
    ],
)
def test_check_image_rejects(bad, match):
    with pytest.raises(InputError, match=match):
        check_image(bad)


def test_check_points():
    xy, labels = check_points([[10, 5, 1], [0, 0, 0], [30, 20, 1]], (20, 30))
    assert xy.dtype == np.float32 and xy.shape == (3, 2) and labels.tolist() == [1, 0, 1]
    for bad, match in [
        ([], "non-empty"),
        ([[1, 2]], "triples"),
        ([[1, 2, 3]], "1 \\(positive\\) or 0"),
        ([[31, 2, 1]], "outside the 30x20 image"),
        ([[5, 5, 0]], "at least one positive"),
        ([[float("nan"), 1, 1]], "finite"),
        ("oops", "triples"),
    ]:
        with pytest.raises(InputError, match=match):
            check_points(bad, (20, 30))


def test_check_box():
    assert check_box(None, (20, 30)) is None
    assert check_box([25, 15, 5, 2], (20, 30)).tolist() == [5, 2, 25, 15]
    with pytest.raises(InputError, match="inside"):
        check_box([0, 0, 40, 10], (20, 30))
    with pytest.raises(InputError, match="four numbers"):
        check_box([1, 2, 3], (20, 30))
