"""How masks are classified and painted: the choices, checked where they enter.

Kept apart from ``maskadapter.engine.results`` (which paints, with torch) and
``maskadapter.engine.segmenter`` (which classifies) so that the command line can offer
and check these choices without loading torch.
"""

from __future__ import annotations

from dataclasses import dataclass

from maskadapter.errors import InputError

MODES = ("semantic", "per_mask")
METHODS = ("adapter", "pooling")  # how masks are classified: Mask-Adapter or plain mask pooling


@dataclass(frozen=True)
class Painting:
    """How classified masks are painted (see ``maskadapter.engine.results``): ``mode``
    one of ``MODES``; ``score_threshold`` (minimum class probability of a kept segment)
    and ``granularity`` (semantic mode's per-class relative threshold) in [0, 1]."""

    mode: str = "semantic"
    score_threshold: float = 0.0
    granularity: float = 0.8

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise InputError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        for name, value in (("score threshold", self.score_threshold), ("granularity", self.granularity)):
            if not 0.0 <= value <= 1.0:
                raise InputError(f"{name} must be between 0 and 1, got {value}")
