"""Label maps from classified masks, vectorised, at the working resolution.

The functions take masks as an (N, h, w) bool tensor (largest first) and loop over
chunks of masks, never over single masks, so their cost is one pass over the masks.
The semantic construction lives in ``semantic_label_map`` alone (``semantic_map`` is
its public numpy form).
"""

from __future__ import annotations

import numpy as np
import torch

from maskadapter.errors import InputError

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
    if n == 0:
        return winner.clone(), winner
    labels = torch.where(winner >= 0, class_ids[winner.clamp(min=0)], -1)
    return labels, winner


def semantic_label_map(
    masks: torch.Tensor, probs: torch.Tensor, granularity: float, extra_classes: int = 0, chunk: int = CHUNK
) -> tuple[torch.Tensor, torch.Tensor]:
    """The semantic map (OVSeg's SAM visualisation, as the Mask-Adapter demo draws it).

    A mask is kept when, for at least one class c, its probability for c is at least
    ``granularity`` x the best probability any mask has for c. Every kept mask adds its
    whole probability row to each pixel it covers; each pixel takes the class with the
    largest sum (the first on ties); a pixel covered by no kept mask stays -1. The last
    ``extra_classes`` columns (e.g. "others") take part in the sums but keep no mask,
    and the pixels they win stay -1.

    Pixels covered by the same set of kept masks share their sums, so the sums are
    computed once per distinct set (found with ``torch.unique``), not per pixel.

    Args:
        masks: (N, h, w) bool; probs: (N, C) float class probabilities.
    Returns:
        (label_map (h, w) long, kept (N,) bool).
    """
    n, h, w = masks.shape
    c = probs.shape[1] - extra_classes
    real = probs[:, :c]
    kept = (real >= granularity * real.amax(0, keepdim=True)).any(1) if n else torch.zeros(0, dtype=torch.bool)
    kept = kept.to(masks.device)
    index = kept.nonzero()[:, 0]
    labels = torch.full((h * w,), -1, dtype=torch.long, device=masks.device)
    if not len(index):
        return labels.view(h, w), kept
    # a key per pixel that identifies the set of kept masks covering it: 24 masks at a
    # time as exact float32 bit codes, folded into dense ids with torch.unique
    key = torch.zeros(h * w, dtype=torch.long, device=masks.device)
    bits = 2.0 ** torch.arange(24, device=masks.device, dtype=torch.float32)
    for start in range(0, len(index), 24):
        part = masks[index[start : start + 24]].flatten(1).to(torch.float32)  # (k, h*w)
        code = (bits[: len(part)] @ part).long()  # (h*w,) exact below 2**24
        key = torch.unique(key * (1 << 24) + code, return_inverse=True)[1]
    first = _first_pixels(key)  # (U,) a pixel of each distinct set
    members = masks.flatten(1)[:, first][index].to(torch.float64)  # (K, U)
    sums = members.T @ probs[index].to(torch.float64)  # (U, C + extra)
    set_labels = sums.argmax(1)
    set_labels = torch.where((set_labels < c) & (members.sum(0) > 0), set_labels, -1)
    return set_labels[key].view(h, w), kept


def _first_pixels(key: torch.Tensor) -> torch.Tensor:
    """(U,) the first index of each of the dense ids 0..U-1 in ``key``."""
    first = torch.full((int(key.max()) + 1,), len(key), dtype=torch.long, device=key.device)
    return first.scatter_reduce_(0, key, torch.arange(len(key), device=key.device), "amin")


def semantic_map(masks: np.ndarray, probs: np.ndarray, granularity: float) -> np.ndarray:
    """The semantic map of classified masks (see ``semantic_label_map``).

    Args:
        masks: (N, H, W) bool masks.
        probs: (N, C) float class probabilities (softmax over classes).
        granularity: in (0, 1]: a mask is kept when it scores at least this fraction of
            the best score of some class.
    Returns:
        (H, W) int32 label map: the class index of each pixel, -1 where unlabelled.
    """
    masks_t = torch.as_tensor(np.asarray(masks, dtype=bool))
    probs_t = torch.as_tensor(np.asarray(probs, dtype=np.float64))
    if masks_t.ndim != 3 or probs_t.ndim != 2 or len(masks_t) != len(probs_t):
        raise InputError(
            f"expected masks (N, H, W) and probs (N, C) for the same N, got {masks_t.shape} and {probs_t.shape}"
        )
    if not 0.0 < granularity <= 1.0:
        raise InputError(f"granularity must be in (0, 1], got {granularity}")
    return semantic_label_map(masks_t, probs_t, granularity)[0].to(torch.int32).numpy()


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
