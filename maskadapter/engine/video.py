"""Video: the objects of a clip found or clicked, tracked by SAM-2, named by Mask-Adapter.

``track_clip`` reads a clip frame by frame (``video_source.Clip``), shrinks each frame
to a working size (``WorkingFrame`` with the clip's long side at most ``video_side``)
and tracks objects through the frames with SAM-2's video predictor (``Tracker``):

- automatic (no prompts): on the first frame and every ``redetect_every`` frames after
  it, SAM-2 "segments everything" and Mask-Adapter names the masks, as for an image
  (``Segmenter.segment_automatic``, one segment per mask: objects, so two people are
  two tracks, not one "person"); a mask that overlaps no track's mask by ``match_iou``
  or more and lies mostly outside the objects followed (``PART_OF``; larger masks are
  taken first, so an object's parts do not become objects) starts a new track, up to
  ``max_objects`` tracks.
- point prompts (``VideoPrompt``): clicks or a box on a frame start an object; clicks
  for the same object on a later frame correct it there.

Naming: on the naming frames (the first frame of a track, and every ``redetect_every``
frames), Mask-Adapter gives each track's mask class probabilities on that frame; a
track's label, score and top-5 come from their mean over those frames (not the first
frame alone). A track whose best class is "others" (a one-class vocabulary) or scores
below ``score_threshold`` is unlabelled.

Memory: one frame in hand, SAM-2's memory windowed (``Tracker``), and per track and
frame only a COCO RLE of its working-size mask (what the outputs need), so a long clip
costs about what a short one does. ``maskadapter.output.video_export`` writes the
overlay video, label maps and tracks JSON from a ``VideoResult``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
from pycocotools import mask as mask_utils

from maskadapter.engine.mask_settings import AutoMaskSettings
from maskadapter.engine.painting_options import Painting
from maskadapter.engine.results import TOP_K, with_others
from maskadapter.engine.session import ImageSession
from maskadapter.engine.tracker import Tracker
from maskadapter.engine.transforms import WorkingFrame, box_corners, check_prompts, point_list
from maskadapter.engine.video_options import MAX_OBJECTS, PROMPTS_FORMAT, REDETECT_EVERY
from maskadapter.engine.video_source import Clip
from maskadapter.engine.vocabulary import Vocabulary
from maskadapter.errors import InputError
from maskadapter.progress import ProgressCallback, no_progress

if TYPE_CHECKING:
    from maskadapter.engine.segmenter import Segmenter

MATCH_IOU = 0.5  # a detection overlapping a track's mask this much is that track
PART_OF = 0.5  # a detection this much inside the objects followed is a part of them, not a new object
RETIRE_AFTER = 3  # kept frames an automatic track may be empty before it is retired (its slot freed)
RETURN_WITHIN = 3  # looks for new objects in which a retired track can come back with its id


@dataclass(frozen=True)
class VideoPrompt:
    """Clicks or a box on one frame for one object: ``frame`` is the clip's frame index
    (a kept frame when frames are skipped), ``obj`` the object's id (any int >= 1; the
    same id on a later frame corrects that object), ``points`` ``[[x, y, label], ...]``
    XY pixels of the clip's frames (label 1 positive, 0 negative), ``box`` XYXY pixels."""

    frame: int
    obj: int
    points: tuple = ()
    box: tuple | None = None


def parse_prompts(data: object) -> list[VideoPrompt]:
    """``VideoPrompt``s from JSON-like data (``PROMPTS_FORMAT``: a list of objects with
    ``frame``, ``object``, and ``points`` and/or ``box``); ``InputError`` says what is wrong.
    Prompts for the same frame and object are merged into one (their points in order);
    two different boxes for one frame and object are refused."""
    if not isinstance(data, list):
        raise InputError(f"prompts must be a list like {PROMPTS_FORMAT}")
    merged: dict[tuple, tuple[int, VideoPrompt]] = {}  # (frame, object) -> (first prompt's number, prompt)
    for i, item in enumerate(data, 1):
        if not isinstance(item, dict) or not {"frame", "object"} <= set(item) or set(item) - PROMPT_KEYS:
            raise InputError(f"prompt {i} must have frame, object and points and/or box: {PROMPTS_FORMAT}")
        points, box = item.get("points") or [], item.get("box")
        if not points and box is None:
            raise InputError(f"prompt {i} has neither points nor a box")
        points = tuple(tuple(p) if isinstance(p, list | tuple) else p for p in point_list(points))
        box = None if box is None else tuple(box_corners(box))
        key = (item["frame"], item["object"])
        if not all(isinstance(k, int | float | str) for k in key):
            raise InputError(f"prompt {i}: frame and object must be whole numbers")
        first, earlier = merged.get(key, (i, None))
        if earlier is not None:
            if earlier.box is not None and box is not None and earlier.box != box:
                raise InputError(
                    f"prompts {first} and {i} give two boxes for object {key[1]} on frame {key[0]}: give one"
                )
            points, box = earlier.points + points, box if box is not None else earlier.box
        merged[key] = (first, VideoPrompt(key[0], key[1], points, box))
    return [prompt for _, prompt in merged.values()]


PROMPT_KEYS = {"frame", "object", "points", "box"}


@dataclass
class Track:
    """One object through the clip. ``masks`` maps a clip frame index to the COCO RLE
    (pycocotools' dict, bytes counts) of its mask at the working size (absent: empty);
    ``samples`` are the (C',) class probabilities of the naming frames (``named_on``)."""

    id: int
    first_frame: int
    masks: dict[int, dict] = field(default_factory=dict)
    samples: list[np.ndarray] = field(default_factory=list)
    named_on: list[int] = field(default_factory=list)
    label: str | None = None
    class_id: int = -1
    score: float = 0.0
    top5: list[tuple[str, float]] = field(default_factory=list)

    def mask(self, index: int, work_hw: tuple[int, int]) -> np.ndarray:
        """(h, w) bool working-size mask on clip frame ``index`` (empty where absent)."""
        rle = self.masks.get(index)
        return np.zeros(work_hw, bool) if rle is None else mask_utils.decode(rle).astype(bool)


@dataclass
class VideoResult:
    """Tracks of one clip. ``frames``: the clip frame indices processed (every
    ``every``-th); ``frame``: the working frame (``frame.work_hw`` the masks' size,
    ``frame.orig_hw`` the clip's); ``labels`` the vocabulary's; ``notes``: what the
    user should know (objects not tracked past ``max_objects``)."""

    clip: Clip
    labels: list[str]
    frame: WorkingFrame
    every: int
    frames: list[int]
    tracks: list[Track]
    mode: str
    notes: list[str] = field(default_factory=list)


def _encode(masks: torch.Tensor) -> list[dict | None]:
    """(N, h, w) bool -> N COCO RLEs (bytes counts), None for an empty mask."""
    if not len(masks):
        return []
    array = np.asfortranarray(masks.cpu().numpy().transpose(1, 2, 0).astype(np.uint8))
    present = masks.flatten(1).any(1).tolist()
    return [rle if keep else None for rle, keep in zip(mask_utils.encode(array), present, strict=True)]


def _iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(A, h, w) and (B, h, w) bool -> (A, B) float IoU (0 where both are empty)."""
    fa, fb = a.flatten(1).float(), b.flatten(1).float()
    inter = fa @ fb.T
    union = fa.sum(1)[:, None] + fb.sum(1)[None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=1), torch.zeros_like(inter))


def _check_prompts(prompts: Sequence[VideoPrompt], clip: Clip, every: int) -> dict[int, list[VideoPrompt]]:
    """Prompts by processed frame, each checked against the clip (``InputError`` otherwise)."""
    by_frame: dict[int, list[VideoPrompt]] = {}
    for i, prompt in enumerate(prompts, 1):
        if not isinstance(prompt.obj, int) or isinstance(prompt.obj, bool) or prompt.obj < 1:
            raise InputError(f"prompt {i}: the object id must be a whole number >= 1, got {prompt.obj!r}")
        if not isinstance(prompt.frame, int) or not 0 <= prompt.frame < clip.frame_count:
            raise InputError(f"prompt {i}: frame must be 0 to {clip.frame_count - 1}, got {prompt.frame!r}")
        if prompt.frame % every:
            raise InputError(f"prompt {i}: frame {prompt.frame} is skipped (every {every}th frame is kept)")
        check_prompts(list(prompt.points), prompt.box, clip.hw)
        by_frame.setdefault(prompt.frame, []).append(prompt)
    return by_frame


def _name(track: Track, vocabulary: Vocabulary, score_threshold: float) -> None:
    """Label, score and top-5 of a track from the mean of its naming samples."""
    c = len(vocabulary)
    if not track.samples:
        return
    mean = np.mean(track.samples, axis=0)
    best = int(mean.argmax())
    order = np.argsort(-mean[:c], kind="stable")[:TOP_K]
    track.top5 = [(vocabulary.labels[i], float(mean[i])) for i in order]
    if best < c and mean[best] >= score_threshold:
        track.label, track.class_id, track.score = vocabulary.labels[best], best, float(mean[best])


def track_clip(
    segmenter: Segmenter,
    clip: Clip,
    vocabulary: Vocabulary,
    *,
    prompts: Sequence[VideoPrompt] = (),
    every: int = 1,
    video_side: int = 640,
    redetect_every: int = REDETECT_EVERY,
    max_objects: int = MAX_OBJECTS,
    match_iou: float = MATCH_IOU,
    retire_after: int = RETIRE_AFTER,
    mask_settings: AutoMaskSettings | None = None,
    mode: str = "semantic",
    score_threshold: float = 0.0,
    granularity: float = 0.8,
    progress: ProgressCallback = no_progress,
    make_tracker: Callable[..., Tracker] = Tracker,
) -> VideoResult:
    """Track and name the objects of ``clip`` (see the module docstring).

    Args:
        segmenter: the ``Segmenter`` whose models, lock, autocast and store are used.
        prompts: ``VideoPrompt``s; none: automatic (objects found and re-found).
        every: keep every ``every``-th frame; video_side: the working size's long side.
        redetect_every: kept frames between looks for new objects and between namings.
        max_objects: most tracks followed at once; match_iou: a detection's IoU with a
            track that makes it that track.
        retire_after: kept frames an automatic track may be empty before it is retired
            (no longer tracked; a matching detection within ``RETURN_WITHIN`` looks gets
            its id back).
        mask_settings, score_threshold: as in ``segment_automatic``; mode, granularity:
            checked as there, but objects are found one per mask whatever the mode.
        progress: hears (fraction, message) per frame, and within a frame's detection;
            it may raise to stop the run (the app's Stop).
        make_tracker: builds the ``Tracker`` (tests give a tracker with known masks).
    Returns:
        a ``VideoResult``; its tracks ordered by id.
    """
    painting = Painting(mode, score_threshold, granularity)  # checked before any work
    whole = (("every", every), ("redetect_every", redetect_every), ("max_objects", max_objects))
    for name, value in (*whole, ("retire_after", retire_after)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise InputError(f"{name} must be a whole number, at least 1, got {value!r}")
    if video_side < 64:
        raise InputError(f"video_side must be at least 64, got {video_side}")
    by_frame = _check_prompts(prompts, clip, every)
    frame = WorkingFrame(clip.hw, video_side)
    segmenter.text_embeddings(with_others(vocabulary))  # a bad vocabulary fails before any frame
    tracker = make_tracker(segmenter.models.sam2, clip.kept(every), frame.work_hw)
    run = _Run(segmenter, tracker, vocabulary, clip, frame, painting, mask_settings, max_objects, match_iou)
    run.automatic, run.retire_after = not prompts, retire_after
    result = VideoResult(clip, list(vocabulary.labels), frame, every, [], [], "points" if prompts else "automatic")
    for t, (index, pixels) in enumerate(clip.frames(every)):
        total = max(clip.kept(every), t + 1)
        progress(t / total, f"frame {t + 1} of {total}")
        look = t % redetect_every == 0
        here = _within_frame(progress, t, total)
        run.frame(t, index, pixels, frame.shrink(pixels), by_frame.get(index, ()), look and not prompts, look, here)
        result.frames.append(index)
    progress(1.0, f"{len(result.frames)} frames tracked")
    for track in run.tracks.values():
        _name(track, vocabulary, score_threshold)
    result.tracks = [run.tracks[k] for k in sorted(run.tracks) if run.tracks[k].masks]
    unseen = sorted(k for k, track in run.tracks.items() if not track.masks)  # clicked, never a mask
    if unseen:
        result.notes.append(f"SAM-2 found no mask for object {', '.join(map(str, unseen))} on any frame")
    if run.dropped:
        result.notes.append(f"{run.dropped} more objects were found but not tracked: at most {max_objects} tracks")
    return result


class _Run:
    """One ``track_clip`` run: the tracker, the tracks so far and how one frame is done."""

    def __init__(self, segmenter, tracker, vocabulary, clip, frame, painting, mask_settings, max_objects, match_iou):
        self.segmenter, self.tracker, self.vocabulary, self.clip = segmenter, tracker, vocabulary, clip
        self.work_frame, self.painting, self.mask_settings = frame, painting, mask_settings
        self.max_objects, self.match_iou = max_objects, match_iou
        self.classes = with_others(vocabulary)
        self.tracks: dict[int, Track] = {}
        self.dropped = 0  # objects found past max_objects
        self.automatic, self.retire_after, self.looks = True, RETIRE_AFTER, 0  # looks: detections so far
        self.missing: dict[int, int] = {}  # track id -> kept frames it has been empty in a row
        self.last: dict[int, torch.Tensor] = {}  # track id -> its last non-empty mask
        self.retired: dict[int, tuple[int, torch.Tensor]] = {}  # track id -> (looks when retired, last mask)

    def frame(self, t, index, pixels, work, prompts, detect, name, progress) -> None:
        """Frame ``t`` (clip frame ``index``: ``pixels`` as decoded, for SAM-2's tracking,
        and ``work`` at the working size, for detection and naming): track,
        apply its prompts, look for new objects (``detect``), name the tracks (``name``:
        all of them; else only those starting here), keep each track's mask. ``progress``
        hears the frame's own stages (fractions of the frame)."""
        s = self.segmenter
        with s.lock, torch.inference_mode(), s.autocast():
            self.tracker.begin(t, pixels)  # SAM-2 resizes the decoded frame itself
            self.tracker.propagate()
            for prompt in prompts:
                self._click(prompt)
                self.tracks.setdefault(prompt.obj, Track(prompt.obj, index))
            masks = self.tracker.end()
        session, opened = _frame_session(s, work) if detect else (None, False)
        try:
            if detect:
                masks = self._detect(session, masks, index, progress)
            ids = self.tracker.ids
            for obj, rle in zip(ids, _encode(masks), strict=True):
                if rle is not None:
                    self.tracks[obj].masks[index] = rle
            if self.automatic:
                self._retire(ids, masks)
            named = [k for k, o in enumerate(ids) if (name or self.tracks[o].first_frame == index) and masks[k].any()]
            if named:
                if session is None:
                    session, opened = _frame_session(s, work)
                probs = s.mask_probabilities(session, masks[named], self.classes).cpu().numpy()
                for k, row in zip(named, probs, strict=True):
                    self.tracks[ids[k]].samples.append(row)
                    self.tracks[ids[k]].named_on.append(index)
        finally:  # a frame's session leaves the store with the frame (a stopped run's too)
            if opened:
                s.store.discard(session.key)

    def _click(self, prompt: VideoPrompt) -> None:
        coords, labels, box = check_prompts(list(prompt.points), prompt.box, self.clip.hw)
        (h, w), (H, W) = self.work_frame.work_hw, self.clip.hw
        scale = np.array([w / W, h / H], np.float32)
        box = None if box is None else box * np.tile(scale, 2)
        self.tracker.add_points(prompt.obj, None if coords is None else coords * scale, labels, box)

    def _detect(self, session, masks: torch.Tensor, index: int, progress: ProgressCallback) -> torch.Tensor:
        """Segment the frame as an image; segments overlapping no track start tracks.
        Returns the frame's masks, the new tracks' included."""
        found = self.segmenter.segment_automatic(  # one segment per SAM-2 mask: objects, not classes
            session, self.vocabulary, self.mask_settings, "per_mask", self.painting.score_threshold, progress=progress
        )
        self.looks += 1
        self.retired = {o: r for o, r in self.retired.items() if self.looks - r[0] <= RETURN_WITHIN}
        if not found.segments:
            return masks
        detected = torch.stack([torch.as_tensor(seg.mask) for seg in found.segments]).to(masks.device)  # frame size
        fresh = self._new_objects(detected, masks)
        room = max(0, self.max_objects - len(self.tracker.ids))
        self.dropped += max(0, len(fresh) - room)
        if not fresh[:room]:
            return masks
        with self.segmenter.lock, torch.inference_mode(), self.segmenter.autocast():
            started, back = [], {}
            for k in fresh[:room]:
                obj = self._returning(detected[k], getattr(found.segments[k], "class_id", -1))
                if obj is None:
                    obj = max(self.tracks, default=0) + 1
                    self.tracks[obj] = Track(obj, index)
                else:
                    back[obj] = self.retired.pop(obj)
                started.append(obj)
                self.tracker.add_mask(obj, detected[k])
                self.missing[obj] = 0
            masks, ids = self.tracker.end(), self.tracker.ids
            # SAM-2 may give no mask at all for a small detected one (at a small working
            # size): such a track would have no frame, so it is not kept
            empty = {o for k, o in enumerate(ids) if o in started and not masks[k].any()}
            for obj in empty:
                self.tracker.remove(obj)
                if obj in back:
                    self.retired[obj] = back[obj]
                else:
                    del self.tracks[obj]
            return masks[[k for k, o in enumerate(ids) if o not in empty]]

    def _returning(self, mask: torch.Tensor, class_id: int) -> int | None:
        """The retired track a new object is, if any: retired within ``RETURN_WITHIN``
        looks, its last mask's area within a factor of 2 of ``mask``'s, and the same
        class when both are known (the track's from its naming samples); the most
        recently retired first."""
        area = int(mask.sum())
        for obj, (_, last) in sorted(self.retired.items(), key=lambda item: -item[1][0]):
            samples = self.tracks[obj].samples
            named = int(np.mean(samples, axis=0)[: len(self.vocabulary)].argmax()) if samples else -1  # not "others"
            if 0.5 <= area / max(1, int(last.sum())) <= 2 and (class_id < 0 or named < 0 or named == class_id):
                return obj
        return None

    def _retire(self, ids: list[int], masks: torch.Tensor) -> None:
        """Retire the automatic tracks empty on ``retire_after`` kept frames in a row:
        they leave SAM-2's tracking (freeing their slot and its cost per frame) and may
        come back with their id (``_returning``)."""
        for k, obj in enumerate(ids):
            if masks[k].any():
                self.missing[obj], self.last[obj] = 0, masks[k]
                continue
            self.missing[obj] = self.missing.get(obj, 0) + 1
            if self.missing[obj] >= self.retire_after and obj in self.last:
                with self.segmenter.lock, torch.inference_mode():
                    self.tracker.remove(obj)
                self.retired[obj] = (self.looks, self.last.pop(obj))


    def _new_objects(self, detected: torch.Tensor, masks: torch.Tensor) -> list[int]:
        """The detections (N, h, w) that are new objects given the tracks' masks (T, h, w):
        largest first, those matching no track (IoU under ``match_iou``) and lying mostly
        (``PART_OF``) outside every object followed, those just taken included; so the
        parts SAM-2 also finds inside an object (a shirt, a wheel) are not new objects."""
        areas = detected.flatten(1).sum(1)
        overlap = _iou(detected, masks) if len(masks) else torch.zeros(len(detected), 1, device=detected.device)
        taken = masks.any(0) if len(masks) else torch.zeros_like(detected[0])  # pixels of objects followed
        fresh = []
        for k in torch.argsort(areas, descending=True, stable=True).tolist():
            inside = float((detected[k] & taken).sum()) / max(1, int(areas[k]))
            if float(overlap[k].max()) < self.match_iou and inside < PART_OF:
                fresh.append(k)
                taken = taken | detected[k]
        return fresh


def _frame_session(segmenter: Segmenter, work: np.ndarray) -> tuple[ImageSession, bool]:
    """The store's session of a working-size frame, and whether this call opened it."""
    session = ImageSession.from_image(work)  # the frame's pixels hashed once
    opened = session.key not in segmenter.store
    return segmenter.store.adopt(session), opened


def _within_frame(progress: ProgressCallback, t: int, count: int) -> ProgressCallback:
    """A frame's own progress (its detection's stages) as a slice of the clip's."""
    total = max(count, t + 1)

    def report(fraction: float, message: str) -> None:
        progress((t + fraction) / total, f"frame {t + 1} of {total}: {message}")

    return report
