"""Greedy box NMS decided on bounded boxes: most boxes known only within [inner, outer].

``boxes_for_nms`` makes exact (in a few batched calls) only the boxes whose NMS decision
the bounds leave open, and returns boxes on which ``torchvision.ops.nms`` decides as it
would on the exact boxes. Boxes are (N, 4) float XYXY in any one convention.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

NMS_ROWS = 512  # rows of the pairwise IoU-bound matrices computed at once
NMS_ROUNDS = 6  # rounds of boxes made exact for NMS (the last takes every pair that matters)


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
