"""What the segmenter returns, and how classified masks become it.

``assemble`` paints a ``MaskSet`` (in the image's working frame) with its class
probabilities, at the working resolution, and returns a ``SegmentationResult`` whose
label map, segment masks, areas and boxes are at the original size (mapped back by
``transforms.WorkingFrame``). Two ways of painting (``mode`` of
``maskadapter.engine.painting_options.Painting``):

- ``"semantic"`` (the default, as the Mask-Adapter demo draws it): the semantic map of
  ``maskadapter.engine.painting.semantic_label_map`` at ``granularity``; one segment per
  class present, scored by the class's best kept mask.
- ``"per_mask"``: every mask is one segment labelled with its best class; smaller masks
  are drawn over larger.

Segments scoring below ``score_threshold`` are dropped (their pixels unlabelled). A
one-class vocabulary is classified with an extra class "others" (``with_others``): it
keeps no mask, the pixels it wins stay unlabelled, and it appears in no output.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch

from maskadapter.engine.mask_set import MaskSet
from maskadapter.engine.painting import class_presence, per_mask_label_map, semantic_label_map
from maskadapter.engine.painting_options import Painting
from maskadapter.engine.transforms import WorkingFrame
from maskadapter.engine.vocabulary import Vocabulary

OTHERS = "others"  # the extra class of one-class vocabularies
TOP_K = 5


@dataclass(eq=False)
class Segment:
    """One labelled region.

    ``mask`` is (H, W) bool at the original size, made on access from the working-
    resolution mask (one segment at a time); area is in original pixels; box is XYXY
    original pixels, x2/y2 exclusive (one past the last pixel); top5: the five most
    probable (label, probability) pairs, best first.
    """

    label: str
    class_id: int
    score: float
    top5: list[tuple[str, float]]
    area: int
    box: tuple[int, int, int, int]
    sam_iou: float | None
    working_mask: np.ndarray = field(repr=False)  # (h, w) bool in the working frame
    frame: WorkingFrame = field(repr=False)

    @property
    def mask(self) -> np.ndarray:
        return self.frame.to_original(self.working_mask)


@dataclass
class SegmentationResult:
    """Segments of one image; ``label_map`` (H, W) int32 holds class ids, -1 unlabelled.

    ``working_label_map`` is the same map in the working frame (``frame.work_hw``).
    """

    image_size: tuple[int, int]
    labels: list[str]
    segments: list[Segment]
    label_map: np.ndarray
    mode: str
    working_label_map: np.ndarray | None = None
    frame: WorkingFrame | None = None


class MaskChange(NamedTuple):
    """A SAM-2 mask the two methods name differently: its index among the image's
    masks, its best class under each (None: none of the vocabulary) and its area in
    original pixels."""

    mask: int
    adapter: str | None
    pooling: str | None
    area: int


def mask_changes(
    frame: WorkingFrame, masks: torch.Tensor, adapter: torch.Tensor, pooling: torch.Tensor, vocabulary: Vocabulary
) -> tuple[MaskChange, ...]:
    """The (N, h, w) working-frame masks whose best class differs between the (N, C + 1)
    probabilities of the two methods (the last class is "others": no label)."""
    c = len(vocabulary)
    best = [torch.where(p.argmax(1) < c, p.argmax(1), -1) for p in (adapter, pooling)]
    differ = torch.nonzero(best[0] != best[1]).flatten()
    areas = frame.areas(masks[differ]).tolist() if len(differ) else []
    names = [[vocabulary.labels[i] if i >= 0 else None for i in b[differ].tolist()] for b in best]
    return tuple(map(MaskChange, differ.tolist(), *names, areas))


@dataclass
class Comparison:
    """One image's masks classified two ways: ``adapter`` (Mask-Adapter) and ``pooling``
    (plain mask pooling); ``changed`` of the ``masks`` SAM-2 masks have a different
    best class under the two, listed in ``changes``."""

    adapter: SegmentationResult
    pooling: SegmentationResult
    changed: int
    masks: int
    changes: tuple[MaskChange, ...] = ()


def with_others(vocabulary: Vocabulary) -> Vocabulary:
    """The vocabulary classified against: a one-class vocabulary gets "others" appended
    (its last column, dropped from every output)."""
    if len(vocabulary) != 1 or vocabulary.labels[0].casefold() == OTHERS:
        return vocabulary
    return dataclasses.replace(vocabulary, classes=(*vocabulary.classes, (OTHERS,)))


def _top(probs: np.ndarray, labels: Sequence[str], k: int = TOP_K) -> list[tuple[str, float]]:
    order = np.argsort(-probs, kind="stable")[:k]
    return [(labels[i], float(probs[i])) for i in order]


def _segment(
    labels: Sequence[str],
    c: int,
    row: np.ndarray,
    area: int,
    box: np.ndarray,
    iou: float,
    working_mask: np.ndarray,
    frame: WorkingFrame,
) -> Segment:
    """The segment of class ``c`` scored by a mask with (C,) probabilities ``row``."""
    box = tuple(int(v) for v in box)
    return Segment(labels[c], int(c), float(row[c]), _top(row, labels), int(area), box, float(iou), working_mask, frame)


def assemble(
    frame: WorkingFrame,
    found: MaskSet,
    probs: torch.Tensor,
    vocabulary: Vocabulary,
    painting: Painting,
) -> SegmentationResult:
    """Paint at the working resolution; label map and segments at the original size.

    ``found``: the masks in ``frame``'s working frame; ``probs``: (N, C') float class
    probabilities, C' >= C = ``len(vocabulary)``: extra columns after the vocabulary's
    ("others") win pixels and masks for nobody.
    """
    labels, mode, score_threshold = vocabulary.labels, painting.mode, painting.score_threshold
    c = len(labels)
    masks = found.masks
    with torch.inference_mode():
        if mode == "per_mask":
            score, best = probs.max(1) if len(probs) else (probs.new_zeros(0), probs.new_zeros(0).long())
            class_ids = torch.where((best < c) & (score >= score_threshold), best, -1)
            working, _ = per_mask_label_map(masks, class_ids)
        else:
            working, kept = semantic_label_map(masks, probs, painting.granularity, extra_classes=probs.shape[1] - c)
    probs_np = probs[:, :c].float().cpu().numpy()
    if mode == "per_mask":
        working_np = working.to(torch.int32).cpu().numpy()
        label_map = frame.to_original(working_np)
        segments = _per_mask_segments(found, probs_np, class_ids.cpu().numpy(), labels, frame)
    else:
        segments, working_np, label_map = _semantic_segments(
            found, probs_np, kept, working, labels, frame, score_threshold
        )
    return SegmentationResult(frame.orig_hw, labels, segments, label_map, mode, working_np, frame)


def _per_mask_segments(
    found: MaskSet, probs: np.ndarray, class_ids: np.ndarray, labels: Sequence[str], frame: WorkingFrame
) -> list[Segment]:
    """One segment per mask with a class (``class_ids`` (N,) >= 0), in the masks' order;
    areas and boxes in original pixels."""
    shown = np.nonzero(class_ids >= 0)[0]
    index = torch.as_tensor(shown, device=found.masks.device)
    areas = frame.areas(found.masks[index]).cpu().numpy()
    boxes = frame.to_original_boxes(found.boxes[index]).numpy()
    masks, iou = found.masks[index].cpu().numpy(), found.iou.cpu().numpy()
    return [
        _segment(labels, c, probs[i], areas[k], boxes[k], iou[i], masks[k], frame)
        for k, (i, c) in enumerate(zip(shown, class_ids[shown], strict=True))
    ]


def _semantic_segments(
    found: MaskSet,
    probs: np.ndarray,
    kept: torch.Tensor,
    working: torch.Tensor,
    labels: Sequence[str],
    frame: WorkingFrame,
    score_threshold: float,
) -> tuple[list[Segment], np.ndarray, np.ndarray]:
    """One segment per class present, scored by the best kept mask that covers the
    class's pixels; classes scoring below ``score_threshold`` are unlabelled.
    Returns (segments, working label map, label map at the original size)."""
    present = class_presence(found.masks, working, len(labels)).cpu().numpy() & kept.cpu().numpy()[:, None]
    classes = np.nonzero(present.any(0))[0]
    if not len(classes):  # no mask, or none kept
        working_np = working.to(torch.int32).cpu().numpy()
        return [], working_np, frame.to_original(working_np)
    top = np.where(present[:, classes], probs[:, classes], -1.0).argmax(0)  # (K,) best mask per class
    scores = probs[top, classes]
    dropped = classes[scores < score_threshold]
    if len(dropped):
        working = torch.where(torch.isin(working, torch.as_tensor(dropped, device=working.device)), -1, working)
    keep = scores >= score_threshold
    classes, top = classes[keep], top[keep]
    working_np = working.to(torch.int32).cpu().numpy()
    label_map = frame.to_original(working_np)
    if not len(classes):
        return [], working_np, label_map
    areas = np.bincount(label_map[label_map >= 0].ravel(), minlength=len(labels))
    class_masks = working[None] == torch.as_tensor(classes, device=working.device)[:, None, None]  # (K, h, w)
    boxes = frame.boxes(class_masks)
    class_masks_np, iou = class_masks.cpu().numpy(), found.iou.cpu().numpy()
    segments = [
        _segment(labels, c, probs[top[k]], areas[c], boxes[k], iou[top[k]], class_masks_np[k], frame)
        for k, c in enumerate(classes)
    ]
    segments.sort(key=lambda s: -s.area)
    return segments, working_np, label_map
