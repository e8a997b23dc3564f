"""How the evaluation labels images: the mask sources and the labelling options, checked
where they enter.

Kept apart from ``maskadapter.cli.evaluate_predict`` (which labels, with torch) so that
the command line can offer these choices without loading torch.
"""

from __future__ import annotations

from dataclasses import dataclass

from maskadapter.engine.mask_settings import AutoMaskSettings
from maskadapter.engine.painting_options import METHODS
from maskadapter.errors import InputError

MASK_SOURCES = ("sam2", "ground-truth")
GT_SEGMENTS = ("regions", "classes")


@dataclass(frozen=True)
class EvalOptions:
    """How images are labelled: the mask source and the labelling options."""

    masks: str = "sam2"
    gt_segments: str = "regions"
    mode: str = "semantic"
    granularity: float = 0.8
    score_threshold: float = 0.0
    method: str = "adapter"
    mask_settings: AutoMaskSettings | None = None  # None: the segmenter's defaults

    def __post_init__(self) -> None:
        for name, allowed in (("masks", MASK_SOURCES), ("gt_segments", GT_SEGMENTS), ("method", METHODS)):
            if getattr(self, name) not in allowed:
                raise InputError(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
