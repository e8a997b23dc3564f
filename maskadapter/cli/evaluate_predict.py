"""How the evaluation labels one image: from SAM-2's automatic masks, or from the
ground-truth segments as masks (mask classification alone).

- ``sam2``: the demo's pipeline, SAM-2's automatic masks named by Mask-Adapter and
  painted as the semantic map;
- ``ground-truth``: every ground-truth segment is one mask, named by Mask-Adapter. A
  segment is a connected region (8-connectivity) of one class; ``gt_segments="classes"``
  takes one mask per class present instead (what Mask-Adapter's own ground-truth
  evaluation code does).

Label maps here are (H, W) int32 benchmark class ids, -1 for unlabelled (predictions) or
ignore (ground truth).
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

from maskadapter.cli.evaluate_options import GT_SEGMENTS, EvalOptions
from maskadapter.engine.segmenter import Segmenter
from maskadapter.engine.session import ImageSession
from maskadapter.engine.vocabulary import Vocabulary
from maskadapter.errors import InputError

REGION_PIXELS = 2**26  # mask pixels made at once when classifying ground-truth segments


def ground_truth_segments(gt: np.ndarray, by: str = "regions") -> tuple[np.ndarray, int]:
    """The ground-truth segments of one image as an (H, W) int32 map of segment ids
    (-1 on ignore pixels) and their count.

    ``by="regions"``: each connected region (8-connectivity) of one class is a segment;
    ``by="classes"``: each class present is one segment.
    """
    if by not in GT_SEGMENTS:
        raise InputError(f"by must be one of {', '.join(GT_SEGMENTS)}, got {by!r}")
    ids = np.full(gt.shape, -1, dtype=np.int32)
    classes = np.unique(gt[gt >= 0])
    if by == "classes":
        ids[gt >= 0] = np.searchsorted(classes, gt[gt >= 0])
        return ids, len(classes)
    count = 0
    for c in classes:  # one labelling pass per class present (not per segment)
        n, comp = cv2.connectedComponents((gt == c).astype(np.uint8), connectivity=8)
        inside = comp > 0
        ids[inside] = comp[inside] - 1 + count
        count += n - 1
    return ids, count


def classify_segments(
    segmenter: Segmenter,
    image: np.ndarray | ImageSession,
    ids: np.ndarray,
    count: int,
    vocabulary: Vocabulary,
    method: str,
) -> np.ndarray:
    """(count, K) float32 class probabilities of the segments of an (H, W) id map
    (``ground_truth_segments``) of an (H, W, 3) uint8 RGB image (or its session), made as
    masks a chunk at a time."""
    session = image if isinstance(image, ImageSession) else segmenter.session(image)
    k = len(vocabulary)
    if count == 0:
        return np.zeros((0, k), dtype=np.float32)
    id_map = torch.as_tensor(ids, device=segmenter.device)
    chunk = max(1, REGION_PIXELS // ids.size)
    probs = []
    for start in range(0, count, chunk):
        wanted = torch.arange(start, min(count, start + chunk), device=segmenter.device)
        masks = id_map[None] == wanted[:, None, None]  # (n, H, W) bool
        probs.append(segmenter.mask_probabilities(session, masks, vocabulary, method=method).float().cpu())
    return torch.cat(probs).numpy()


def predict(
    segmenter: Segmenter,
    image: np.ndarray | ImageSession,
    gt: np.ndarray,
    vocabulary: Vocabulary,
    options: EvalOptions,
) -> np.ndarray:
    """(H, W) int32 label map (benchmark ids, -1 unlabelled) of an (H, W, 3) uint8 RGB image
    (or its session); ``gt`` ((H, W) int32, -1 ignore) is used only by the ground-truth
    mask source."""
    if options.masks == "sam2":
        result = segmenter.segment_automatic(
            image,
            vocabulary,
            options.mask_settings,
            options.mode,
            options.score_threshold,
            options.granularity,
            method=options.method,
        )
        return result.label_map.astype(np.int32)
    ids, count = ground_truth_segments(gt, options.gt_segments)
    if count == 0:
        return np.full(gt.shape, -1, dtype=np.int32)
    probs = classify_segments(segmenter, image, ids, count, vocabulary, options.method)
    best = probs.argmax(1).astype(np.int32)  # (count,) class of each segment
    best[probs.max(1) < options.score_threshold] = -1
    return np.where(ids >= 0, best[np.maximum(ids, 0)], -1).astype(np.int32)
