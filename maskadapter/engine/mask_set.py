"""``MaskSet``: the one container of SAM-2 masks and their scores in the engine.

``MaskGenerator.generate_masks`` returns one, ``Segmenter.automatic_masks`` keeps one per
mask settings in the image's session, and ``Segmenter.segment_points`` makes one of its
single mask. The way to the original image's pixels is ``transforms.WorkingFrame``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from maskadapter.engine.transforms import mask_boxes


@dataclass
class MaskSet:
    """Masks of one image with their scores, every field in the frame of the masks (the
    image itself, or a working frame of it) and on the masks' device.

    masks: (N, h, w) bool; iou: (N,) float32, SAM-2's predicted IoU; stability: (N,)
    float32 stability score (NaN where none was computed); boxes: (N, 4) int64 XYXY
    pixels, x2/y2 exclusive (one past the last pixel), (0, 0, 0, 0) for an empty mask;
    areas: (N,) int64 pixel counts.
    """

    masks: torch.Tensor
    iou: torch.Tensor
    stability: torch.Tensor
    boxes: torch.Tensor
    areas: torch.Tensor

    @classmethod
    def of(cls, masks: torch.Tensor, iou: torch.Tensor, stability: torch.Tensor) -> MaskSet:
        """The set of (N, h, w) bool ``masks`` with their (N,) scores; boxes and areas
        are computed from the masks."""
        return cls(masks, iou.float(), stability.float(), mask_boxes(masks), masks.flatten(1).sum(1))

    def select(self, index: torch.Tensor) -> MaskSet:
        """The masks ``index`` ((n,) long indices, or an (N,) bool selection), in that order."""
        return MaskSet(*(getattr(self, f.name)[index] for f in fields(self)))
