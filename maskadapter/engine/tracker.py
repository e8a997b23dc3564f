"""SAM-2's video predictor over a stream of frames: one frame in hand, memory bounded.

The official ``SAM2VideoPredictor.init_state`` loads every frame of a clip at 1024x1024
in float32 before tracking starts (about 12 MB a frame), and its state keeps every
frame's memory features. ``Tracker`` drives the same predictor, with the same weights
as the image model, one frame at a time: the frame in hand is the only image it holds,
and after each frame it forgets the memories SAM-2 can no longer attend to (older than
``num_maskmem`` and ``max_obj_ptrs_in_encoder`` frames, and prompts' mask inputs of past
frames). Objects start from a mask or from clicks on any frame, and clicks on a later
frame correct a tracked object there. Each object is tracked on its own, as in sam2 1.1.

Frames enter as decoded; SAM-2 sees them resized to its 1024x1024 input by the image
predictor's own transform (as sam2 resizes the frames it loads), and masks come back at
a working size (see ``maskadapter.engine.video``).
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F
from sam2.modeling.sam2_base import SAM2Base
from sam2.sam2_video_predictor import SAM2VideoPredictor
from sam2.utils.transforms import SAM2Transforms

from maskadapter.engine.sam2_internals import as_video_predictor, new_inference_state, run_single_frame


def video_predictor(sam_model: SAM2Base) -> SAM2VideoPredictor:
    """A ``SAM2VideoPredictor`` that shares ``sam_model``'s modules and weights (no
    second copy in memory), with the settings of sam2's ``build_sam2_video_predictor``
    (its default post-processing): a mask decoder that falls back to the best of its
    multimask outputs when a one-mask answer is unstable (delta 0.05, threshold 0.98;
    the image model's decoder, with the same weights, keeps the image build's choice),
    masks made from clicks binarised before memory encoding, and holes up to 8 pixels
    filled (where sam2's compiled extension is installed; CPU installs skip it)."""
    # the same weights, its own settings; under torch.compile the wrapper would pass the
    # settings on to the image model's own decoder, so the plain module is copied
    decoder = copy.copy(getattr(sam_model.sam_mask_decoder, "_orig_mod", sam_model.sam_mask_decoder))
    decoder.dynamic_multimask_via_stability = True
    decoder.dynamic_multimask_stability_delta = 0.05
    decoder.dynamic_multimask_stability_thresh = 0.98
    return as_video_predictor(
        sam_model,
        sam_mask_decoder=decoder,
        fill_hole_area=8,
        non_overlap_masks=False,
        clear_non_cond_mem_around_input=False,
        add_all_frames_to_correct_as_cond=False,
        binarize_mask_from_pts_for_mem_enc=True,
    )


class FrameInHand:
    """The predictor's ``images``: the one frame being tracked, as SAM-2's (3, S, S) input.
    Asking for any other frame is a bug (``KeyError``)."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.index = -1
        self.tensor: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> torch.Tensor:
        if index != self.index or self.tensor is None:
            raise KeyError(f"frame {index} is not in hand (frame {self.index} is)")
        return self.tensor


class Tracker:
    """Tracks objects through frames given one at a time (see the module docstring).

    Per frame: ``begin(t, frame)``, then ``propagate()`` (every object started earlier
    is tracked onto frame t), then any ``add_mask`` / ``add_points`` on frame t, then
    ``end()`` (the frame's prompts into memory; its masks). Frame numbers ``t`` count the frames given (0, 1, 2, ...).

    Args:
        sam_model: the SAM-2 image model (weights shared, see ``video_predictor``).
        frame_count: the number of frames expected (SAM-2 uses it to bound its
            object-pointer memory on short clips); more may come.
        work_hw: (h, w) of the frames given and of the masks returned.
    """

    def __init__(self, sam_model: SAM2Base, frame_count: int, work_hw: tuple[int, int]) -> None:
        self.predictor = video_predictor(sam_model)
        self.work_hw = work_hw
        self.transform = SAM2Transforms(resolution=sam_model.image_size, mask_threshold=0.0)
        device = next(sam_model.parameters()).device
        self.frames = FrameInHand(max(1, frame_count))
        stride = max(1, int(getattr(sam_model, "memory_temporal_stride_for_eval", 1)))
        self.window = max(sam_model.num_maskmem, sam_model.max_obj_ptrs_in_encoder) * stride
        # SAM2VideoPredictor.init_state's dictionary, with the frame in hand as its images
        self.state = new_inference_state(self.frames, work_hw, device)

    @property
    def ids(self) -> list[int]:
        """The objects' ids, in the order they were started."""
        return list(self.state["obj_ids"])

    @property
    def t(self) -> int:
        return self.frames.index

    def begin(self, t: int, frame: np.ndarray) -> None:
        """Take frame ``t`` in hand (the previous one is let go): (H, W, 3) uint8 RGB of
        the clip's aspect, at any size; the decoded frame itself, so that SAM-2 resizes
        it to its input as sam2 does (not a shrunk copy, which would lose detail). Masks
        still come back at ``work_hw``."""
        if frame.ndim != 3 or frame.shape[2] != 3:
            raise ValueError(f"frame {t} must be (H, W, 3) RGB, got {frame.shape}")
        self.frames.index = t
        self.frames.tensor = self.transform(np.ascontiguousarray(frame)).to(self.state["device"])
        self.state["cached_features"] = {}
        if t >= self.state["num_frames"]:  # the clip is longer than it said
            self.state["num_frames"] = self.frames.count = t + 1

    def propagate(self) -> None:
        """Track every object started on an earlier frame onto the frame in hand."""
        p, s, t = self.predictor, self.state, self.t
        for obj_idx, outputs in s["output_dict_per_obj"].items():
            if t in outputs["cond_frame_outputs"] or not outputs["cond_frame_outputs"]:
                continue
            out, _ = run_single_frame(
                p,
                inference_state=s,
                output_dict=outputs,
                frame_idx=t,
                batch_size=1,
                is_init_cond_frame=False,
                point_inputs=None,
                mask_inputs=None,
                reverse=False,
                run_mem_encoder=True,
            )
            outputs["non_cond_frame_outputs"][t] = out
            s["frames_tracked_per_obj"][obj_idx][t] = {"reverse": False}
        self._forget_before(t - self.window)

    def add_mask(self, obj_id: int, mask: np.ndarray | torch.Tensor) -> None:
        """Start (or restart) object ``obj_id`` on the frame in hand from an (h, w) bool mask."""
        self.predictor.add_new_mask(self.state, self.t, obj_id, torch.as_tensor(mask, dtype=torch.bool))

    def add_points(
        self, obj_id: int, coords: np.ndarray | None, labels: np.ndarray | None, box: np.ndarray | None = None
    ) -> None:
        """Clicks on the frame in hand: start object ``obj_id``, or correct it when it is
        tracked here already. ``coords`` (P, 2) XY pixels of the working frame with
        ``labels`` (P,) 1 positive / 0 negative (None with a box alone); ``box`` (4,) XYXY."""
        self.predictor.add_new_points_or_box(
            self.state, self.t, obj_id, points=coords, labels=labels, box=box, clear_old_points=True
        )

    def remove(self, obj_id: int) -> None:
        """Stop tracking object ``obj_id``: its prompts and memory go, the others' stay
        (sam2's ``remove_object``; the others' masks on the frame in hand are kept)."""
        self.predictor.remove_object(self.state, obj_id, need_output=False)

    def end(self) -> torch.Tensor:
        """Finish the frame in hand: its prompts are encoded into SAM-2's memory (while
        the frame is still in hand). Returns (N, h, w) bool masks, one per object in
        ``ids`` order (empty where an object is absent)."""
        s, t = self.state, self.t
        h, w = self.work_hw
        if s["obj_ids"]:
            self.predictor.propagate_in_video_preflight(s)
        logits, side = [], self.predictor.image_size // 4  # SAM-2's low-res masks
        for outputs in s["output_dict_per_obj"].values():
            out = outputs["cond_frame_outputs"].get(t) or outputs["non_cond_frame_outputs"].get(t)
            low = out["pred_masks"] if out is not None else None
            logits.append(low if low is not None else torch.full((1, 1, side, side), -1.0, device=s["device"]))
        if not logits:
            return torch.zeros(0, h, w, dtype=torch.bool, device=s["device"])
        # (N, 1, 256, 256) low-res logits -> (N, h, w), as the predictor resizes to the video size
        low = torch.cat([x.float().to(s["device"]) for x in logits])
        return F.interpolate(low, size=(h, w), mode="bilinear", align_corners=False)[:, 0] > 0.0

    def _forget_before(self, horizon: int) -> None:
        """Drop memories and prompt masks of frames before ``horizon``: SAM-2 attends to
        at most ``window`` past frames, and conditioning frames are kept."""
        s = self.state
        for outputs in s["output_dict_per_obj"].values():
            stale = [f for f in outputs["non_cond_frame_outputs"] if f < horizon]
            for f in stale:
                del outputs["non_cond_frame_outputs"][f]
        for per_frame in (*s["frames_tracked_per_obj"].values(), *s["mask_inputs_per_obj"].values()):
            for f in [f for f in per_frame if f < horizon]:
                del per_frame[f]
