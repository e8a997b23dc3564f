"""The settings of SAM-2 "segment everything", and the one place their defaults are decided.

``AutoMaskSettings`` holds the arguments of ``maskadapter.MaskGenerator``;
``default_mask_settings`` decides the defaults (the app, the CLI, batch, evaluation and
``Segmenter.segment_automatic`` all ask it); ``add_mask_arguments`` and
``mask_settings_from_args`` are the matching command-line flags.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass, fields, replace

from maskadapter.errors import InputError


@dataclass(frozen=True)
class AutoMaskSettings:
    """Settings of SAM-2 "segment everything" (defaults: the Mask-Adapter demo's).

    Frozen, so that a session can keep the masks made with each settings value.
    """

    points_per_side: int = 32
    points_per_batch: int = 64
    pred_iou_thresh: float = 0.8
    stability_score_thresh: float = 0.7
    stability_score_offset: float = 1.0
    box_nms_thresh: float = 0.7
    min_mask_region_area: int = 100

    def __post_init__(self) -> None:
        if not 1 <= self.points_per_side <= 128:
            raise InputError(f"points per side must be between 1 and 128, got {self.points_per_side}")
        if self.points_per_batch < 1:
            raise InputError(f"points per batch must be positive, got {self.points_per_batch}")
        for name in ("pred_iou_thresh", "stability_score_thresh", "box_nms_thresh"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise InputError(f"{name.replace('_', ' ')} must be between 0 and 1, got {value}")
        if self.stability_score_offset <= 0:
            raise InputError(f"stability score offset must be positive, got {self.stability_score_offset}")
        if self.min_mask_region_area < 0:
            raise InputError("min mask region area must be >= 0")

    @property
    def generator_args(self) -> dict:
        """Keyword arguments of ``maskadapter.MaskGenerator``."""
        return asdict(self)


# What random weights change in the defaults: they predict low quality everywhere, so
# with the demo's quality filters no mask would pass.
RANDOM_WEIGHT_OVERRIDES = {"pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}
RANDOM_WEIGHT_NOTE = (
    "random weights: SAM-2's quality filters are opened (pred_iou_thresh and stability_score_thresh 0), "
    "since random weights predict low quality everywhere and no mask would pass"
)


def default_mask_settings(real_weights: bool = True) -> AutoMaskSettings:
    """The default automatic-mask settings: the Mask-Adapter demo's; with random
    weights (``--tiny-random``) SAM-2's quality filters are opened
    (``RANDOM_WEIGHT_OVERRIDES``). The app, the CLI and ``Segmenter.segment_automatic``
    all take their defaults from here."""
    if real_weights:
        return AutoMaskSettings()
    return AutoMaskSettings(**RANDOM_WEIGHT_OVERRIDES)


def add_mask_arguments(parser: argparse.ArgumentParser, random_weight_defaults: bool = False) -> None:
    """One flag per ``AutoMaskSettings`` field (``--points-per-side`` ...), its default
    shown. Flags left out stay None, so that ``mask_settings_from_args`` can tell them
    from given ones. ``random_weight_defaults``: the program uses
    ``default_mask_settings(real_weights)`` as the defaults (the help says so)."""
    description = "defaults: the Mask-Adapter demo's"
    if random_weight_defaults:
        description += (
            "; with random weights (--tiny-random) --pred-iou-thresh and --stability-score-thresh "
            "default to 0 (random weights predict low quality everywhere)"
        )
    group = parser.add_argument_group("SAM-2 automatic masks", description)
    defaults = AutoMaskSettings()
    for f in fields(AutoMaskSettings):
        default = getattr(defaults, f.name)
        group.add_argument(
            "--" + f.name.replace("_", "-"), type=type(default), default=None, help=f"(default {default})"
        )


def mask_settings_from_args(args: argparse.Namespace, defaults: AutoMaskSettings | None = None) -> AutoMaskSettings:
    """``AutoMaskSettings`` from flags added by ``add_mask_arguments``: the flags given
    win over ``defaults`` (default: ``AutoMaskSettings()``, the demo's)."""
    given = {f.name: getattr(args, f.name, None) for f in fields(AutoMaskSettings)}
    return replace(defaults or AutoMaskSettings(), **{k: v for k, v in given.items() if v is not None})
