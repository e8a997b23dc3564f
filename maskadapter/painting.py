"""Label maps from classified masks, vectorised, at the working resolution.

Both functions take masks as an (N, h, w) bool tensor (largest first) and loop over
chunks of masks, never over single masks, so their cost is one pass over the masks.
The semantic construction lives in ``semantic_label_map`` alone.
"""

from __future__ import annotations

import torch

CHUNK = 32  # masks per step: bounds the temporary (CHUNK, h, w) tensors


def per_mask_label_map(masks: torch.Tensor, class_ids: torch.Tensor, chunk: int = CHUNK) -> torch.Tensor:
    """Paint every mask in its class, later masks over earlier ones.

    Args:
        masks: (N, h, w) bool, in painting order (largest first, so smaller masks
            end up on top).
        class_ids: (N,) long, the class of each mask; -1 leaves it unpainted.
    Returns:
        (label_map (h, w) long with -1 where nothing is painted,
         winner (h, w) long: index of the mask that painted each pixel, -1 none).
    """
    n, h, w = masks.shape
    winner = torch.full((h, w), -1, dtype=torch.long, device=masks.device)
    painted = class_ids >= 0
    for start in range(0, n, chunk):
        part = masks[start : start + chunk] & painted[start : start + chunk, None, None]
        index = torch.arange(start, start + len(part), device=masks.device)[:, None, None]
        winner = torch.maximum(winner, torch.where(part, index, -1).amax(0))
    labels = torch.where(winner >= 0, class_ids[winner.clamp(min=0)], -1)
    return labels, winner


def semantic_label_map(
    masks: torch.Tensor, probs: torch.Tensor, granularity: float, score_threshold: float = 0.0, chunk: int = CHUNK
) -> tuple[torch.Tensor, torch.Tensor]:
    """The semantic map: one label per pixel from the masks kept per class.

    A (mask, class) pair is kept when its probability is at least ``granularity`` x the
    class's best over all masks, and at least ``score_threshold``. Each pixel takes
    the class of the kept pair with the highest probability among the masks covering
    it (the first such pair on ties); pixels covered by no kept pair stay -1.

    Args:
        masks: (N, h, w) bool; probs: (N, C) float class probabilities.
    Returns:
        (label_map (h, w) long, keep (N, C) bool: the kept pairs).
    """
    n, h, w = masks.shape
    best = probs.amax(0, keepdim=True)  # (1, C)
    keep = (probs >= granularity * best) & (probs >= score_threshold)  # (N, C)
    value = torch.where(keep, probs, -1.0)
    mask_value, mask_class = value.max(1)  # (N,) each mask's best kept pair (first on ties)
    top = torch.full((h, w), -1.0, dtype=value.dtype, device=masks.device)
    labels = torch.full((h, w), -1, dtype=torch.long, device=masks.device)
    for start in range(0, n, chunk):
        part = masks[start : start + chunk] & (mask_value[start : start + chunk] >= 0)[:, None, None]
        values = torch.where(part, mask_value[start : start + chunk, None, None], -1.0)
        chunk_top, chunk_arg = values.max(0)  # first maximum within the chunk
        better = chunk_top > top  # strictly: an earlier mask wins ties
        top = torch.where(better, chunk_top, top)
        labels = torch.where(better, mask_class[start : start + chunk][chunk_arg], labels)
    return labels, keep


def class_presence(masks: torch.Tensor, label_map: torch.Tensor, num_classes: int, chunk: int = CHUNK) -> torch.Tensor:
    """(N, C) bool: whether mask n covers at least one pixel labelled c."""
    n = masks.shape[0]
    flat = (label_map + 1).flatten()  # 0 = unlabelled
    out = torch.zeros(n, num_classes + 1, dtype=torch.bool, device=masks.device)
    for start in range(0, n, chunk):
        part = masks[start : start + chunk].flatten(1).to(torch.int32)  # (n', h*w)
        counts = torch.zeros(len(part), num_classes + 1, dtype=torch.int32, device=masks.device)
        counts.scatter_add_(1, flat.expand(len(part), -1), part)
        out[start : start + chunk] = counts > 0
    return out[:, 1:]
