"""SAM-2's 256x256 low-resolution mask logits and a frame of (H, W) pixels.

The masks SAM-2 returns are its low-res logits upsampled (bilinear, align_corners
False) to a frame and thresholded at 0. Here: that upsampling a chunk at a time
(``upsampled_chunks``), what sam2 computes on the upsampled masks (``stability_scores``,
``exact_boxes``), sam2's removal of small holes and specks on the low-res masks
(``remove_small_regions_``), and ``FrameBounds``: bounds of pixel counts and boxes in the
frame, computed from the low-res logits without upsampling them.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from maskadapter.engine.transforms import inclusive_boxes, mask_boxes

LOW_RES = 256  # side of SAM-2's low-resolution mask logits
SAMPLE_MARGIN = 1e-4  # a sampled upsampled value counts as positive above this (float rounding)
FILL_CHUNK = 256  # masks labelled per OpenCV call in remove_small_regions_ (bounds the label image)


def stability_scores(logits: torch.Tensor, offset: float, threshold: float = 0.0) -> torch.Tensor:
    """(N, h, w) mask logits -> (N,) IoU of the masks thresholded at +-offset
    (NaN for a mask empty at the lower threshold, as in sam2)."""
    inner = (logits > threshold + offset).flatten(1).sum(1, dtype=torch.int32)
    outer = (logits > threshold - offset).flatten(1).sum(1, dtype=torch.int32)
    return inner / outer


def upsampled_chunks(
    logits: torch.Tensor, hw: tuple[int, int], chunk: int = 32
) -> Iterator[tuple[slice, torch.Tensor]]:
    """(N, 256, 256) low-res logits -> (rows, (n, h, w) float32 logits at ``hw``) a chunk at
    a time (bilinear, like sam2's predictor), so that only one chunk exists at once."""
    for start in range(0, len(logits), chunk):
        part = slice(start, start + chunk)
        yield part, F.interpolate(logits[part, None].float(), size=hw, mode="bilinear", align_corners=False)[:, 0]


def exact_boxes(logits: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """(N, 256, 256) low-res logits -> (N, 4) float32 XYXY boxes of the masks upsampled to
    ``hw``, x2/y2 inclusive (the last pixel): sam2 runs NMS on such boxes, and NMS's IoU
    depends on the convention, so the generator's box bounds use it too."""
    boxes = [inclusive_boxes(mask_boxes(up > 0)) for _, up in upsampled_chunks(logits, hw)]
    return torch.cat(boxes).float() if boxes else logits.new_zeros(0, 4, dtype=torch.float32)


def small_regions(masks: np.ndarray, max_area: int) -> np.ndarray:
    """(n, h, w) bool -> (n, h, w) bool: pixels of the 8-connected components of
    ``masks`` (each mask on its own) with at most ``max_area`` pixels.

    The masks are labelled together, in one OpenCV call: stacked into one image with
    an empty row below each, so that no component reaches from one mask into the next.
    Component areas come from one count over the label image (OpenCV's per-component
    statistics cost several times the labelling itself), and the small ones are looked
    up in one pass.
    """
    n, h, w = masks.shape
    canvas = np.zeros((n, h + 1, w), dtype=np.uint8)
    canvas[:, :h] = masks
    _, labels = cv2.connectedComponentsWithAlgorithm(canvas.reshape(n * (h + 1), w), 8, cv2.CV_32S, cv2.CCL_SPAGHETTI)
    small = (torch.bincount(torch.from_numpy(labels).view(-1)) <= max_area).numpy()  # int32 counts: no copy
    small[0] = False  # label 0: everything outside the components (and the empty rows)
    return np.take(small, labels).reshape(n, h + 1, w)[:, :h]


def remove_small_regions_(logits: torch.Tensor, max_area: int, threshold: float = 0.0) -> None:
    """Fill background holes and remove foreground specks of at most ``max_area``
    pixels (8-connected) in (N, h, w) mask logits, in place, as sam2's predictor does
    when its compiled extension is present: holes and specks are both found on the
    masks as given, holes set to ``threshold + 10``, specks to ``threshold - 10``.

    Labelling runs on the host, ``FILL_CHUNK`` masks per OpenCV call; holes and specks
    are disjoint and found independently, so the labelling jobs run on two threads
    (OpenCV and NumPy release the GIL) while the fills happen here, in order. On a GPU
    the masks cross to the host once, and each job's regions back once.
    """
    masks = (logits > threshold).cpu().numpy()  # (N, h, w) bool

    def regions(job: tuple[int, bool]) -> np.ndarray:
        start, specks = job
        part = masks[start : start + FILL_CHUNK]
        return small_regions(part if specks else ~part, max_area)

    jobs = [(start, specks) for start in range(0, len(masks), FILL_CHUNK) for specks in (False, True)]
    with ThreadPoolExecutor(max_workers=2) as pool:
        for (start, specks), pixels in zip(jobs, pool.map(regions, jobs), strict=True):
            value = threshold - 10.0 if specks else threshold + 10.0
            logits[start : start + len(pixels)].masked_fill_(torch.from_numpy(pixels).to(logits.device), value)


def _masked_max(x: torch.Tensor, keep: torch.Tensor | None, dim: int) -> torch.Tensor:
    """Max of (..., 256, 256) ``x`` over ``dim`` counting only the indices where ``keep``
    (every index when None)."""
    if keep is not None:
        shape = [1] * x.dim()
        shape[dim] = -1
        x = x.masked_fill(~keep.view(shape), float("-inf"))
    return x.amax(dim)


def _over_2x2(cells: torch.Tensor, combine) -> torch.Tensor:
    """(..., 256, 256) bool -> each cell combined with its right, lower and lower-right
    neighbours (edge cells with themselves)."""
    across = cells.clone()
    combine(cells[..., :-1], cells[..., 1:], out=across[..., :-1])
    both = across.clone()
    combine(across[..., :-1, :], across[..., 1:, :], out=both[..., :-1, :])
    return both


def _first_last(sources: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """First and last frame index that reads each low-res index (-1 where none)."""
    idx = torch.arange(len(sources), device=sources.device)
    none = torch.full((LOW_RES,), -1, device=sources.device)
    first = none.scatter_reduce(0, sources, idx, "amin", include_self=False)
    return first, none.scatter_reduce(0, sources, idx, "amax", include_self=False)


class FrameBounds:
    """How SAM-2's 256x256 low-res logits map onto a frame of (H, W) pixels under
    bilinear upsampling (align_corners False), and bounds that need no upsampling.

    Frame row y reads low-res rows ``r = y0[y]`` and ``min(r + 1, 255)`` (likewise for
    columns), so an upsampled pixel is above a threshold if all four source values
    are, and only if one of them is. Counting frame pixels per source cell gives lower
    and upper bounds of every pixel count (stability score) and of every box.

    Every method takes logits of shape (..., 256, 256) (any leading dimensions, any
    strides) and keeps the leading dimensions. Boxes are XYXY frame pixels with x2/y2
    inclusive (the last pixel), as ``exact_boxes``: NMS compares them with sam2's.
    """

    def __init__(self, hw: tuple[int, int], device: torch.device) -> None:
        self.hw = hw
        self.rows = self._sources(hw[0], device)  # (H,) low-res row of each frame row
        self.cols = self._sources(hw[1], device)
        self.row_count = torch.bincount(self.rows, minlength=LOW_RES)  # frame rows per low-res row
        self.col_count = torch.bincount(self.cols, minlength=LOW_RES)
        self.weight = self.row_count[:, None] * self.col_count[None, :]  # (256, 256) frame pixels per cell
        self.first_row, self.last_row = _first_last(self.rows)
        self.first_col, self.last_col = _first_last(self.cols)
        self.row_lambda = self._first_lambda(hw[0], self.first_row)  # (256,) weight of the next row
        self.col_lambda = self._first_lambda(hw[1], self.first_col)
        self.has_row, self.has_col = self.row_count > 0, self.col_count > 0
        # source rows / columns read by some frame pixel (a cell reads itself and the next)
        self.read_rows = self.has_row | torch.cat([self.has_row[:1] & False, self.has_row[:-1]])
        self.read_cols = self.has_col | torch.cat([self.has_col[:1] & False, self.has_col[:-1]])
        # decided once, so that the per-batch bounds need no host synchronisation
        self._row_keep = None if bool(self.read_rows.all()) else self.read_rows
        self._col_keep = None if bool(self.read_cols.all()) else self.read_cols
        self._all_cells = bool(self.has_row.all() and self.has_col.all())

    @staticmethod
    def _first_lambda(size: int, first: torch.Tensor) -> torch.Tensor:
        # PyTorch's float32 source coordinate of each cell's first frame pixel, minus the cell
        src = ((first.clamp(min=0).to(torch.float32) + 0.5) * (LOW_RES / size) - 0.5).clamp(min=0)
        return src - src.floor()

    @staticmethod
    def _sources(size: int, device: torch.device) -> torch.Tensor:
        # PyTorch's bilinear source index: max((i + 0.5) * in / out - 0.5, 0), floored
        src = ((torch.arange(size, device=device, dtype=torch.float64) + 0.5) * (LOW_RES / size) - 0.5).clamp(min=0)
        return src.floor().long().clamp(max=LOW_RES - 1)

    @staticmethod
    def cells_above(logits: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(..., 256, 256) logits -> (all, any), (..., 256, 256) bool: whether all / any
        of each cell's 2x2 sources (the cell, its right, lower and lower-right
        neighbours; the last row and column read themselves, as the bilinear kernel
        clamps) are above ``threshold``: then every / some upsampled pixel of the cell is."""
        above = logits > threshold
        return _over_2x2(above, torch.logical_and), _over_2x2(above, torch.logical_or)

    def count(self, cells: torch.Tensor) -> torch.Tensor:
        """(..., 256, 256) bool cells -> (...,) int64 frame pixels in them."""
        return (cells.to(torch.int32) * self.weight).sum((-2, -1))

    def _extent(self, rows: torch.Tensor, cols: torch.Tensor, far_row, far_col) -> torch.Tensor:
        """(..., 4) float XYXY frame box from (..., 256) cell rows / columns that hold
        mask pixels: from the first pixel of the first cell to ``far_*`` of the last
        cell ((0, 0, 0, 0) when none)."""
        r = torch.arange(LOW_RES, device=rows.device)
        r0 = torch.where(rows, r, LOW_RES - 1).amin(-1)
        r1 = torch.where(rows, r, 0).amax(-1)
        c0 = torch.where(cols, r, LOW_RES - 1).amin(-1)
        c1 = torch.where(cols, r, 0).amax(-1)
        box = torch.stack([self.first_col[c0], self.first_row[r0], far_col[c1], far_row[r1]], -1).float()
        return torch.where(rows.any(-1, keepdim=True), box, torch.zeros_like(box))

    def outer_box(self, logits: torch.Tensor) -> torch.Tensor:
        """(..., 256, 256) logits -> (..., 4) float XYXY frame box (x2/y2 inclusive)
        that contains every upsampled pixel above 0: the pixels of cells one of whose
        2x2 sources is positive."""
        # a cell row can hold positive pixels if a source row it reads is positive in
        # a source column that some cell with pixels reads (likewise for columns)
        row_max = _masked_max(logits, self._col_keep, -1)  # (..., 256)
        col_max = _masked_max(logits, self._row_keep, -2)
        rows = (torch.maximum(row_max, torch.cat([row_max[..., 1:], row_max[..., -1:]], -1)) > 0) & self.has_row
        cols = (torch.maximum(col_max, torch.cat([col_max[..., 1:], col_max[..., -1:]], -1)) > 0) & self.has_col
        return self._extent(rows, cols, self.last_row, self.last_col)

    def inner_box(self, logits: torch.Tensor) -> torch.Tensor:
        """(..., 256, 256) logits -> (..., 4) float XYXY box of pixels known to be in the
        mask: each cell's first frame pixel whose upsampled value (the bilinear formula,
        equal to PyTorch's up to float rounding) is clearly positive. It lies inside the
        exact box; (0, 0, 0, 0) when no such pixel is known."""
        x = logits
        # values at the first pixels of the cells: across columns, then down rows; the
        # last row and column read themselves, so they need one interpolation or none
        across = torch.lerp(x[..., :-1], x[..., 1:], self.col_lambda[:-1])  # (..., 256, 255)
        inside = torch.lerp(across[..., :-1, :], across[..., 1:, :], self.row_lambda[:-1, None])  # (..., 255, 255)
        last_row = across[..., -1, :]  # (..., 255): row 255, columns 0..254
        last_col = torch.lerp(x[..., :-1, -1], x[..., 1:, -1], self.row_lambda[:-1])  # (..., 255): column 255
        corner = x[..., -1, -1:].clone()  # (..., 1)
        if not self._all_cells:  # cells without frame pixels know nothing
            gone = ~(self.has_row[:, None] & self.has_col[None, :])
            for part, where in ((inside, gone[:-1, :-1]), (last_row, gone[-1, :-1]), (last_col, gone[:-1, -1])):
                part.masked_fill_(where, -torch.inf)
            corner.masked_fill_(gone[-1, -1:], -torch.inf)
        row_max = torch.cat(
            [torch.maximum(inside.amax(-1), last_col), torch.maximum(last_row.amax(-1, True), corner)], -1
        )
        col_max = torch.cat(
            [torch.maximum(inside.amax(-2), last_row), torch.maximum(last_col.amax(-1, True), corner)], -1
        )
        return self._extent(row_max > SAMPLE_MARGIN, col_max > SAMPLE_MARGIN, self.first_row, self.first_col)
