"""SAM-2 mask proposals through the official ``sam2`` package.

``AutoMaskSettings`` are the settings of "segment everything" (done by
``maskadapter.generator.MaskGenerator``); ``prompt_mask`` answers points and an
optional box through ``SAM2ImagePredictor``. Both go through ``CachingPredictor``,
which keeps the image embedding in a caller-owned dict, so a second click or a second
run on the same image does not re-encode it.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import warnings
from dataclasses import asdict, dataclass, fields, replace

import numpy as np
import torch
from sam2.modeling.sam2_base import SAM2Base
from sam2.sam2_image_predictor import SAM2ImagePredictor

from maskadapter.errors import InputError
from maskadapter.runtime import ModelToken, model_token

log = logging.getLogger(__name__)

# Without sam2's compiled extension (CPU installs), hole filling is skipped with a
# warning on every call; say it once instead.
warnings.filterwarnings("once", message=r"[\s\S]*Skipping the post-processing step")


def image_key(image: np.ndarray) -> str:
    """Content hash of an image array (shape and pixels)."""
    digest = hashlib.sha1(np.ascontiguousarray(image).data)
    digest.update(str(image.shape).encode())
    return digest.hexdigest()


def sam_cache_key(sam_model: torch.nn.Module, key: str) -> tuple[ModelToken, str]:
    """Where ``CachingPredictor`` keeps the embedding of the image with ``image_key`` ``key``."""
    return (model_token(sam_model), key)


class CachingPredictor(SAM2ImagePredictor):
    """``SAM2ImagePredictor`` whose ``set_image`` reuses embeddings kept in ``cache``.

    ``cache`` maps (model, ``image_key(image)``) to the predictor's features and
    original size; the caller owns it (one per image session). ``encoder_calls``
    counts real encodings.
    """

    def __init__(self, sam_model: SAM2Base, cache: dict | None = None, **kwargs) -> None:
        super().__init__(sam_model, **kwargs)
        self.cache = {} if cache is None else cache
        self.encoder_calls = 0

    def set_image(self, image: np.ndarray) -> None:
        key = sam_cache_key(self.model, image_key(image))
        hit = self.cache.get(key)
        if hit is None:
            # sam2 turns the array into a tensor with torch.from_numpy, which warns about
            # read-only arrays (session images are read-only); it only reads the copy
            super().set_image(image if image.flags.writeable else np.array(image))
            self.encoder_calls += 1
            self.cache[key] = (self._features, self._orig_hw)
            return
        self.reset_predictor()
        self._features, self._orig_hw = hit
        self._is_image_set = True


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


def encode_image(sam_model: SAM2Base, image: np.ndarray, cache: dict) -> int:
    """Compute SAM-2's embedding of an (H, W, 3) uint8 RGB image into ``cache`` if it
    is not there yet; returns the number of encodings done (0 or 1)."""
    predictor = CachingPredictor(sam_model, cache)
    predictor.set_image(image)
    return predictor.encoder_calls


def prompt_mask(
    sam_model: SAM2Base,
    image: np.ndarray,
    cache: dict,
    coords: np.ndarray | None,
    labels: np.ndarray | None,
    box: np.ndarray | None = None,
    frame_hw: tuple[int, int] | None = None,
) -> tuple[np.ndarray, float]:
    """The mask SAM-2 predicts for point prompts (and an optional box).

    Args:
        image: (H, W, 3) uint8 RGB.
        coords: (P, 2) float32 XY pixel coordinates in ``image``; labels: (P,) 1/0;
            both None when only a box is given.
        box: optional (4,) XYXY pixel box.
        frame_hw: size of the returned mask (default: the image's); SAM-2's low-res
            logits are upsampled straight to it.
    Returns:
        (the mask with the highest predicted IoU, (h, w) bool at ``frame_hw``; its IoU).
        A single point without a box asks SAM-2 for three candidate masks (the point
        is ambiguous); several prompts ask for one.
    """
    h, w = image.shape[:2]
    fh, fw = frame_hw or (h, w)
    scale = np.array([fw / w, fh / h], dtype=np.float32)
    predictor = CachingPredictor(sam_model, cache)
    predictor.set_image(image)
    predictor._orig_hw = [(fh, fw)]  # prompts and the output mask in the frame
    multimask = coords is not None and len(coords) == 1 and box is None
    with torch.inference_mode():
        masks, ious, _ = predictor.predict(
            point_coords=None if coords is None else coords * scale,
            point_labels=labels,
            box=None if box is None else box * np.tile(scale, 2),
            multimask_output=multimask,
        )
    best = int(np.argmax(ious))
    return masks[best] > 0, float(ious[best])
