"""Resizing, padding, normalisation and input checks."""

import numpy as np
import pytest
import torch
from PIL import Image

from maskadapter.engine.images import check_image
from maskadapter.engine.transforms import (
    CLIP_PIXEL_MEAN,
    CLIP_PIXEL_STD,
    ImageTransform,
    check_box,
    check_points,
)
from maskadapter.errors import InputError


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
    rh, rw = t.resized_hw((60, 90))
    assert (x[..., rh:, :] == 0).all() and (x[..., rw:] == 0).all()  # padding stays empty
    # the resized part back at the image size (PIL's bilinear resize), thresholded at 0.5
    planes = [Image.fromarray(p, mode="F").resize((90, 60), Image.BILINEAR) for p in x[0, :, :rh, :rw].numpy()]
    back = np.stack([np.asarray(p) > 0.5 for p in planes])
    assert back.shape == masks.shape
    iou = (back & masks).sum((1, 2)) / (back | masks).sum((1, 2))
    assert (iou > 0.95).all()
    assert t.masks_to_tensor(np.zeros((0, 60, 90), bool)).shape == (1, 0) + t.padded_hw((60, 90))


def test_check_image_accepts_common_forms():
    rgb = np.random.randint(0, 255, (20, 30, 3), np.uint8)
    np.testing.assert_array_equal(check_image(rgb), rgb)
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


def _binary(x: torch.Tensor) -> bool:
    return x.dtype == torch.float32 and bool(((x == 0) | (x == 1)).all())


def test_masks_enter_the_clip_frame_binary_and_small_masks_survive():
    t = ImageTransform()  # (300, 451) -> (800, 1203), padded to (800, 1216)
    masks = np.zeros((4, 300, 451), bool)
    masks[0, 100:103, 200:203] = True  # 3x3 pixels
    masks[1, :, 300] = True  # a 1-pixel-wide vertical line
    masks[2, 150, :] = True  # a 1-pixel-tall horizontal line
    masks[3, 0, 450] = True  # one pixel in a corner
    x = t.masks_to_tensor(masks)
    assert x.shape == (1, 4, 800, 1216) and _binary(x)
    rh, rw = 800, 1203  # 451 * 800 / 300 = 1202.7
    sums = x[0].sum((1, 2))
    assert (sums > 0).all()
    assert 36 <= float(sums[0]) <= 100  # about 3 * 800/300 = 8 pixels a side
    # the lines stay unbroken: every row (column) of the resized image has a pixel of them
    assert (x[0, 1, :rh].sum(1) >= 1).all() and (x[0, 2, :, :rw].sum(0) >= 1).all()
    assert x[0, 3, 0, rw - 1] == 1
    assert (x[0, :, rh:] == 0).all() and (x[0, :, :, rw:] == 0).all()  # padding stays empty


def test_masks_below_one_clip_pixel_keep_one_when_shrinking():
    t = ImageTransform(short_side=100, max_size=200)  # (600, 900) -> (100, 150): 6x smaller
    masks = np.zeros((5, 600, 900), bool)
    masks[0, 301, 455] = True  # one pixel: 1/36 of a CLIP pixel
    masks[1, :, 455] = True  # a 1-pixel line: 1/6 of each CLIP pixel it crosses
    masks[2, 100:400, 100:400] = True  # a large square: covered pixels only
    masks[3, 598:600, 0:2] = True  # a corner 2x2
    x = t.masks_to_tensor(masks)
    assert x.shape == (1, 5, 128, 160) and _binary(x)
    assert 1 <= float(x[0, 0].sum()) <= 4
    assert (x[0, 0, 49:52, 74:77].sum() == x[0, 0].sum()) and x[0, 0, 50, 75] == 1
    assert (x[0, 1, :100].sum(1) >= 1).all() and x[0, 1].sum() <= 200
    # rows and columns 100..400 are CLIP pixels 16.7..66.7: the fully covered ones are set,
    # partly covered edge pixels by their coverage, nothing outside
    assert x[0, 2, 17:66, 17:66].all() and x[0, 2].sum() == x[0, 2, 16:67, 16:67].sum()
    assert 49 * 49 <= float(x[0, 2].sum()) <= 51 * 51
    assert x[0, 3, 99, 0] == 1
    assert (x[0, 4] == 0).all()  # an empty mask stays empty


def test_masks_from_a_working_frame_are_binary():
    t = ImageTransform(short_side=96, max_size=200)
    masks = torch.zeros(2, 30, 45, dtype=torch.bool)  # working frame of a (60, 90) image
    masks[0, 5:20, 10:35] = True
    masks[1, 29, 44] = True
    x = t.masks_to_tensor(masks, image_hw=(60, 90))
    assert x.shape == (1, 2) + t.padded_hw((60, 90)) and _binary(x)
    assert x[0, 1].sum() >= 1


def test_enlarged_masks_equal_the_antialiased_coverage_thresholded():
    """Enlarging both sides, the masks are the antialiased bilinear coverage at 0.5 (the
    engine skips antialiasing there: it changes nothing when enlarging)."""
    t = ImageTransform()  # (300, 451) -> (800, 1203)
    g = torch.Generator().manual_seed(0)
    blobs = torch.nn.functional.interpolate(torch.rand(12, 1, 30, 45, generator=g), size=(300, 451), mode="bilinear")
    masks = blobs[:, 0] > 0.6
    x = t.masks_to_tensor(masks)
    coverage = torch.nn.functional.interpolate(
        masks.float()[None], size=(800, 1203), mode="bilinear", align_corners=False, antialias=True
    )
    expected = torch.zeros(1, 12, 800, 1216)
    expected[..., :800, :1203] = (coverage >= 0.5).float()
    assert masks.flatten(1).any(1).all()  # no mask empty: the max-pool rule stays out of it
    assert torch.equal(x, expected)
