"""Every use of the ``sam2`` package's private members, in one place.

maskadapter drives sam2's predictors beyond their public API: it keeps
``SAM2ImagePredictor``'s image embedding in its own cache (``_features``, ``_orig_hw``,
``_is_image_set``), reads the predictor's input resolution (``_transforms``), asks
``MaskDecoder`` for its stability-based mask choice (``_dynamic_multimask_via_stability``)
and runs ``SAM2VideoPredictor`` one frame at a time (``_run_single_frame_inference``; a
video predictor made from the image model by swapping its class, with a state built
as ``init_state`` builds it). Those members are not part of sam2's API and may change
in any release: the other modules call the functions here, so that an upgrade of sam2
is checked and fixed here (``PRIVATE_NAMES`` lists them; a test keeps them out of every
other module). Beyond them, ``tracker`` reads and trims the per-object dictionaries of
that state (``output_dict_per_obj`` and the like), which sam2 hands out from
``init_state`` without documenting them: check those keys on an upgrade too.

At import, the installed sam2 is compared with ``SUPPORTED_SAM2``, the version this was
written and tested against; another version (or no version metadata) gives one
``UserWarning`` naming both, and nothing fails here.

This module imports no sam2 (nor torch) at import time: its callers already have.
"""

from __future__ import annotations

import copy
import warnings
from collections import OrderedDict
from importlib import metadata
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from sam2.modeling.sam.mask_decoder import MaskDecoder
    from sam2.modeling.sam2_base import SAM2Base
    from sam2.sam2_image_predictor import SAM2ImagePredictor
    from sam2.sam2_video_predictor import SAM2VideoPredictor

SUPPORTED_SAM2 = "1.1.0"

# sam2's private members used below: attributes of SAM2ImagePredictor, a method of
# MaskDecoder and one of SAM2VideoPredictor (the class swap is checked apart: ``__class__``)
PRIVATE_NAMES = (
    "_features",
    "_orig_hw",
    "_is_image_set",
    "_transforms",
    "_dynamic_multimask_via_stability",
    "_run_single_frame_inference",
)


def installed_sam2() -> str | None:
    """The installed sam2's version, from its package metadata; None without metadata."""
    try:
        return metadata.version("sam2")
    except metadata.PackageNotFoundError:
        return None


def check_sam2_version(installed: str | None) -> str | None:
    """None when ``installed`` (a version string; None: no metadata found) is
    ``SUPPORTED_SAM2``, else the message that says so."""
    if installed == SUPPORTED_SAM2:
        return None
    if installed is None:
        found = "no version of sam2 is recorded in the installed package metadata"
    else:
        found = f"sam2 {installed} is installed"
    return (
        f"{found}; maskadapter is tested with sam2 {SUPPORTED_SAM2} (it reaches some of sam2's "
        "internals, which may have changed: see maskadapter/engine/sam2_internals.py)"
    )


def _warn_if_unsupported() -> None:
    message = check_sam2_version(installed_sam2())
    if message is not None:
        warnings.warn(message, UserWarning, stacklevel=2)


_warn_if_unsupported()  # once: at the first import


# ------------------------------------------------------------- SAM2ImagePredictor


def image_state(predictor: SAM2ImagePredictor) -> tuple[dict, list[tuple[int, int]]]:
    """The image ``set_image`` encoded: (features, orig_hw), the predictor's own objects.
    Reads ``_features`` ({"image_embed", "high_res_feats"}) and ``_orig_hw``."""
    return predictor._features, predictor._orig_hw


def set_image_state(predictor: SAM2ImagePredictor, features: dict, orig_hw: list[tuple[int, int]]) -> None:
    """Make ``predictor`` answer prompts on an image encoded before (``image_state``), as
    if ``set_image`` had just run. Writes ``_features``, ``_orig_hw`` and ``_is_image_set``."""
    predictor._features, predictor._orig_hw = features, orig_hw
    predictor._is_image_set = True


def image_features(predictor: SAM2ImagePredictor) -> dict:
    """The image embedding of the image set: ``image_embed`` (1, C, 64, 64) and
    ``high_res_feats``. Reads ``_features``."""
    return predictor._features


def prompt_frame(predictor: SAM2ImagePredictor, hw: tuple[int, int]) -> None:
    """Masks ``predict`` gives from now on are upsampled to ``hw`` instead of the image's
    size, and its pixel prompts are read as pixels of ``hw``. Writes ``_orig_hw``."""
    predictor._orig_hw = [tuple(hw)]


def input_resolution(predictor: SAM2ImagePredictor) -> int:
    """The side of SAM-2's square input, to which prompts in pixels are scaled. Reads
    ``_transforms.resolution``."""
    return predictor._transforms.resolution


# ------------------------------------------------------------------- MaskDecoder


def dynamic_multimask_via_stability(
    decoder: MaskDecoder, masks: torch.Tensor, iou: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """sam2's single-mask choice for one-mask prompts: the first mask unless it is
    unstable, then the best of the others; (b, M, h, w), (b, M) -> (b, 1, h, w), (b, 1).
    Calls ``MaskDecoder._dynamic_multimask_via_stability``."""
    return decoder._dynamic_multimask_via_stability(masks, iou)


# ------------------------------------------------------------ SAM2VideoPredictor


def as_video_predictor(sam_model: SAM2Base, **settings: Any) -> SAM2VideoPredictor:
    """A ``SAM2VideoPredictor`` sharing ``sam_model``'s modules and weights: a shallow copy
    whose ``__class__`` is swapped, so ``SAM2VideoPredictor.__init__`` does not run and
    ``settings`` must give every attribute it sets (in sam2 1.1.0: ``fill_hole_area``,
    ``non_overlap_masks``, ``clear_non_cond_mem_around_input``,
    ``add_all_frames_to_correct_as_cond``); other attributes may be given too."""
    from sam2.sam2_video_predictor import SAM2VideoPredictor

    predictor = copy.copy(sam_model)  # shallow: the same submodules and parameters
    predictor._modules = predictor._modules.copy()  # so that a module given below replaces the copy's only
    predictor.__class__ = SAM2VideoPredictor
    for name, value in settings.items():
        setattr(predictor, name, value)
    return predictor


def new_inference_state(images: Any, video_hw: tuple[int, int], device: torch.device) -> dict:
    """The dictionary ``SAM2VideoPredictor.init_state`` builds (sam2 1.1.0's keys), with
    ``images`` (indexable, with a length: frame -> (3, S, S) input) instead of a loaded
    video, on ``device``, nothing offloaded."""
    return {
        "images": images,
        "num_frames": len(images),
        "offload_video_to_cpu": False,
        "offload_state_to_cpu": False,
        "video_height": video_hw[0],
        "video_width": video_hw[1],
        "device": device,
        "storage_device": device,
        "point_inputs_per_obj": {},
        "mask_inputs_per_obj": {},
        "cached_features": {},
        "constants": {},
        "obj_id_to_idx": OrderedDict(),
        "obj_idx_to_id": OrderedDict(),
        "obj_ids": [],
        "output_dict_per_obj": {},
        "temp_output_dict_per_obj": {},
        "frames_tracked_per_obj": {},
    }


def run_single_frame(
    predictor: SAM2VideoPredictor,
    *,
    inference_state: dict,
    output_dict: dict,
    frame_idx: int,
    batch_size: int,
    is_init_cond_frame: bool,
    point_inputs: dict | None,
    mask_inputs: torch.Tensor | None,
    reverse: bool,
    run_mem_encoder: bool,
) -> tuple[dict, torch.Tensor]:
    """One object's tracking step onto ``frame_idx`` (what ``propagate_in_video`` runs per
    frame): (the frame's output dict, its mask logits at the video's size). Calls
    ``SAM2VideoPredictor._run_single_frame_inference`` with these keyword arguments."""
    return predictor._run_single_frame_inference(
        inference_state=inference_state,
        output_dict=output_dict,
        frame_idx=frame_idx,
        batch_size=batch_size,
        is_init_cond_frame=is_init_cond_frame,
        point_inputs=point_inputs,
        mask_inputs=mask_inputs,
        reverse=reverse,
        run_mem_encoder=run_mem_encoder,
    )
