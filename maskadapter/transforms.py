"""All resizing, padding, normalisation and coordinate checks of the project.

Conventions: images are HWC uint8 RGB numpy arrays; masks are (N, H, W) bool arrays
at the original image resolution; points are XY pixel coordinates in the original
image (x to the right, y down, origin at the top-left pixel's corner).

SAM-2 does its own resizing to 1024 inside ``SAM2ImagePredictor``; the CLIP side
uses ``ImageTransform``: resize so the short side is ``short_side`` and the long side
at most ``max_size`` (detectron2's ResizeShortestEdge, the published evaluation
setting), normalise with CLIP's mean/std, zero-pad bottom/right to a multiple of 32.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from maskadapter.errors import InputError

CLIP_PIXEL_MEAN = (122.7709383, 116.7460125, 104.09373615)
CLIP_PIXEL_STD = (68.5005327, 66.6321579, 70.32316305)
SIZE_DIVISOR = 32
MIN_IMAGE_SIDE = 8
MAX_IMAGE_PIXELS = 40_000_000


def check_image(image: object) -> np.ndarray:
    """Validate an image and return it as a contiguous (H, W, 3) uint8 RGB array.

    Accepts HWC uint8 RGB, grayscale (H, W) and RGBA (alpha dropped) arrays and PIL
    images. Raises ``InputError`` otherwise.
    """
    if image is None:
        raise InputError("no image: upload a photo (JPEG or PNG) first")
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    if not isinstance(image, np.ndarray):
        raise InputError(f"expected an image as an HxWx3 uint8 array, got {type(image).__name__}")
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise InputError(f"expected an HxWx3 RGB image, got an array of shape {image.shape}")
    if image.dtype != np.uint8:
        if image.dtype == bool or not np.issubdtype(image.dtype, np.number):
            raise InputError(f"expected uint8 pixel values, got dtype {image.dtype}")
        if np.issubdtype(image.dtype, np.floating) and image.size and image.max() <= 1.0:
            image = image * 255.0
        image = np.clip(image, 0, 255).astype(np.uint8)
    h, w = image.shape[:2]
    if min(h, w) < MIN_IMAGE_SIDE:
        raise InputError(f"the image is too small ({w}x{h}); both sides need {MIN_IMAGE_SIDE}+ pixels")
    if h * w > MAX_IMAGE_PIXELS:
        raise InputError(f"the image is too large ({w}x{h}); at most {MAX_IMAGE_PIXELS // 1_000_000} MP")
    return np.ascontiguousarray(image[:, :, :3])


def check_points(
    points: Sequence[Sequence[float]], image_hw: tuple[int, int], require_positive: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Validate ``[[x, y, label], ...]`` (label 1 positive, 0 negative) inside the image.

    Returns (coords (P, 2) float32 XY pixels, labels (P,) int32). Unless
    ``require_positive`` is False (a box is given too), one point must be positive.
    """
    h, w = image_hw
    try:
        arr = np.asarray(points, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError("points must be a list of [x, y, label] triples") from None
    if arr.ndim != 2 or arr.shape[1] != 3 or len(arr) == 0:
        raise InputError("points must be a non-empty list of [x, y, label] triples")
    if not np.isfinite(arr).all():
        raise InputError("point coordinates must be finite numbers")
    labels = arr[:, 2]
    if not np.isin(labels, (0, 1)).all():
        raise InputError("point labels must be 1 (positive) or 0 (negative)")
    xy = arr[:, :2]
    outside = (xy[:, 0] < 0) | (xy[:, 0] > w) | (xy[:, 1] < 0) | (xy[:, 1] > h)
    if outside.any():
        x, y = xy[outside][0]
        raise InputError(f"point ({x:g}, {y:g}) lies outside the {w}x{h} image")
    if require_positive and not (labels == 1).any():
        raise InputError("add at least one positive point (label 1) on the object")
    return xy.astype(np.float32), labels.astype(np.int32)


def check_box(box: Sequence[float] | None, image_hw: tuple[int, int]) -> np.ndarray | None:
    """Validate an XYXY pixel box inside the image; returns (4,) float32 or None."""
    if box is None:
        return None
    h, w = image_hw
    try:
        arr = np.asarray(box, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise InputError("a box must be [x0, y0, x1, y1]") from None
    if arr.shape != (4,) or not np.isfinite(arr).all():
        raise InputError("a box must be four numbers [x0, y0, x1, y1]")
    x0, y0, x1, y1 = min(arr[0], arr[2]), min(arr[1], arr[3]), max(arr[0], arr[2]), max(arr[1], arr[3])
    if x0 < 0 or y0 < 0 or x1 > w or y1 > h or x1 - x0 < 1 or y1 - y0 < 1:
        raise InputError(f"the box must lie inside the {w}x{h} image and be at least 1 pixel wide")
    return np.array([x0, y0, x1, y1], dtype=np.float32)


@dataclass(frozen=True)
class ImageTransform:
    """Maps an image and its masks to the CLIP input frame and masks back."""

    short_side: int = 800
    max_size: int = 1333
    divisor: int = SIZE_DIVISOR

    def resized_hw(self, hw: tuple[int, int]) -> tuple[int, int]:
        """(h, w) after resizing, before padding (detectron2 ResizeShortestEdge rounding)."""
        h, w = hw
        scale = self.short_side / min(h, w)
        if max(h, w) * scale > self.max_size:
            scale = self.max_size / max(h, w)
        return int(h * scale + 0.5), int(w * scale + 0.5)

    def padded_hw(self, hw: tuple[int, int]) -> tuple[int, int]:
        rh, rw = self.resized_hw(hw)
        d = self.divisor
        return -(-rh // d) * d, -(-rw // d) * d

    def image_to_tensor(self, image: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
        """(H, W, 3) uint8 RGB -> (1, 3, Hp, Wp) float32, CLIP-normalised, zero-padded."""
        rh, rw = self.resized_hw(image.shape[:2])
        resized = np.asarray(Image.fromarray(image).resize((rw, rh), Image.BILINEAR))
        x = torch.from_numpy(resized).to(device=device, dtype=torch.float32).permute(2, 0, 1)
        mean = torch.tensor(CLIP_PIXEL_MEAN, device=x.device).view(3, 1, 1)
        std = torch.tensor(CLIP_PIXEL_STD, device=x.device).view(3, 1, 1)
        x = (x - mean) / std
        ph, pw = self.padded_hw(image.shape[:2])
        return F.pad(x, (0, pw - rw, 0, ph - rh))[None]

    def masks_to_tensor(
        self,
        masks: np.ndarray | torch.Tensor,
        device: torch.device | str = "cpu",
        image_hw: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        """(N, h, w) bool masks -> (1, N, Hp, Wp) float32 in [0, 1], resized like the image
        (bilinear, antialiased) and zero-padded. ``image_hw`` is the original image's
        size when the masks are in a working frame of it (default: the masks' size)."""
        m = torch.as_tensor(masks, device=device).to(torch.float32)
        if m.ndim != 3:
            raise InputError(f"masks must be (N, H, W), got shape {tuple(m.shape)}")
        image_hw = image_hw or tuple(m.shape[-2:])
        rh, rw = self.resized_hw(image_hw)
        ph, pw = self.padded_hw(image_hw)
        if m.shape[0] == 0:
            return m.new_zeros(1, 0, ph, pw)
        m = F.interpolate(m[None], size=(rh, rw), mode="bilinear", align_corners=False, antialias=True)
        return F.pad(m.clamp(0, 1), (0, pw - rw, 0, ph - rh))

    def tensor_to_masks(self, x: torch.Tensor, hw: tuple[int, int], threshold: float = 0.5) -> np.ndarray:
        """(1, N, Hp, Wp) maps in the CLIP frame -> (N, H, W) bool at the original size."""
        rh, rw = self.resized_hw(hw)
        x = x[:, :, :rh, :rw].float()
        x = F.interpolate(x, size=hw, mode="bilinear", align_corners=False)
        return (x[0] > threshold).cpu().numpy()


class WorkingFrame:
    """The working resolution of one image, and the way back to the original size.

    Masks are made, classified and painted at ``work_hw``: the image's size scaled so
    that its long side is at most ``max_side`` (never enlarged). The way back is
    nearest-neighbour: original row ``y`` shows working row ``rows[y]`` (likewise for
    columns), so areas and boxes in original pixels follow exactly from working masks.
    """

    def __init__(self, orig_hw: tuple[int, int], max_side: int = 1024) -> None:
        h, w = orig_hw
        scale = min(1.0, max_side / max(h, w))
        self.orig_hw = (int(h), int(w))
        self.work_hw = (max(1, round(h * scale)), max(1, round(w * scale)))
        self.rows = self._nearest(h, self.work_hw[0])  # (H,) working row of each original row
        self.cols = self._nearest(w, self.work_hw[1])
        self.row_count = np.bincount(self.rows, minlength=self.work_hw[0])  # original rows per working row
        self.col_count = np.bincount(self.cols, minlength=self.work_hw[1])
        self.first_row = np.searchsorted(self.rows, np.arange(self.work_hw[0]), side="left")
        self.first_col = np.searchsorted(self.cols, np.arange(self.work_hw[1]), side="left")
        self.end_row = np.searchsorted(self.rows, np.arange(self.work_hw[0]), side="right")
        self.end_col = np.searchsorted(self.cols, np.arange(self.work_hw[1]), side="right")

    @staticmethod
    def _nearest(out_len: int, in_len: int) -> np.ndarray:
        return np.minimum(((np.arange(out_len) + 0.5) * (in_len / out_len)).astype(np.int64), in_len - 1)

    @property
    def identity(self) -> bool:
        return self.work_hw == self.orig_hw

    def image(self, image: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 -> (h, w, 3) uint8 at the working size (area-averaged)."""
        if self.identity:
            return image
        h, w = self.work_hw
        return cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)

    def to_original(self, planes: np.ndarray | torch.Tensor) -> np.ndarray:
        """(..., h, w) working-frame array (mask or label map) -> (..., H, W) numpy."""
        if isinstance(planes, torch.Tensor):
            planes = planes.cpu().numpy()
        if self.identity:
            return planes
        return planes[..., self.rows[:, None], self.cols[None, :]]

    def areas(self, masks: torch.Tensor, chunk: int = 32) -> torch.Tensor:
        """(N, h, w) bool working masks -> (N,) int64 pixel counts at the original size."""
        rc = torch.as_tensor(self.row_count, device=masks.device, dtype=torch.float64)
        cc = torch.as_tensor(self.col_count, device=masks.device, dtype=torch.float64)
        out = [
            torch.einsum("nhw,h,w->n", masks[s : s + chunk].to(torch.float64), rc, cc)
            for s in range(0, len(masks), chunk)
        ]
        return torch.cat(out).round().long() if out else torch.zeros(0, dtype=torch.long, device=masks.device)

    def boxes(self, masks: torch.Tensor) -> torch.Tensor:
        """(N, h, w) bool working masks -> (N, 4) int64 XYXY original pixels, x1/y1
        exclusive; (0, 0, 0, 0) for an empty mask."""
        n = len(masks)
        if n == 0:
            return torch.zeros(0, 4, dtype=torch.long)
        rows, cols = masks.any(2).cpu().numpy(), masks.any(1).cpu().numpy()
        has = rows.any(1)
        r0 = rows.argmax(1)
        r1 = rows.shape[1] - 1 - rows[:, ::-1].argmax(1)
        c0 = cols.argmax(1)
        c1 = cols.shape[1] - 1 - cols[:, ::-1].argmax(1)
        box = np.stack([self.first_col[c0], self.first_row[r0], self.end_col[c1], self.end_row[r1]], 1)
        return torch.from_numpy(np.where(has[:, None], box, 0).astype(np.int64))
