"""SAM-2 "segment everything" without sam2's per-mask overheads.

``MaskGenerator`` gives the masks of sam2's ``SAM2AutomaticMaskGenerator`` (single
crop) with the same settings, but keeps the work on tensors:

- a grid of point prompts goes through SAM-2's prompt encoder and mask decoder in
  batches; the image embedding is computed once (and can come from a cache);
- the quality filters (predicted IoU, stability score) and the boxes for NMS are
  computed on the decoder's 256x256 low-resolution logits, batched, on the device;
- duplicates are removed with ``torchvision.ops.nms`` on boxes bounded from the same
  logits, made exact only where a decision of the greedy NMS depends on it;
- only the masks that survive are upsampled, to the requested frame, at the end.

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

from maskadapter.masks import CachingPredictor

Progress = Callable[[str], None]
# candidates are gathered, then filtered, every this many point batches: one host
# synchronisation per group instead of one per batch, and memory stays bounded
COMPACT_EVERY = 8
LOW_RES = 256  # side of SAM-2's low-resolution mask logits
SAMPLE_MARGIN = 1e-4  # a sampled upsampled value counts as positive above this (float rounding)


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


def _remove_small_regions(logits: torch.Tensor, max_area: int, threshold: float = 0.0) -> torch.Tensor:
    """Fill background holes and remove foreground specks of at most ``max_area``
    low-res pixels (8-connected), as sam2's mask post-processing does when its compiled
    extension is present. (N, 256, 256) logits in, same shape out."""
    masks = (logits > threshold).cpu().numpy().astype(np.uint8)
    fill = np.zeros(masks.shape, dtype=bool)
    clear = np.zeros(masks.shape, dtype=bool)
    for i, mask in enumerate(masks):  # OpenCV labels one image per call (256x256: cheap)
        for target, out in ((1 - mask, fill), (mask, clear)):
            count, labels, stats, _ = cv2.connectedComponentsWithStats(target, connectivity=8)
            small = np.zeros(count, dtype=bool)
            small[1:] = stats[1:, cv2.CC_STAT_AREA] <= max_area
            out[i] = small[labels]
    fill_t = torch.from_numpy(fill).to(logits.device)
    clear_t = torch.from_numpy(clear).to(logits.device)
    logits = torch.where(fill_t, threshold + 10.0, logits)
    return torch.where(clear_t, threshold - 10.0, logits)


def _masked_max(x: torch.Tensor, keep: torch.Tensor, dim: int) -> torch.Tensor:
    """Max of (N, 256, 256) ``x`` over ``dim`` counting only the indices where ``keep``."""
    if not bool(keep.all()):
        shape = [1, 1, 1]
        shape[dim] = -1
        x = x.masked_fill(~keep.view(shape), float("-inf"))
    return x.amax(dim)


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
        # source rows / columns read by some frame pixel (a cell reads itself and the next)
        self.read_rows = (self.row_count > 0) | torch.cat([self.row_count[:1] * 0, self.row_count[:-1]]).bool()
        self.read_cols = (self.col_count > 0) | torch.cat([self.col_count[:1] * 0, self.col_count[:-1]]).bool()

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
    def pad(logits: torch.Tensor) -> torch.Tensor:
        """(N, 256, 256) -> (N, 257, 257): the last row and column repeated, so that the
        2x2 sources of every cell are the four shifted 256x256 views (edge cells read
        themselves, as the bilinear kernel clamps)."""
        return F.pad(logits[:, None], (0, 1, 0, 1), mode="replicate")[:, 0]

    @staticmethod
    def cells_above(padded: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, 257, 257) padded logits -> (all, any), (N, 256, 256) bool: whether all /
        any of each cell's 2x2 sources are above ``threshold`` (then every / some
        upsampled pixel of the cell may be)."""
        p = padded > threshold
        a, b, c, d = p[:, :-1, :-1], p[:, :-1, 1:], p[:, 1:, :-1], p[:, 1:, 1:]
        return a & b & c & d, a | b | c | d

    def samples(self, padded: torch.Tensor) -> torch.Tensor:
        """(N, 257, 257) padded logits -> (N, 256, 256): the upsampled logits at the
        first frame pixel of each cell (the bilinear kernel's formula; equal to PyTorch's
        up to float rounding). Meaningful only where the cell has frame pixels."""
        top = torch.lerp(padded[:, :-1, :-1], padded[:, :-1, 1:], self.col_lambda[None, :])
        bottom = torch.lerp(padded[:, 1:, :-1], padded[:, 1:, 1:], self.col_lambda[None, :])
        return torch.lerp(top, bottom, self.row_lambda[:, None])

    def count(self, cells: torch.Tensor) -> torch.Tensor:
        """(N, 256, 256) bool cells -> (N,) frame pixels in them."""
        return (cells.to(torch.int32) * self.weight).flatten(1).sum(1)

    def _extent(self, rows: torch.Tensor, cols: torch.Tensor, far_row, far_col) -> torch.Tensor:
        """(N, 4) float XYXY frame box from (N, 256) cell rows / columns that hold mask
        pixels: from the first pixel of the first cell to ``far_*`` of the last cell
        ((0, 0, 0, 0) when none)."""
        r = torch.arange(LOW_RES, device=rows.device)
        r0 = torch.where(rows, r, LOW_RES - 1).amin(1)
        r1 = torch.where(rows, r, 0).amax(1)
        c0 = torch.where(cols, r, LOW_RES - 1).amin(1)
        c1 = torch.where(cols, r, 0).amax(1)
        box = torch.stack([self.first_col[c0], self.first_row[r0], far_col[c1], far_row[r1]], 1).float()
        return torch.where(rows.any(1)[:, None], box, torch.zeros_like(box))

    def outer_box(self, logits: torch.Tensor) -> torch.Tensor:
        """(N, 256, 256) logits -> (N, 4) float XYXY frame box (inclusive max pixel)
        that contains every upsampled pixel above 0: the pixels of cells one of whose
        2x2 sources is positive."""
        # a cell row can hold positive pixels if a source row it reads is positive in
        # a source column that some cell with pixels reads (likewise for columns)
        row_max = _masked_max(logits, self.read_cols, 2)  # (N, 256)
        col_max = _masked_max(logits, self.read_rows, 1)
        rows = (torch.maximum(row_max, torch.cat([row_max[:, 1:], row_max[:, -1:]], 1)) > 0) & (self.row_count > 0)
        cols = (torch.maximum(col_max, torch.cat([col_max[:, 1:], col_max[:, -1:]], 1)) > 0) & (self.col_count > 0)
        return self._extent(rows, cols, self.last_row, self.last_col)

    def inner_box(self, padded: torch.Tensor) -> torch.Tensor:
        """(N, 257, 257) padded logits -> (N, 4) float XYXY box of pixels known to be in
        the mask (each cell's first pixel whose upsampled value is clearly positive):
        it lies inside the exact box; (0, 0, 0, 0) when none is."""
        sampled = self.samples(padded)
        has_r, has_c = self.row_count > 0, self.col_count > 0
        rows = (_masked_max(sampled, has_c, 2) > SAMPLE_MARGIN) & has_r
        cols = (_masked_max(sampled, has_r, 1) > SAMPLE_MARGIN) & has_c
        return self._extent(rows, cols, self.first_row, self.first_col)


def _box_area(boxes: torch.Tensor) -> torch.Tensor:
    return (boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0)


def _intersection(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    return wh[..., 0] * wh[..., 1]


def iou_bounds(
    inner: torch.Tensor, outer: torch.Tensor, i: int, rest: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lower and upper bounds of the IoU (as torchvision computes it) between box ``i``
    and boxes ``rest``, each known to lie between its inner and outer box."""
    i_lo = _intersection(inner[i : i + 1], inner[rest])[0]
    i_hi = _intersection(outer[i : i + 1], outer[rest])[0]
    area_lo, area_hi = _box_area(inner), _box_area(outer)
    lo = i_lo / (area_hi[i] + area_hi[rest] - i_lo).clamp(min=1e-9)
    union_lo = area_lo[i] + area_lo[rest] - i_hi
    hi = torch.where(union_lo > 0, (i_hi / union_lo.clamp(min=1e-9)).clamp(max=1), torch.ones_like(lo))
    return lo, hi


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
    ``threshold``) only ever compares a candidate with kept boxes. Walking through it,
    a box is made exact (``exact_box(indices)`` -> (n, 4)) only where such a pair is
    undecided by the bounds; every other decision holds for any boxes within bounds.
    The walk loops once per kept box, vectorised over the remaining candidates.

    Returns (boxes: exact where refined, outer elsewhere; number of boxes refined).
    """
    inner, outer = inner.clone(), outer.clone()
    exact = torch.zeros(len(scores), dtype=torch.bool, device=scores.device)
    order = torch.sort(scores, descending=True, stable=True).indices
    alive = torch.ones_like(exact)
    refined = 0
    while True:
        ranked = order[alive[order]]
        if len(ranked) < 2:
            break
        i, rest = int(ranked[0]), ranked[1:]
        alive[i] = False
        lo, hi = iou_bounds(inner, outer, i, rest)
        unsure = (lo <= threshold) & (hi > threshold)
        if unsure.any():
            todo = torch.cat([torch.tensor([i], device=rest.device), rest[unsure]])
            todo = todo[~exact[todo]]
            if len(todo):
                refined += len(todo)
                boxes = exact_box(todo)
                inner[todo], outer[todo], exact[todo] = boxes, boxes, True
            lo, _ = iou_bounds(inner, outer, i, rest)
        alive[rest[lo > threshold]] = False
    return outer, refined


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

    @staticmethod
    def cat(parts: list[Candidates]) -> Candidates:
        return Candidates(*(torch.cat(ts) for ts in zip(*(p._fields() for p in parts), strict=True)))

    def __len__(self) -> int:
        return int(self.iou.shape[0])


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
        gathered: list[Candidates] = []
        pending: list[tuple[Candidates, torch.Tensor, torch.Tensor]] = []
        batches = range(0, len(points), self.points_per_batch)
        for number, start in enumerate(batches, start=1):
            batch = points[start : start + self.points_per_batch]
            pending.append(self._batch(predictor, batch, (h, w), bounds))
            if len(pending) == COMPACT_EVERY or number == len(batches):
                gathered.append(self._compact(pending, frame_hw))
                pending = []
            if progress:
                progress(number, len(batches))
        found = Candidates.cat(gathered) if gathered else self._empty(device)
        boxes, refined = boxes_for_nms(
            found.inner, found.outer, found.iou, self.box_nms_thresh, lambda i: exact_boxes(found.logits[i], frame_hw)
        )
        self.refined += refined
        keep = nms(boxes, found.iou, self.box_nms_thresh)
        return found.select(keep)

    # ------------------------------------------------------------------ internals

    def _batch(
        self, predictor: CachingPredictor, points: torch.Tensor, hw: tuple[int, int], bounds: FrameBounds
    ) -> tuple[Candidates, torch.Tensor, torch.Tensor]:
        """One point batch through SAM-2: its candidates, and for each whether it passes
        the filters (True / False) or needs the exact stability score (``unsure``)."""
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
        per_point = low_res.shape[1]
        logits = low_res.flatten(0, 1).float()  # (b*m, 256, 256)
        if self.min_mask_region_area > 0:
            logits = _remove_small_regions(logits, self.min_mask_region_area)
        iou = iou.flatten().float()
        padded = bounds.pad(logits)  # (b*m, 257, 257)
        passes = torch.ones_like(iou, dtype=torch.bool)
        unsure = torch.zeros_like(passes)
        if self.pred_iou_thresh > 0:
            passes &= iou > self.pred_iou_thresh
        if self.stability_score_thresh > 0:
            off = self.stability_score_offset
            (in_all, in_any), (out_all, out_any) = bounds.cells_above(padded, off), bounds.cells_above(padded, -off)
            inner_lo, inner_hi = bounds.count(in_all), bounds.count(in_any)
            outer_lo, outer_hi = bounds.count(out_all), bounds.count(out_any)
            s_lo = inner_lo / outer_hi.clamp(min=1)
            s_hi = torch.where(outer_lo > 0, inner_hi / outer_lo.clamp(min=1), torch.ones_like(s_lo))
            unsure = passes & (s_lo < self.stability_score_thresh) & (s_hi >= self.stability_score_thresh)
            passes &= s_lo >= self.stability_score_thresh
        found = Candidates(
            logits.half(),
            iou,
            points.repeat_interleave(per_point, 0),
            bounds.inner_box(padded),
            bounds.outer_box(logits),
        )
        return found, passes, unsure

    def _compact(self, pending: list[tuple[Candidates, torch.Tensor, torch.Tensor]], frame_hw) -> Candidates:
        """Keep the candidates that pass; decide the unsure ones on exact scores."""
        found = Candidates.cat([c for c, _, _ in pending])
        passes = torch.cat([p for _, p, _ in pending])
        unsure = torch.cat([u for _, _, u in pending]).nonzero()[:, 0]
        if len(unsure):
            self.refined += len(unsure)
            exact = self._stability(found.logits[unsure], frame_hw)
            passes[unsure] = exact >= self.stability_score_thresh
        return found.select(passes.nonzero()[:, 0])

    def _stability(self, logits: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        """Exact stability scores of low-res logits upsampled to ``hw``."""
        scores = [stability_scores(up, self.stability_score_offset) for _, up in upsampled_chunks(logits, hw)]
        return torch.cat(scores) if scores else logits.new_zeros(0, dtype=torch.float32)

    @staticmethod
    def _empty(device: torch.device) -> Candidates:
        z = torch.zeros(0, 4, device=device)
        logits = torch.zeros(0, LOW_RES, LOW_RES, dtype=torch.half, device=device)
        return Candidates(logits, z[:, 0], z[:, :2], z, z.clone())


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
