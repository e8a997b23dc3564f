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
  boxes for NMS, both bounded from the 256x256 low-resolution logits
  (``low_res_masks.FrameBounds``);
- duplicates are removed with ``torchvision.ops.nms`` on those bounded boxes, made
  exact (in one call) only for the pairs whose decision the bounds leave open
  (``bounded_nms``);
- only the masks that survive are upsampled, to the requested frame, at the end.

The grid's points run coarse to fine (``coarse_to_fine``: every 4th row and column,
then the rest of every 2nd, then the rest), and ``generate_steps`` gives the masks
of the points so far after each step, with the same filters and NMS. Every decision
but NMS concerns one candidate alone, and NMS always sees the candidates in the
grid's row order, so the masks after the last step are the one-shot masks whatever
the order the points ran in; bounds made exact for one step's NMS serve the next.

Candidates are kept as float16 low-res logits (half the memory; bf16 or fp16 as the
decoder gives them under autocast); bounds, the candidates upsampled to settle a
decision and the kept masks all come from that copy, in float32 arithmetic.

sam2 instead upsamples every candidate to the original size in float32, computes
run-length encodings and deep-copies them per batch. Its per-crop "box near crop
edge" filter never fires with a single crop (the crop is the whole image), so there
is nothing to do for it here.

Coordinates: point prompts are XY pixels of the original image; the masks come as a
``MaskSet`` in the requested frame.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, fields

import numpy as np
import torch
from torchvision.ops import nms

from maskadapter.engine.bounded_nms import boxes_for_nms
from maskadapter.engine.low_res_masks import (
    LOW_RES,
    FrameBounds,
    exact_boxes,
    remove_small_regions_,
    stability_scores,
    upsampled_chunks,
)
from maskadapter.engine.mask_set import MaskSet
from maskadapter.engine.point_decoder import PointDecoder, prompts_per_call
from maskadapter.engine.predictor import CachingPredictor
from maskadapter.engine.sam2_internals import image_features, input_resolution
from maskadapter.engine.transforms import inclusive_boxes
from maskadapter.progress import ProgressCallback, no_progress

# candidates are gathered, then filtered, every this many point batches: one host
# synchronisation per group instead of one per batch, and memory stays bounded
COMPACT_EVERY = 8
BOUNDS_CHUNK = 192  # candidates whose bounds are computed at once (bounds the float32 temporaries)


def point_grid(points_per_side: int) -> np.ndarray:
    """(n*n, 2) float64 XY points in [0, 1], centred in n x n cells, row by row."""
    side = (np.arange(points_per_side, dtype=np.float64) + 0.5) / points_per_side
    xs, ys = np.meshgrid(side, side, indexing="xy")
    return np.stack([xs.reshape(-1), ys.reshape(-1)], axis=1)


def coarse_to_fine(points_per_side: int) -> list[np.ndarray]:
    """The indices of ``point_grid(points_per_side)``'s points in steps that cover the
    image evenly from the first: the points on every 4th row and column (from the
    second), then the rest of those on every 2nd, then the rest; empty steps are left
    out. Each step lists its points in the grid's row order. For 32 points per side:
    64, 192 and 768 points."""
    i = np.arange(points_per_side)
    steps = []
    taken = np.zeros((points_per_side, points_per_side), dtype=bool)
    for stride in (4, 2, 1):
        on = (i % stride) == (1 % stride)  # nested: every 4th from the second is odd
        level = on[:, None] & on[None, :] & ~taken
        if level.any():
            steps.append(np.flatnonzero(level))
            taken |= level
    return steps


def sam2_records(found: MaskSet, points: torch.Tensor, image_hw: tuple[int, int]) -> list[dict]:
    """``found`` (with (N, 2) XY image pixels of each mask's prompt point) in the record
    format of sam2's generator: ``segmentation`` (h, w) bool, ``area`` int, ``bbox``
    XYWH (sam2's convention: w = x_max - x_min of the last pixels), ``predicted_iou``,
    ``stability_score``, ``point_coords`` [[x, y]], ``crop_box`` XYWH of the image."""
    h, w = image_hw
    boxes = inclusive_boxes(found.boxes).tolist()
    return [
        {
            "segmentation": found.masks[i].cpu().numpy(),
            "area": int(found.areas[i]),
            "bbox": [x0, y0, x1 - x0, y1 - y0],
            "predicted_iou": float(found.iou[i]),
            "point_coords": [[float(v) for v in points[i]]],
            "stability_score": float(found.stability[i]),
            "crop_box": [0, 0, w, h],
        }
        for i, (x0, y0, x1, y1) in enumerate(boxes)
    ]


@dataclass
class _Candidates:
    """The generator's working state: candidate masks of one image as low-res logits
    plus their scores (all tensors on one device).

    logits: (N, 256, 256) float16 low-resolution mask logits (SAM-2's square frame);
    iou: (N,) predicted IoU; points: (N, 2) XY image pixels of the prompt; inner and
    outer: (N, 4) float XYXY bounds of the mask's box in the frame (equal once exact),
    x2/y2 inclusive as sam2's NMS boxes (``low_res_masks.exact_boxes``); ids: (N,) long,
    the candidate's place in the grid's row order (point index x masks per point + the
    mask's index).
    """

    logits: torch.Tensor
    iou: torch.Tensor
    points: torch.Tensor
    inner: torch.Tensor
    outer: torch.Tensor
    ids: torch.Tensor

    def select(self, index: torch.Tensor) -> _Candidates:
        return _Candidates(*(getattr(self, f.name)[index] for f in fields(self)))

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
        self.fields: list[list[torch.Tensor]] = [[], [], [], [], []]  # iou, points, ids, inner, outer of passed rows
        self.pending: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []  # (iou, points, ids) pending

    def add(self, logits: torch.Tensor, iou: torch.Tensor, points: torch.Tensor, ids: torch.Tensor) -> None:
        """One batch: (b, m, 256, 256) logits, (b*m,) predicted IoU, (b*m, 2) prompt
        points, (b*m,) candidate ids."""
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
        self.pending.append((iou, points, ids))

    def pending_fields(self) -> tuple[torch.Tensor, ...]:
        """(iou, points, ids) of the pending rows, in row order."""
        return tuple(torch.cat(field) for field in zip(*self.pending, strict=True))

    def squeeze(self, index: torch.Tensor) -> None:
        """Keep the pending rows ``index`` (ascending, relative to ``done``), in place."""
        n = len(index)
        if n < self.size - self.done:  # no copy when all stay
            self.logits[self.done : self.done + n] = self.logits[self.done + index]
        self.size = self.done + n

    def accept(self, iou, points, ids, inner, outer) -> None:
        """The pending rows (after ``squeeze``) passed, with these fields."""
        for store, value in zip(self.fields, (iou, points, ids, inner, outer), strict=True):
            store.append(value)
        self.done = self.size
        self.pending = []

    def result(self) -> _Candidates:
        """The candidates that passed so far (their fields joined once, in place)."""
        if not self.fields[0]:
            z = torch.zeros(0, 4, device=self.device)
            logits = torch.zeros(0, LOW_RES, LOW_RES, dtype=torch.float16, device=self.device)
            return _Candidates(logits, z[:, 0], z[:, :2], z, z.clone(), z[:, 0].long())
        self.fields = [[torch.cat(ts)] for ts in self.fields]
        iou, points, ids, inner, outer = (ts[0] for ts in self.fields)
        return _Candidates(self.logits[: self.done], iou, points, inner, outer, ids)

    def made_exact(self, index: torch.Tensor, boxes: torch.Tensor) -> None:
        """Rows ``index`` of ``result()`` have these exact (n, 4) boxes: their bounds
        close on them, so that a later NMS does not make them exact again."""
        for bound in self.fields[3][0], self.fields[4][0]:
            bound[index] = boxes.to(bound.dtype)


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
    def generate(
        self, image: np.ndarray, cache: dict | None = None, frame_hw: tuple[int, int] | None = None
    ) -> list[dict]:
        """Masks of an (H, W, 3) uint8 RGB image in sam2's record format (``sam2_records``).

        ``frame_hw``: the masks' size (default: the image's, as sam2 gives them); point
        coordinates and the crop box stay in image pixels, as sam2 reports them.
        """
        found, points = self._generate(image, frame_hw or image.shape[:2], cache, no_progress)
        return sam2_records(found, points, image.shape[:2])

    def generate_masks(
        self,
        image: np.ndarray,
        frame_hw: tuple[int, int],
        cache: dict | None = None,
        progress: ProgressCallback = no_progress,
    ) -> MaskSet:
        """The kept masks in a frame of ``frame_hw`` pixels covering the image (the
        image's own size for sam2's output, or a smaller working frame).

        Args:
            image: (H, W, 3) uint8 RGB.
            frame_hw: (h, w) of the output masks; decisions are exact in this frame.
            cache: this image's embedding cache for ``CachingPredictor``, one per image
                (the image is encoded only if it is not there yet).
            progress: called after each point batch (fraction of the batches done).
        """
        return self._generate(image, frame_hw, cache, progress)[0]

    def generate_steps(
        self,
        image: np.ndarray,
        frame_hw: tuple[int, int],
        cache: dict | None = None,
        progress: ProgressCallback = no_progress,
    ) -> Iterator[tuple[int, MaskSet, torch.Tensor]]:
        """``generate_masks`` a step of the grid at a time (``coarse_to_fine``): after
        each step, (points done, the masks the points so far give, (N,) long candidate
        ids). The ids name a candidate (point x masks per point + mask) across steps;
        the last step's masks and ids are ``generate_masks``'s."""
        steps = self.candidate_steps(image, frame_hw, cache, progress, every_step=True)
        while True:
            with torch.inference_mode():  # around each step's work, never around a yield
                item = next(steps, None)
                if item is None:
                    return
                done, kept = item
                found = self._masks(kept, frame_hw)
            yield done, found, kept.ids

    def _generate(
        self, image: np.ndarray, frame_hw: tuple[int, int], cache: dict | None, progress: ProgressCallback
    ) -> tuple[MaskSet, torch.Tensor]:
        """(the kept masks, (N, 2) XY image pixels of their prompt points)."""
        with torch.inference_mode():
            kept = self.candidates(image, frame_hw, cache, progress)
            return self._masks(kept, frame_hw), kept.points

    def _masks(self, kept: _Candidates, frame_hw: tuple[int, int]) -> MaskSet:
        """The kept candidates upsampled to the frame, with their scores."""
        with torch.autocast(kept.logits.device.type, enabled=False):
            masks = torch.empty(len(kept), *frame_hw, dtype=torch.bool, device=kept.logits.device)
            stability = torch.empty(len(kept), device=kept.logits.device)
            for part, up in upsampled_chunks(kept.logits, frame_hw):  # one upsampling for both
                masks[part] = up > 0
                stability[part] = stability_scores(up, self.stability_score_offset)
            return MaskSet.of(masks, kept.iou, stability)

    def candidates(
        self,
        image: np.ndarray,
        frame_hw: tuple[int, int],
        cache: dict | None = None,
        progress: ProgressCallback = no_progress,
    ) -> _Candidates:
        """The candidates that pass the filters and NMS, as low-res logits (see
        ``generate_masks`` for the arguments)."""
        for _, kept in self.candidate_steps(image, frame_hw, cache, progress, every_step=False):
            return kept
        raise AssertionError("candidate_steps yields the last step")

    def candidate_steps(
        self,
        image: np.ndarray,
        frame_hw: tuple[int, int],
        cache: dict | None = None,
        progress: ProgressCallback = no_progress,
        every_step: bool = True,
    ) -> Iterator[tuple[int, _Candidates]]:
        """(points done, the candidates that pass the filters and NMS) after each step of
        the grid (``every_step``) or after the last only; the same point batches and
        decoder calls either way."""
        h, w = image.shape[:2]
        predictor = CachingPredictor(self.model, {} if cache is None else cache)
        predictor.set_image(image)
        device = predictor.device
        bounds = FrameBounds(frame_hw, device)
        grid = torch.as_tensor(point_grid(self.points_per_side) * np.array([w, h]), dtype=torch.float32)
        per_point = 3 if self.multimask_output else 1
        pool = _CandidatePool(len(grid) * per_point, COMPACT_EVERY * self.points_per_batch * per_point, device)
        dtype = torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else None
        decoder = PointDecoder(self.model, image_features(predictor), dtype)
        step = prompts_per_call(self.model, image_features(predictor), dtype, self.points_per_batch)
        scale = torch.tensor([w, h], device=device)
        resolution = input_resolution(predictor)
        size, levels = self.points_per_batch, coarse_to_fine(self.points_per_side)
        cuts = [range(size, len(index), size) for index in levels]
        batches = [(k, part) for k, index in enumerate(levels) for part in np.split(index, cuts[k])]
        reach = np.cumsum([len(index) for index in levels])  # points done after each step
        for number, (level, index) in enumerate(batches, start=1):
            index = torch.as_tensor(index)
            points = grid[index].to(device)  # (b, 2) XY pixels of the image
            first = index.to(device) * per_point  # (b,) id of each point's first mask
            for part, ids in zip(points.split(step), first.split(step), strict=True):
                logits, iou = decoder.decode(part / scale * resolution, self.multimask_output)
                m = logits.shape[1]
                ids = (ids[:, None] + torch.arange(m, device=device)).flatten()
                pool.add(logits, iou.flatten(), part.repeat_interleave(m, 0), ids)
            last_of_level = number == len(batches) or batches[number][0] != level
            if number % COMPACT_EVERY == 0 or last_of_level:
                with torch.autocast(device.type, enabled=False):  # decisions in float32
                    self._settle(pool, bounds)
            where = f"step {level + 1} of {len(levels)} ({reach[level]} of {len(grid)} points)"
            progress(number / len(batches), f"SAM-2 masks, {where}: point batch {number} of {len(batches)}")
            if last_of_level and (every_step or number == len(batches)):
                yield int(reach[level]), self._nms(pool, frame_hw)

    def _nms(self, pool: _CandidatePool, frame_hw: tuple[int, int]) -> _Candidates:
        """The pool's candidates NMS keeps (best predicted IoU first), decided on bounded
        boxes (``boxes_for_nms``); the boxes it makes exact are kept in the pool. NMS
        sees the candidates in id order (the grid's row order), whatever order they ran in."""
        found = pool.result()

        def exact(index: torch.Tensor) -> torch.Tensor:
            boxes = exact_boxes(found.logits[index], frame_hw)
            pool.made_exact(index, boxes)
            return boxes

        boxes, refined = boxes_for_nms(found.inner, found.outer, found.iou, self.box_nms_thresh, exact)
        self.refined += refined
        order = torch.argsort(found.ids)
        keep = order[nms(boxes[order], found.iou[order], self.box_nms_thresh)]
        return found.select(keep)

    # ------------------------------------------------------------------ internals

    def _settle(self, pool: _CandidatePool, bounds: FrameBounds) -> None:
        """Decide the pool's pending candidates: the predicted-IoU filter first (it needs
        no mask), then small regions removed from the survivors only, then the
        stability filter on bounds (exact scores only where the bounds straddle the
        threshold), and the box bounds NMS starts from. A few host synchronisations
        per group, none per batch or per mask."""
        iou, points, ids = pool.pending_fields()
        if self.pred_iou_thresh > 0:
            index = (iou > self.pred_iou_thresh).nonzero()[:, 0]
            pool.squeeze(index)
            iou, points, ids = iou[index], points[index], ids[index]
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
            pool.accept(iou, points, ids, iou.new_zeros(0, 4), iou.new_zeros(0, 4))
            return
        inner, outer = torch.cat(inner), torch.cat(outer)
        if self.stability_score_thresh > 0:
            passes, unsure = torch.cat(stable), torch.cat(unsure).nonzero()[:, 0]
            if len(unsure):
                self.refined += len(unsure)
                passes[unsure] = self._stability(rows[unsure], bounds.hw) >= self.stability_score_thresh
            index = passes.nonzero()[:, 0]
            pool.squeeze(index)
            iou, points, ids, inner, outer = iou[index], points[index], ids[index], inner[index], outer[index]
        pool.accept(iou, points, ids, inner, outer)

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
