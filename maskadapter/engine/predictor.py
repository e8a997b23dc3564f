"""SAM-2 prompts through the official ``sam2`` package.

``CachingPredictor`` is ``SAM2ImagePredictor`` with the image embedding kept in a
caller-owned dict (one per image session), so that a second click or a second run on
the same image does not re-encode it; ``prompt_mask`` answers points and an optional box.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from sam2.modeling.sam2_base import SAM2Base
from sam2.sam2_image_predictor import SAM2ImagePredictor

from maskadapter.engine.runtime import model_token
from maskadapter.engine.sam2_internals import image_state, prompt_frame, set_image_state

# Without sam2's compiled extension (CPU installs), hole filling is skipped with a
# warning on every call; say it once instead.
warnings.filterwarnings("once", message=r"[\s\S]*Skipping the post-processing step")


class CachingPredictor(SAM2ImagePredictor):
    """``SAM2ImagePredictor`` whose ``set_image`` reuses embeddings kept in ``cache``.

    ``cache`` holds one image's embeddings: it maps a SAM-2 model (``model_token``)
    to the predictor's features and the image's size. The caller owns it, one per
    image (an image session's), so the pixels are never hashed here; an image of
    another size than the cached one is refused. ``encoder_calls`` counts real
    encodings.
    """

    def __init__(self, sam_model: SAM2Base, cache: dict | None = None, **kwargs) -> None:
        super().__init__(sam_model, **kwargs)
        self.cache = {} if cache is None else cache
        self.encoder_calls = 0

    def set_image(self, image: np.ndarray) -> None:
        key = model_token(self.model)
        hit = self.cache.get(key)
        if hit is None:
            # sam2 turns the array into a tensor with torch.from_numpy, which warns about
            # read-only arrays (session images are read-only); it only reads the copy
            super().set_image(image if image.flags.writeable else np.array(image))
            self.encoder_calls += 1
            self.cache[key] = image_state(self)
            return
        if tuple(hit[1][0]) != tuple(image.shape[:2]):
            raise ValueError(f"this embedding cache holds a {hit[1][0]} image, not {image.shape[:2]}: one per image")
        self.reset_predictor()
        set_image_state(self, *hit)


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
    prompt_frame(predictor, (fh, fw))  # prompts and the output mask in the frame
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
