"""SAM-2 "segment everything" without sam2's per-mask overheads.

``MaskGenerator`` gives the masks of sam2's ``SAM2AutomaticMaskGenerator`` (single
crop) with the same settings, but keeps the work on tensors:

- a grid of point prompts goes through SAM-2's prompt encoder and mask decoder in
  batches (on a CPU a few prompts per decoder call, so that its largest tensors stay
  in reused memory and in cache); the image embedding is computed once (and can come
  from a cache);
- every ``COMPACT_EVERY`` batches the candidates are decided together, with a few
  host synchronisations for the group: the predicted-IoU filter first (it needs no
  mask), then small holes and specks removed (``min_mask_region_area``) from the
  survivors only, labelled on the host in batches, then the stability filter and the
  boxes for NMS, both bounded from the 256x256 low-resolution logits;
- duplicates are removed with ``torchvision.ops.nms`` on those bounded boxes, made
  exact (in one call) only for the pairs whose decision the bounds leave open;
- only the masks that survive are upsampled, to the requested frame, at the end.

Candidates are kept as float16 low-res logits (half the memory; bf16 or fp16 as the
decoder gives them under autocast); bounds, the candidates upsampled to settle a
decision and the kept masks all come from that copy, in float32 arithmetic.

sam2 instead upsamples every candidate to the original size in float32, computes
run-length encodings and deep-copies them per batch. Its per-crop "box near crop
edge" filter never fires with a single crop (the crop is the whole image), so there
is nothing to do for it here.

Coordinates: point prompts are XY pixels of the original image; boxes are XYXY.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torchvision.ops import nms

from maskadapter.engine.predictor import CachingPredictor

Progress = Callable[[str], None]
# candidates are gathered, then filtered, every this many point batches: one host
# synchronisation per group instead of one per batch, and memory stays bounded
COMPACT_EVERY = 8
LOW_RES = 256  # side of SAM-2's low-resolution mask logits
SAMPLE_MARGIN = 1e-4  # a sampled upsampled value counts as positive above this (float rounding)
FILL_CHUNK = 256  # masks labelled per OpenCV call in remove_small_regions_ (bounds the label image)
BOUNDS_CHUNK = 192  # candidates whose bounds are computed at once (bounds the float32 temporaries)
NMS_ROWS = 512  # rows of the pairwise IoU-bound matrices computed at once
NMS_ROUNDS = 6  # rounds of boxes made exact for NMS (the last takes every pair that matters)
# prompts per mask-decoder call on a CPU: the decoder's largest tensor, (n, 32, 256, 256)
# float32, then stays within the allocator's reused heap blocks (maskadapter.memory) and
# the CPU's cache; a GPU takes a whole point batch at once
CPU_DECODER_PROMPTS = 4


def point_grid(points_per_side: int) -> np.ndarray:
    """(n*n, 2) float64 XY points in [0, 1], centred in n x n cells, row by row."""
    side = (np.arange(points_per_side, dtype=np.float64) + 0.5) / points_per_side
    xs, ys = np.meshgrid(side, side, indexing="xy")
    return np.stack([xs.reshape(-1), ys.reshape(-1)], axis=1)


def stability_scores(logits: torch.Tensor, offset: float, threshold: float = 0.0) -> torch.Tensor:
    """(N, h, w) mask logits -> (N,) IoU of the masks thresholded at +-offset
    (NaN for a mask empty at the lower threshold, as in sam2)."""
    inner = (logits > threshold + offset).flatten(1).sum(1, dtype=torch.int32)
    outer = (logits > threshold - offset).flatten(1).sum(1, dtype=torch.int32)
    return inner / outer


def mask_boxes(masks: torch.Tensor) -> torch.Tensor:
    """(N, h, w) bool -> (N, 4) int64 XYXY boxes with inclusive max pixel indices
    (sam2's convention); (0, 0, 0, 0) for an empty mask."""
    n, h, w = masks.shape
    if n == 0:
        return torch.zeros(0, 4, dtype=torch.long, device=masks.device)
    rows, cols = masks.any(2), masks.any(1)  # (N, h), (N, w)
    ys = torch.arange(h, device=masks.device)
    xs = torch.arange(w, device=masks.device)
    y0 = torch.where(rows, ys, h).amin(1)
    y1 = torch.where(rows, ys, -1).amax(1)
    x0 = torch.where(cols, xs, w).amin(1)
    x1 = torch.where(cols, xs, -1).amax(1)
    box = torch.stack([x0, y0, x1, y1], dim=1)
    return torch.where((x1 >= x0)[:, None], box, torch.zeros_like(box))


def small_regions(masks: np.ndarray, max_area: int) -> np.ndarray:
    """(n, h, w) bool -> (n, h, w) bool: pixels of the 8-connected components of
    ``masks`` (each mask on its own) with at most ``max_area`` pixels.

    The masks are labelled together, in one OpenCV call: stacked into one image with
    an empty row below each, so that no component reaches from one mask into the next.
    """
    n, h, w = masks.shape
    canvas = np.zeros((n, h + 1, w), dtype=np.uint8)
    canvas[:, :h] = masks
    _, labels, stats, _ = cv2.connectedComponentsWithStatsWithAlgorithm(
        canvas.reshape(n * (h + 1), w), 8, cv2.CV_32S, cv2.CCL_BOLELLI
    )
    small = stats[:, cv2.CC_STAT_AREA] <= max_area
    small[0] = False  # label 0: everything outside the components (and the empty rows)
    return small[labels].reshape(n, h + 1, w)[:, :h]


def remove_small_regions_(logits: torch.Tensor, max_area: int, threshold: float = 0.0) -> None:
    """Fill background holes and remove foreground specks of at most ``max_area``
    pixels (8-connected) in (N, h, w) mask logits, in place, as sam2's predictor does
    when its compiled extension is present: holes and specks are both found on the
    masks as given, holes set to ``threshold + 10``, specks to ``threshold - 10``.

    Labelling runs on the host, ``FILL_CHUNK`` masks per OpenCV call; on a GPU the
    masks cross to the host and back once per call of this function, not per mask.
    """
    masks = (logits > threshold).cpu().numpy()  # (N, h, w) bool
    holes, specks = np.empty_like(masks), np.empty_like(masks)
    for start in range(0, len(masks), FILL_CHUNK):
        part = slice(start, start + FILL_CHUNK)
        holes[part] = small_regions(~masks[part], max_area)
        specks[part] = small_regions(masks[part], max_area)
    logits.masked_fill_(torch.from_numpy(holes).to(logits.device), threshold + 10.0)
    logits.masked_fill_(torch.from_numpy(specks).to(logits.device), threshold - 10.0)


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
    strides) and keeps the leading dimensions.
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
        """(..., 256, 256) logits -> (..., 4) float XYXY frame box (inclusive max pixel)
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


def _box_area(boxes: torch.Tensor) -> torch.Tensor:
    return (boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0)


def _intersection(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    return wh[..., 0] * wh[..., 1]


def iou_bounds(inner: torch.Tensor, outer: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Lower and upper bounds of the IoU (as torchvision computes it) between boxes
    ``rows`` and every box, each known to lie between its inner and outer box.
    (N, 4) XYXY bounds, (R,) long indices -> (R, N) lower, (R, N) upper bounds."""
    i_lo = _intersection(inner[rows], inner)  # (R, N)
    i_hi = _intersection(outer[rows], outer)
    area_lo, area_hi = _box_area(inner), _box_area(outer)
    lo = i_lo / (area_hi[rows, None] + area_hi[None] - i_lo).clamp(min=1e-9)
    union_lo = area_lo[rows, None] + area_lo[None] - i_hi
    hi = torch.where(union_lo > 0, (i_hi / union_lo.clamp(min=1e-9)).clamp(max=1), torch.ones_like(lo))
    return lo, hi


def _pair_bounds(inner: torch.Tensor, outer: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, N) bool ``surely`` and ``maybe``: whether box h's IoU with box i surely / may
    exceed ``threshold`` (False for a box and itself); ``NMS_ROWS`` rows at a time."""
    n = len(inner)
    surely = torch.zeros(n, n, dtype=torch.bool, device=inner.device)
    maybe = torch.zeros_like(surely)
    everyone = torch.arange(n, device=inner.device)
    for start in range(0, n, NMS_ROWS):
        rows = everyone[start : start + NMS_ROWS]
        lo, hi = iou_bounds(inner, outer, rows)  # (R, N)
        surely[rows], maybe[rows] = lo > threshold, hi > threshold
    surely[everyone, everyone] = maybe[everyone, everyone] = False
    return surely, maybe


def _settled(surely: torch.Tensor, maybe: torch.Tensor, first: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Boxes surely kept and surely suppressed by greedy NMS, whatever the exact boxes
    within bounds: kept when no box that may come first may suppress it (unless that
    box is surely suppressed), suppressed when a surely kept box that may come first
    surely does. A fixed point: one host synchronisation per round, a few rounds."""
    suppressed = torch.zeros(len(first), dtype=torch.bool, device=first.device)
    while True:  # ``suppressed`` only grows, so this ends
        kept = ~(maybe & first & ~suppressed[:, None]).any(0)
        grown = (surely & first & kept[:, None]).any(0)
        if torch.equal(grown, suppressed):
            return kept, suppressed
        suppressed = grown


def boxes_for_nms(
    inner: torch.Tensor,
    outer: torch.Tensor,
    scores: torch.Tensor,
    threshold: float,
    exact_box: Callable[[torch.Tensor], torch.Tensor],
) -> tuple[torch.Tensor, int]:
    """Boxes on which NMS decides as it would on the exact boxes, though most boxes are
    only known within [inner, outer].

    Greedy NMS (best score first; a box goes when its IoU with a kept box exceeds
    ``threshold``) compares a box only with the kept boxes before it. A pair whose
    IoU bounds straddle the threshold is undecided; it matters unless one of its
    boxes is surely suppressed (``_settled``). Each round makes exact
    (``exact_box(indices)`` -> (n, 4), one call) the boxes of the undecided pairs
    whose first box is surely kept, which settles more boxes; the last of
    ``NMS_ROUNDS`` rounds takes every undecided pair that matters. So every decision
    NMS takes on the boxes returned is the one it takes on the exact boxes, with a
    few host synchronisations per round and none per box.

    Returns (boxes: exact where refined, outer elsewhere; number of boxes refined).
    """
    inner, outer = inner.clone(), outer.clone()
    exact = torch.zeros(len(scores), dtype=torch.bool, device=scores.device)
    first = scores[:, None] >= scores[None, :]  # [h, i]: h may come before i (ties either way)
    for round_ in range(NMS_ROUNDS):
        surely, maybe = _pair_bounds(inner, outer, threshold)
        kept, suppressed = _settled(surely, maybe, first)
        live = ~suppressed
        undecided = maybe & ~surely & first & live[:, None] & live[None, :]
        pick = undecided & kept[:, None] if round_ < NMS_ROUNDS - 1 else undecided
        if not bool(pick.any()):
            pick = undecided  # nothing settles from kept boxes: take what is left
        todo = ((pick.any(0) | pick.any(1)) & ~exact).nonzero()[:, 0]
        if not len(todo):
            break
        boxes = exact_box(todo).to(outer.dtype)
        inner[todo], outer[todo], exact[todo] = boxes, boxes, True
    return outer, int(exact.sum())


@dataclass
class Candidates:
    """Masks of one image as low-res logits plus their scores (all tensors on one device).

    logits: (N, 256, 256) float16 low-resolution mask logits (SAM-2's square frame);
    iou: (N,) predicted IoU; points: (N, 2) XY image pixels of the prompt; inner and
    outer: (N, 4) float XYXY bounds of the mask's box in the frame (equal once exact).
    """

    logits: torch.Tensor
    iou: torch.Tensor
    points: torch.Tensor
    inner: torch.Tensor
    outer: torch.Tensor

    def select(self, index: torch.Tensor) -> Candidates:
        return Candidates(*(t[index] for t in self._fields()))

    def _fields(self) -> tuple[torch.Tensor, ...]:
        return self.logits, self.iou, self.points, self.inner, self.outer

    def __len__(self) -> int:
        return int(self.iou.shape[0])


class _CandidatePool:
    """The candidates of one image while its point batches run.

    Low-res logits go straight from the decoder into one buffer (float16, or the
    decoder's own dtype under bf16 / fp16 autocast; one copy, which is also the
    conversion). Rows ``[done:size]`` are pending: ``settle`` decides them a group at a
    time, squeezing out the ones that fail in place, so the buffer holds the
    candidates that passed plus one group. It starts at two groups and doubles when
    more candidates pass.
    """

    def __init__(self, total: int, group: int, device: torch.device) -> None:
        self.capacity = max(1, min(total, 2 * group))
        self.device = device
        self.logits: torch.Tensor | None = None
        self.done = 0  # leading rows that passed
        self.size = 0  # rows written
        self.fields: list[list[torch.Tensor]] = [[], [], [], []]  # iou, points, inner, outer of passed rows
        self.pending: list[tuple[torch.Tensor, torch.Tensor]] = []  # (iou, points) of pending rows

    def add(self, logits: torch.Tensor, iou: torch.Tensor, points: torch.Tensor) -> None:
        """One batch: (b, m, 256, 256) logits, (b*m,) predicted IoU, (b*m, 2) prompt points."""
        n = logits.shape[0] * logits.shape[1]
        if self.logits is None:
            dtype = logits.dtype if logits.dtype in (torch.bfloat16, torch.float16) else torch.float16
            self.logits = torch.empty(self.capacity, LOW_RES, LOW_RES, dtype=dtype, device=self.device)
        if self.size + n > len(self.logits):
            grown = self.logits.new_empty(max(self.size + n, 2 * len(self.logits)), LOW_RES, LOW_RES)
            grown[: self.size] = self.logits[: self.size]
            self.logits = grown
        self.logits[self.size : self.size + n].view(logits.shape).copy_(logits)
        self.size += n
        self.pending.append((iou, points))

    def pending_fields(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(iou, points) of the pending rows, in row order."""
        iou, points = zip(*self.pending, strict=True)
        return torch.cat(iou), torch.cat(points)

    def squeeze(self, index: torch.Tensor) -> None:
        """Keep the pending rows ``index`` (ascending, relative to ``done``), in place."""
        n = len(index)
        if n < self.size - self.done:  # no copy when all stay
            self.logits[self.done : self.done + n] = self.logits[self.done + index]
        self.size = self.done + n

    def accept(self, iou, points, inner, outer) -> None:
        """The pending rows (after ``squeeze``) passed, with these fields."""
        for store, value in zip(self.fields, (iou, points, inner, outer), strict=True):
            store.append(value)
        self.done = self.size
        self.pending = []

    def result(self) -> Candidates:
        if not self.fields[0]:
            z = torch.zeros(0, 4, device=self.device)
            logits = torch.zeros(0, LOW_RES, LOW_RES, dtype=torch.float16, device=self.device)
            return Candidates(logits, z[:, 0], z[:, :2], z, z.clone())
        iou, points, inner, outer = (torch.cat(ts) for ts in self.fields)
        return Candidates(self.logits[: self.done], iou, points, inner, outer)


class MaskGenerator:
    """SAM-2 automatic masks, equal to sam2's ``SAM2AutomaticMaskGenerator`` (one crop).

    Args mirror sam2's. ``min_mask_region_area`` fills holes and removes specks of at
    most that many low-res pixels before scoring (sam2 does so only when its compiled
    extension is installed).

    Every decision (predicted IoU, stability score, NMS) is the one sam2 takes on masks
    upsampled to the frame, but it is taken on bounds computed from the low-res logits;
    only a candidate whose bounds straddle a threshold is upsampled to decide it.
    """

    def __init__(
        self,
        sam2_model: torch.nn.Module,
        points_per_side: int = 32,
        points_per_batch: int = 64,
        pred_iou_thresh: float = 0.8,
        stability_score_thresh: float = 0.95,
        stability_score_offset: float = 1.0,
        box_nms_thresh: float = 0.7,
        min_mask_region_area: int = 0,
        multimask_output: bool = True,
    ) -> None:
        self.model = sam2_model
        self.points_per_side = points_per_side
        self.points_per_batch = points_per_batch
        self.pred_iou_thresh = pred_iou_thresh
        self.stability_score_thresh = stability_score_thresh
        self.stability_score_offset = stability_score_offset
        self.box_nms_thresh = box_nms_thresh
        self.min_mask_region_area = min_mask_region_area
        self.multimask_output = multimask_output
        self.refined = 0  # candidates that had to be upsampled to take a decision

    @torch.inference_mode()
    def generate(self, image: np.ndarray, cache: dict | None = None) -> list[dict]:
        """Masks of an (H, W, 3) uint8 RGB image in sam2's record format.

        Each record: ``segmentation`` (H, W) bool, ``area`` int, ``bbox`` XYWH (sam2's
        convention: inclusive max pixel, so w = x_max - x_min), ``predicted_iou``,
        ``stability_score``, ``point_coords`` [[x, y]], ``crop_box`` XYWH of the image.
        """
        h, w = image.shape[:2]
        found = self.generate_masks(image, (h, w), cache)
        records = []
        for i in range(len(found.iou)):  # output records, one per kept mask (sam2's format)
            x0, y0, x1, y1 = (int(v) for v in found.boxes[i])
            records.append(
                {
                    "segmentation": found.masks[i].cpu().numpy(),
                    "area": int(found.areas[i]),
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "predicted_iou": float(found.iou[i]),
                    "point_coords": [[float(v) for v in found.points[i]]],
                    "stability_score": float(found.stability[i]),
                    "crop_box": [0, 0, w, h],
                }
            )
        return records

    def generate_masks(
        self,
        image: np.ndarray,
        frame_hw: tuple[int, int],
        cache: dict | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> GeneratedMasks:
        """The kept masks as bool tensors in a frame of ``frame_hw`` pixels covering the
        image (the image's own size for sam2's output, or a smaller working frame).

        Args:
            image: (H, W, 3) uint8 RGB.
            frame_hw: (h, w) of the output masks; decisions are exact in this frame.
            cache: an embedding cache for ``CachingPredictor`` (the image is encoded
                only if it is not there yet).
            progress: called with (batches done, batches) after each point batch.
        """
        with torch.inference_mode():
            kept = self.candidates(image, frame_hw, cache, progress)
        with torch.inference_mode(), torch.autocast(kept.logits.device.type, enabled=False):
            masks = torch.empty(len(kept), *frame_hw, dtype=torch.bool, device=kept.logits.device)
            stability = torch.empty(len(kept), device=kept.logits.device)
            for part, up in upsampled_chunks(kept.logits, frame_hw):  # one upsampling for both
                masks[part] = up > 0
                stability[part] = stability_scores(up, self.stability_score_offset)
            return GeneratedMasks(
                masks=masks,
                iou=kept.iou,
                stability=stability,
                points=kept.points,
                boxes=mask_boxes(masks),
                areas=masks.flatten(1).sum(1),
            )

    def candidates(
        self,
        image: np.ndarray,
        frame_hw: tuple[int, int],
        cache: dict | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> Candidates:
        """The candidates that pass the filters and NMS, as low-res logits (see
        ``generate_masks`` for the arguments)."""
        h, w = image.shape[:2]
        predictor = CachingPredictor(self.model, {} if cache is None else cache)
        predictor.set_image(image)
        device = predictor.device
        bounds = FrameBounds(frame_hw, device)
        points = torch.as_tensor(point_grid(self.points_per_side) * np.array([w, h]), dtype=torch.float32)
        points = points.to(device)  # (P, 2) XY pixels of the image
        per_point = 3 if self.multimask_output else 1
        pool = _CandidatePool(len(points) * per_point, COMPACT_EVERY * self.points_per_batch * per_point, device)
        batches = range(0, len(points), self.points_per_batch)
        for number, start in enumerate(batches, start=1):
            batch = points[start : start + self.points_per_batch]
            step = self.points_per_batch if device.type == "cuda" else CPU_DECODER_PROMPTS
            for part in batch.split(step):
                logits, iou = self._decode(predictor, part, (h, w))
                pool.add(logits, iou, part.repeat_interleave(logits.shape[1], 0))
            if number % COMPACT_EVERY == 0 or number == len(batches):
                with torch.autocast(device.type, enabled=False):  # decisions in float32
                    self._settle(pool, bounds)
            if progress:
                progress(number, len(batches))
        found = pool.result()
        del pool
        boxes, refined = boxes_for_nms(
            found.inner, found.outer, found.iou, self.box_nms_thresh, lambda i: exact_boxes(found.logits[i], frame_hw)
        )
        self.refined += refined
        keep = nms(boxes, found.iou, self.box_nms_thresh)
        return found.select(keep)

    # ------------------------------------------------------------------ internals

    def _decode(
        self, predictor: CachingPredictor, points: torch.Tensor, hw: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One point batch through SAM-2's prompt encoder and mask decoder:
        (b, 2) XY image pixels -> (b, m, 256, 256) low-res logits, (b*m,) float32 IoU."""
        h, w = hw
        resolution = predictor._transforms.resolution
        coords = (points / torch.tensor([w, h], device=points.device) * resolution)[:, None, :]  # (b, 1, 2)
        labels = torch.ones(coords.shape[:2], dtype=torch.int, device=coords.device)
        sparse, dense = self.model.sam_prompt_encoder(points=(coords, labels), boxes=None, masks=None)
        features = predictor._features
        low_res, iou, _, _ = self.model.sam_mask_decoder(
            image_embeddings=features["image_embed"][-1:],
            image_pe=self.model.sam_prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=self.multimask_output,
            repeat_image=coords.shape[0] > 1,
            high_res_features=[level[-1:] for level in features["high_res_feats"]],
        )
        return low_res, iou.flatten().float()

    def _settle(self, pool: _CandidatePool, bounds: FrameBounds) -> None:
        """Decide the pool's pending candidates: the predicted-IoU filter first (it needs
        no mask), then small regions removed from the survivors only, then the
        stability filter on bounds (exact scores only where the bounds straddle the
        threshold), and the box bounds NMS starts from. A few host synchronisations
        per group, none per batch or per mask."""
        iou, points = pool.pending_fields()
        if self.pred_iou_thresh > 0:
            index = (iou > self.pred_iou_thresh).nonzero()[:, 0]
            pool.squeeze(index)
            iou, points = iou[index], points[index]
        rows = pool.logits[pool.done : pool.size]
        if self.min_mask_region_area > 0:
            remove_small_regions_(rows, self.min_mask_region_area)
        inner, outer, stable, unsure = [], [], [], []
        for start in range(0, len(rows), BOUNDS_CHUNK):
            x = rows[start : start + BOUNDS_CHUNK].float()  # (n, 256, 256)
            inner.append(bounds.inner_box(x))
            outer.append(bounds.outer_box(x))
            if self.stability_score_thresh > 0:
                lo, hi = self._stability_bounds(x, bounds)
                stable.append(lo >= self.stability_score_thresh)
                unsure.append((lo < self.stability_score_thresh) & (hi >= self.stability_score_thresh))
        if not inner:  # nothing pending passed the IoU filter
            pool.accept(iou, points, iou.new_zeros(0, 4), iou.new_zeros(0, 4))
            return
        inner, outer = torch.cat(inner), torch.cat(outer)
        if self.stability_score_thresh > 0:
            passes, unsure = torch.cat(stable), torch.cat(unsure).nonzero()[:, 0]
            if len(unsure):
                self.refined += len(unsure)
                passes[unsure] = self._stability(rows[unsure], bounds.hw) >= self.stability_score_thresh
            index = passes.nonzero()[:, 0]
            pool.squeeze(index)
            iou, points, inner, outer = iou[index], points[index], inner[index], outer[index]
        pool.accept(iou, points, inner, outer)

    def _stability_bounds(self, logits: torch.Tensor, bounds: FrameBounds) -> tuple[torch.Tensor, torch.Tensor]:
        """(n, 256, 256) float32 logits -> lower and upper bounds (n,) of the stability
        scores of the masks upsampled to the frame."""
        off = self.stability_score_offset
        (in_all, in_any), (out_all, out_any) = bounds.cells_above(logits, off), bounds.cells_above(logits, -off)
        inner_lo, inner_hi = bounds.count(in_all), bounds.count(in_any)
        outer_lo, outer_hi = bounds.count(out_all), bounds.count(out_any)
        lo = inner_lo / outer_hi.clamp(min=1)
        hi = torch.where(outer_lo > 0, inner_hi / outer_lo.clamp(min=1), torch.ones_like(lo))
        return lo, hi

    def _stability(self, logits: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        """Exact stability scores of low-res logits upsampled to ``hw``."""
        scores = [stability_scores(up, self.stability_score_offset) for _, up in upsampled_chunks(logits, hw)]
        return torch.cat(scores) if scores else logits.new_zeros(0, dtype=torch.float32)


@dataclass
class GeneratedMasks:
    """Kept masks in a frame: masks (N, h, w) bool; iou, stability (N,) float;
    points (N, 2) XY image pixels of the prompts; boxes (N, 4) XYXY frame pixels,
    inclusive max (sam2's convention); areas (N,) frame pixels. All on one device."""

    masks: torch.Tensor
    iou: torch.Tensor
    stability: torch.Tensor
    points: torch.Tensor
    boxes: torch.Tensor
    areas: torch.Tensor


def upsampled_chunks(
    logits: torch.Tensor, hw: tuple[int, int], chunk: int = 32
) -> Iterator[tuple[slice, torch.Tensor]]:
    """(N, 256, 256) low-res logits -> (rows, (n, h, w) float32 logits at ``hw``) a chunk at
    a time (bilinear, like sam2's predictor), so that only one chunk exists at once."""
    for start in range(0, len(logits), chunk):
        part = slice(start, start + chunk)
        yield part, F.interpolate(logits[part, None].float(), size=hw, mode="bilinear", align_corners=False)[:, 0]


def exact_boxes(logits: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """(N, 4) float boxes (``mask_boxes``) of low-res logits upsampled to ``hw``."""
    boxes = [mask_boxes(up > 0) for _, up in upsampled_chunks(logits, hw)]
    return torch.cat(boxes).float() if boxes else logits.new_zeros(0, 4, dtype=torch.float32)
