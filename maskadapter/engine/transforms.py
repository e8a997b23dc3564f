"""All resizing, padding, normalisation, coordinate checks and coordinate mapping of the project.

Conventions: images are HWC uint8 RGB numpy arrays; masks are (N, H, W) bool; points
are XY pixel coordinates in the original image (x to the right, y down, origin at the
top-left pixel's corner); boxes of masks are XYXY pixels with x2/y2 exclusive (one past
the last pixel, ``mask_boxes``), except where sam2's inclusive convention is needed to
match its decisions (``inclusive_boxes``). ``WorkingFrame`` maps masks, areas and boxes
of a working frame back to the original image.

SAM-2 does its own resizing to 1024 inside ``SAM2ImagePredictor``; the CLIP side
uses ``ImageTransform``: resize so the short side is ``short_side`` and the long side
at most ``max_size`` (detectron2's ResizeShortestEdge, the published evaluation
setting), normalise with CLIP's mean/std, zero-pad bottom/right to a multiple of 32.
"""

from __future__ import annotations

import math
import numbers
import reprlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from maskadapter.errors import InputError

CLIP_PIXEL_MEAN = (122.7709383, 116.7460125, 104.09373615)
CLIP_PIXEL_STD = (68.5005327, 66.6321579, 70.32316305)
SIZE_DIVISOR = 32
MAX_POINTS = 64  # point prompts per request (SAM-2 takes any number; more is a mistake)
POINTS_FORMAT = "[x, y, label] triples (XY pixels of the original image; label 1 positive, 0 negative)"
BOX_FORMAT = "[x0, y0, x1, y1] (two opposite corners, XY pixels of the original image)"


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxtuple, _REPR.maxdict = 2, 4, 4, 2
_REPR.maxstring, _REPR.maxlong, _REPR.maxother = 24, 24, 24


def _show(value: object) -> str:
    """A short, safe rendering of any input for an error message."""
    try:
        return _REPR.repr(value)
    except (ValueError, RecursionError):  # ints beyond the int-to-text limit, deep nesting
        return f"an object of type {type(value).__name__}"


def _number(value: object, what: str) -> float:
    """``value`` as a finite float; booleans, text, None and containers are refused."""
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Real):
        raise InputError(f"{what} must be a number, got {_show(value)}")
    try:
        number = float(value)
    except (OverflowError, ValueError, TypeError):  # e.g. an int beyond the float range
        raise InputError(f"{what} must be a finite number, got {_show(value)}") from None
    if not math.isfinite(number):
        raise InputError(f"{what} must be a finite number, got {number}")
    return number


def point_list(points: object) -> list[list[float]]:
    """Validate the form of ``[[x, y, label], ...]`` without an image: a list (or tuple,
    or (P, 3) array) of at most ``MAX_POINTS`` triples of finite numbers, XY pixels of
    the original image, label 1 (positive) or 0 (negative).

    Booleans are refused everywhere (``true`` is not a label: write 1). An empty list
    is returned as is; ``check_points`` decides whether points are required. Returns
    ``[[x, y, label], ...]`` with float x, y and int label.
    """
    if isinstance(points, np.ndarray):
        if points.size == 0:
            return []
        if points.ndim != 2 or points.shape[1] != 3:
            raise InputError(f"points must be [x, y, label] triples, got an array of shape {points.shape}")
        points = points.tolist()
    if not isinstance(points, list | tuple):
        raise InputError(f"points must be a list of {POINTS_FORMAT}, got {_show(points)}")
    if len(points) > MAX_POINTS:
        raise InputError(f"too many points ({len(points)}): at most {MAX_POINTS}")
    out = []
    for i, point in enumerate(points, 1):
        if isinstance(point, np.ndarray):
            point = point.tolist()
        if not isinstance(point, list | tuple) or len(point) != 3:
            raise InputError(f"points must be [x, y, label] triples like [[120, 80, 1]]; point {i} is {_show(point)}")
        x = _number(point[0], f"x of point {i}")
        y = _number(point[1], f"y of point {i}")
        label = point[2]
        if isinstance(label, bool | np.bool_) or not isinstance(label, numbers.Real) or label not in (0, 1):
            raise InputError(f"the label of point {i} must be 1 (positive) or 0 (negative), got {_show(label)}")
        out.append([x, y, int(label)])
    return out


def check_point(x: object, y: object, image_hw: tuple[int, int], name: str = "the point") -> tuple[float, float]:
    """Validate one XY pixel position inside an image of size ``image_hw`` (H, W): finite
    numbers with 0 <= x <= W and 0 <= y <= H (the right and bottom edges included).
    ``name`` says which point, for the message. Returns (x, y) as floats."""
    h, w = image_hw
    fx, fy = _number(x, f"x of {name}"), _number(y, f"y of {name}")
    if not (0 <= fx <= w and 0 <= fy <= h):
        raise InputError(f"{name} ({fx:g}, {fy:g}) lies outside the {w}x{h} image (x from 0 to {w}, y from 0 to {h})")
    return fx, fy


def check_points(
    points: object, image_hw: tuple[int, int], require_positive: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Validate ``[[x, y, label], ...]`` (XY pixels of the original image, label 1
    positive, 0 negative; at most ``MAX_POINTS``) inside an image of size ``image_hw``.

    Returns (coords (P, 2) float32 XY pixels, labels (P,) int32). Unless
    ``require_positive`` is False (a box is given too), one point must be positive.
    """
    items = point_list(points)
    if not items:
        raise InputError(f"no points: give a non-empty list of {POINTS_FORMAT}")
    for i, (x, y, _) in enumerate(items, 1):
        check_point(x, y, image_hw, f"point {i} of {len(items)}")
    if require_positive and not any(label == 1 for _, _, label in items):
        raise InputError("add at least one positive point (label 1) on the object")
    arr = np.array(items, dtype=np.float64)
    return arr[:, :2].astype(np.float32), arr[:, 2].astype(np.int32)


def box_corners(box: object) -> list[float]:
    """Validate the form of a box without an image: four finite numbers, two opposite
    corners ``[x0, y0, x1, y1]`` in XY pixels in any order, at least 1 pixel wide and
    tall. Returns the XYXY box with x0 < x1, y0 < y1 as floats."""
    if isinstance(box, np.ndarray):
        box = box.tolist() if box.ndim == 1 else box
    if not isinstance(box, list | tuple) or len(box) != 4:
        raise InputError(f"a box must be four numbers {BOX_FORMAT}, got {_show(box)}")
    a = [_number(v, f"{name} of the box") for v, name in zip(box, ("x0", "y0", "x1", "y1"), strict=True)]
    (x0, x1), (y0, y1) = sorted((a[0], a[2])), sorted((a[1], a[3]))
    if not (x1 - x0 >= 1 and y1 - y0 >= 1):
        raise InputError(
            f"the box [{x0:g}, {y0:g}, {x1:g}, {y1:g}] is {x1 - x0:g}x{y1 - y0:g} pixels: "
            "it must be at least 1 pixel wide and 1 pixel tall"
        )
    return [x0, y0, x1, y1]


def box_in_image(box: object, image_hw: tuple[int, int]) -> list[float]:
    """``box_corners`` plus the image: the box must lie inside the (H, W) image
    (edges included); a box reaching outside is refused, not clipped."""
    x0, y0, x1, y1 = box_corners(box)
    h, w = image_hw
    if x0 < 0 or y0 < 0 or x1 > w or y1 > h:
        raise InputError(
            f"the box [{x0:g}, {y0:g}, {x1:g}, {y1:g}] must lie inside the {w}x{h} image "
            f"(x from 0 to {w}, y from 0 to {h})"
        )
    return [x0, y0, x1, y1]


def check_box(box: object, image_hw: tuple[int, int]) -> np.ndarray | None:
    """Validate an XYXY pixel box (corners in any order) inside the (H, W) image; returns
    the normalised box (4,) float32 (x0 < x1, y0 < y1) or None when ``box`` is None."""
    if box is None:
        return None
    return np.array(box_in_image(box, image_hw), dtype=np.float32)


def check_prompts(
    points: object, box: object, image_hw: tuple[int, int]
) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    """Validate the prompts of one SAM-2 mask inside an (H, W) image: points as in
    ``check_points`` (at least one positive unless a box is given) and an optional box
    as in ``check_box``; a box alone (points None or empty) is a prompt too.
    Returns (coords (P, 2) float32, labels (P,) int32, box (4,) float32), None where absent."""
    box_arr = check_box(box, image_hw)
    points = [] if points is None else points
    if box_arr is not None and isinstance(points, Sequence | np.ndarray) and len(points) == 0:
        return None, None, box_arr
    coords, labels = check_points(points, image_hw, require_positive=box_arr is None)
    return coords, labels, box_arr


def mask_boxes(masks: torch.Tensor) -> torch.Tensor:
    """(N, h, w) bool masks -> (N, 4) int64 XYXY boxes in the masks' pixels, x2/y2
    exclusive (one past the last pixel), on the masks' device; (0, 0, 0, 0) for an
    empty mask."""
    n, h, w = masks.shape
    if n == 0:
        return torch.zeros(0, 4, dtype=torch.long, device=masks.device)
    rows, cols = masks.any(2), masks.any(1)  # (N, h), (N, w)
    ys = torch.arange(h, device=masks.device)
    xs = torch.arange(w, device=masks.device)
    y0 = torch.where(rows, ys, h).amin(1)
    y1 = torch.where(rows, ys + 1, 0).amax(1)
    x0 = torch.where(cols, xs, w).amin(1)
    x1 = torch.where(cols, xs + 1, 0).amax(1)
    box = torch.stack([x0, y0, x1, y1], dim=1)
    return torch.where((x1 > x0)[:, None], box, torch.zeros_like(box))


def inclusive_boxes(boxes: torch.Tensor) -> torch.Tensor:
    """(N, 4) XYXY boxes with x2/y2 exclusive -> sam2's convention, x2/y2 the last
    pixel (``x2 - x1`` is sam2's width); (0, 0, 0, 0) stays (an empty mask)."""
    empty = (boxes == 0).all(1, keepdim=True)
    return torch.where(empty, boxes, boxes - boxes.new_tensor([0, 0, 1, 1]))


@dataclass(frozen=True)
class ImageTransform:
    """Maps an image and its masks to the CLIP input frame and masks back."""

    short_side: int = 800
    max_size: int = 1333
    divisor: int = SIZE_DIVISOR

    def resized_hw(self, hw: tuple[int, int]) -> tuple[int, int]:
        """(h, w) after resizing, before padding (detectron2 ResizeShortestEdge rounding),
        each side at least 1 pixel."""
        h, w = hw
        scale = self.short_side / min(h, w)
        if max(h, w) * scale > self.max_size:
            scale = self.max_size / max(h, w)
        # never below 1 pixel: a very elongated image scaled by its long side
        return max(1, int(h * scale + 0.5)), max(1, int(w * scale + 0.5))

    def padded_hw(self, hw: tuple[int, int]) -> tuple[int, int]:
        rh, rw = self.resized_hw(hw)
        d = self.divisor
        return -(-rh // d) * d, -(-rw // d) * d

    def image_to_tensor(self, image: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
        """(H, W, 3) uint8 RGB -> (1, 3, Hp, Wp) float32, CLIP-normalised, zero-padded."""
        rh, rw = self.resized_hw(image.shape[:2])
        resized = np.array(Image.fromarray(image).resize((rw, rh), Image.BILINEAR))  # writable, for from_numpy
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
        """(N, h, w) bool masks -> (1, N, Hp, Wp) float32 of exact 0s and 1s, resized
        like the image and zero-padded. ``image_hw`` is the original image's size when
        the masks are in a working frame of it (default: the masks' size).

        Masks enter the adapter binary (the adapter resizes them itself). A CLIP-frame
        pixel is set when about half of it or more is covered: the mask is resized with
        antialiased bilinear filtering (a coverage average over the pixel's footprint when
        shrinking, plain bilinear when enlarging) and thresholded at 0.5. Unlike nearest-neighbour sampling, which
        reads one mask pixel per CLIP pixel and so drops thin lines and small blobs that
        fall between the samples when the CLIP frame is the smaller one, this judges
        every mask pixel. A non-empty mask that covers less than half of every CLIP
        pixel it touches (smaller than a CLIP pixel, or a thin line when shrinking)
        would vanish: it keeps every CLIP pixel it touches instead (max pooling), so a
        non-empty mask never becomes empty. An empty mask stays empty.
        """
        m = torch.as_tensor(masks, device=device).to(torch.float32)
        if m.ndim != 3:
            raise InputError(f"masks must be (N, H, W), got shape {tuple(m.shape)}")
        image_hw = image_hw or tuple(m.shape[-2:])
        rh, rw = self.resized_hw(image_hw)
        ph, pw = self.padded_hw(image_hw)
        if m.shape[0] == 0:
            return m.new_zeros(1, 0, ph, pw)
        m = (m > 0.5).to(torch.float32)[None]  # (1, N, h, w) binary
        # antialiasing only changes a shrinking resize (enlarging, it is plain bilinear up to rounding)
        shrinks = rh < m.shape[-2] or rw < m.shape[-1]
        coverage = F.interpolate(m, size=(rh, rw), mode="bilinear", align_corners=False, antialias=shrinks)
        out = m.new_zeros(1, m.shape[1], ph, pw)  # (1, N, Hp, Wp), padding stays 0
        inside = out[..., :rh, :rw]
        inside.copy_(coverage >= 0.5)
        lost = (coverage.flatten(2).amax(-1) < 0.5) & (m.flatten(2).amax(-1) > 0)  # (1, N)
        if bool(lost.any()):
            touched = F.adaptive_max_pool2d(m[:, lost[0]], (rh, rw))  # (1, n_lost, rh, rw)
            inside[:, lost[0]] = (touched > 0).to(torch.float32)
        return out


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

    def shrink(self, image: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 RGB image at the original size -> (h, w, 3) at ``work_hw`` (box
        filter: each pixel the mean of those it covers); the image itself when the frame
        is the original size."""
        if self.identity:
            return image
        return np.asarray(Image.fromarray(image).resize((self.work_hw[1], self.work_hw[0]), Image.BOX))

    def to_original(self, planes: np.ndarray | torch.Tensor) -> np.ndarray:
        """(..., h, w) working-frame array (mask or label map) -> (..., H, W) numpy."""
        if isinstance(planes, torch.Tensor):
            planes = planes.cpu().numpy()
        if self.identity:
            return planes
        return planes[..., self.rows[:, None], self.cols[None, :]]

    def largest_first(self, masks: torch.Tensor) -> torch.Tensor:
        """(N,) long order of (N, h, w) bool working masks, largest first in original
        pixels (ties in their order)."""
        return torch.sort(self.areas(masks), descending=True, stable=True).indices

    def areas(self, masks: torch.Tensor, chunk: int = 32) -> torch.Tensor:
        """(N, h, w) bool working masks -> (N,) int64 pixel counts at the original size,
        on the masks' device."""
        if self.identity:
            return masks.flatten(1).sum(1)
        rc = torch.as_tensor(self.row_count, device=masks.device, dtype=torch.float64)
        cc = torch.as_tensor(self.col_count, device=masks.device, dtype=torch.float64)
        out = [
            torch.einsum("nhw,h,w->n", masks[s : s + chunk].to(torch.float64), rc, cc)
            for s in range(0, len(masks), chunk)
        ]
        return torch.cat(out).round().long() if out else torch.zeros(0, dtype=torch.long, device=masks.device)

    def to_original_boxes(self, boxes: torch.Tensor) -> torch.Tensor:
        """(N, 4) XYXY working-frame boxes -> (N, 4) int64 XYXY original pixels on the
        CPU, both with x2/y2 exclusive: the original pixels that show the box's
        working pixels; (0, 0, 0, 0) stays (an empty mask)."""
        b = boxes.cpu().numpy().astype(np.int64)
        if len(b) == 0:
            return torch.zeros(0, 4, dtype=torch.long)
        empty = (b == 0).all(1, keepdims=True)
        last = np.maximum(b[:, 2:] - 1, 0)  # the last working column / row
        x2, y2 = self.end_col[last[:, 0]], self.end_row[last[:, 1]]
        out = np.stack([self.first_col[b[:, 0]], self.first_row[b[:, 1]], x2, y2], 1)
        return torch.from_numpy(np.where(empty, 0, out).astype(np.int64))

    def boxes(self, masks: torch.Tensor) -> torch.Tensor:
        """(N, h, w) bool working masks -> (N, 4) int64 XYXY original pixels, x2/y2
        exclusive, on the CPU; (0, 0, 0, 0) for an empty mask."""
        return self.to_original_boxes(mask_boxes(masks))
