"""The Video tab's functions and its ``/segment_video`` endpoint: a clip in, its objects
found (or clicked on a frame) and tracked, an overlay video, a table of the tracks and
the tracks JSON out.

The clip stays a file (Gradio's upload); frames are decoded when needed, one at a time.
Clicks are kept as the prompts JSON the endpoint and the CLI take (``PROMPTS_FORMAT``):
a click on the frame shown adds a point for the chosen object on that frame.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import NamedTuple

import gradio as gr
import numpy as np

from maskadapter.engine.video import VideoResult, parse_prompts, track_clip
from maskadapter.engine.video_source import Clip, VideoLimits, open_clip_file
from maskadapter.errors import InputError
from maskadapter.output.render import draw_points
from maskadapter.output.video_export import track_name, write_video_outputs
from maskadapter.progress import within
from maskadapter.service import SegmentationService
from maskadapter.ui import endpoint_docs
from maskadapter.ui.endpoint_docs import documented
from maskadapter.ui.events import Runs, reporter
from maskadapter.ui.handlers import mask_settings

START_VIDEO = "Upload a clip, then Track: objects are found automatically, or click objects on a frame first."


def clip_of(service: SegmentationService, path: str | None, every: int = 1) -> Clip:
    """The uploaded clip, checked against the settings' limits (``InputError`` otherwise)."""
    if not path:
        raise InputError("upload a clip first (MP4, MOV, WebM or GIF)")
    return open_clip_file(path, VideoLimits.of(service.settings), int(every))


def frame_picture(clip: Clip, index: int, prompts: list[dict]) -> np.ndarray:
    """Frame ``index`` of ``clip`` (sought by its timestamp) with the clicks on it drawn."""
    index = int(np.clip(index, 0, clip.frame_count - 1))
    pixels = clip.frame(index)
    if pixels is None:
        raise InputError(f"frame {index} could not be decoded")
    points = [p for item in prompts if item["frame"] == index for p in item.get("points", [])]
    return draw_points(pixels, points, None, None)


def track_rows(result: VideoResult) -> list[list]:
    """One table row per track: name, label, score, frames visible, top-5."""
    rows = []
    for track in result.tracks:
        top = ", ".join(f"{label} {score:.2f}" for label, score in track.top5)
        label = track.label or "(unlabelled)"
        rows.append([track_name(track), label, round(track.score, 2), len(track.masks), top])
    return rows


def video_message(result: VideoResult) -> str:
    """One line on what was tracked."""
    named = sum(t.label is not None for t in result.tracks)
    objects = f"{len(result.tracks)} object{'s' if len(result.tracks) != 1 else ''}"
    text = f"{objects} ({named} named) tracked through {len(result.frames)} frames."
    return " ".join([text, *result.notes])


def run_video(service: SegmentationService, path, words: tuple, advanced: tuple, every, prompts, report) -> tuple:
    """Track a clip with the endpoint's inputs: ``words`` = (vocabulary, predefined, sam
    size), ``advanced`` = the Advanced settings (as the image endpoints'); ``prompts``
    the prompts JSON text ("" or "[]": automatic). Returns (result, overlay MP4 path,
    tracks JSON path, the tracks JSON)."""
    points_per_side, pred_iou, stability, mode, score_threshold, granularity, alpha = advanced
    clip = clip_of(service, path, every)
    try:
        given = parse_prompts(json.loads(prompts)) if str(prompts or "").strip() else []
    except json.JSONDecodeError as err:
        raise InputError(f"prompts must be JSON: {err}") from None
    vocabulary = service.vocabulary(*words[:2])
    segmenter = service.segmenter(words[2], report)
    settings = mask_settings(service.default_mask_settings(), points_per_side, pred_iou, stability)
    result = track_clip(
        segmenter,
        clip,
        vocabulary,
        prompts=given,
        every=int(every),
        video_side=service.settings.video_side,
        mask_settings=settings,
        mode=mode,
        score_threshold=float(score_threshold),
        granularity=float(granularity),
        progress=within(report, 0.0, 0.9),
    )
    service.output_dir.mkdir(parents=True, exist_ok=True)
    stem = f"video-{uuid.uuid4().hex[:8]}"
    writing = within(report, 0.9, 1.0)
    paths = write_video_outputs(result, service.output_dir, stem, float(alpha), label_maps=False, progress=writing)
    tracks = json.loads(paths["tracks"].read_text(encoding="utf-8"))
    return result, str(paths["overlay"]), str(paths["tracks"]), tracks


class VideoHandlers(NamedTuple):
    """The Video tab's functions; ``run`` and ``segment_video`` take the endpoint's inputs."""

    new_clip: Callable  # (clip): frame slider, frame picture, prompts text, message
    show_frame: Callable  # (clip, index, prompts text): frame picture, message
    click: Callable  # (clip, index, object, kind, prompts text, evt): frame picture, prompts text, message
    run: Callable  # the page's Track: overlay video, message, table rows, downloads
    segment_video: Callable  # the /segment_video endpoint: overlay video, message, table, tracks JSON


def _prompts(text: str) -> list[dict]:
    try:
        data = json.loads(text or "[]")
    except json.JSONDecodeError as err:
        raise InputError(f"the prompts are not JSON: {err}") from None
    parse_prompts(data)  # checked
    return data


def object_number(value: object) -> int:
    """The Video tab's "Object" field as an object id: a whole number of at least 1
    (empty means 1); anything else is refused with a message."""
    if value is None or value == "":
        return 1
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InputError(f"Object must be a whole number of 1 or more, got {value!r}") from None
    if number != int(number) or number < 1:
        raise InputError(f"Object must be a whole number of 1 or more, got {number:g}")
    return int(number)


def video_handlers(service: SegmentationService, runs: Runs) -> VideoHandlers:
    """The Video tab's functions (``VideoHandlers``)."""

    def new_clip(path):
        if not path:
            return gr.update(value=0, maximum=1), None, "[]", START_VIDEO
        clip = clip_of(service, path)
        slider = gr.update(value=0, maximum=max(1, clip.frame_count - 1))
        h, w = clip.hw
        text = f"{clip.frame_count} frames, {w}x{h}, {clip.fps:g} fps. Track, or click objects on a frame first."
        return slider, frame_picture(clip, 0, []), "[]", text

    def show_frame(path, index, prompts):
        return frame_picture(clip_of(service, path), int(index), _prompts(prompts)), ""

    def click(path, index, obj, kind, prompts, evt: gr.SelectData):
        clip, items = clip_of(service, path), _prompts(prompts)
        x, y = evt.index if isinstance(evt.index, list | tuple) and len(evt.index) == 2 else (None, None)
        if x is None:
            raise InputError("click on the frame to add a point")
        frame, obj = int(index), object_number(obj)
        entry = next((e for e in items if e["frame"] == frame and e["object"] == obj), None)
        if entry is None:
            entry = {"frame": frame, "object": obj, "points": []}
            items.append(entry)
        entry.setdefault("points", []).append([int(x), int(y), 1 if kind == "positive" else 0])
        return frame_picture(clip, frame, items), json.dumps(items), ""

    def run(
        video,
        vocabulary,
        predefined,
        sam_size,
        points_per_side,
        pred_iou_thresh,
        stability_score_thresh,
        mode,
        score_threshold,
        granularity,
        alpha,
        every,
        prompts,
        request: gr.Request,
        progress=gr.Progress(),
    ):
        advanced = points_per_side, pred_iou_thresh, stability_score_thresh, mode, score_threshold, granularity, alpha
        words = vocabulary, predefined, sam_size
        with runs.running(request.session_hash, "video") as stop:
            found = run_video(service, video, words, advanced, every, prompts, reporter(progress, stop))
        result, overlay, tracks_path, _ = found
        return overlay, video_message(result), track_rows(result), [overlay, tracks_path]

    @documented(endpoint_docs.SEGMENT_VIDEO)
    def segment_video(
        video,
        vocabulary,
        predefined,
        sam_size,
        points_per_side,
        pred_iou_thresh,
        stability_score_thresh,
        mode,
        score_threshold,
        granularity,
        alpha,
        every,
        prompts,
        progress=gr.Progress(),
    ):
        advanced = points_per_side, pred_iou_thresh, stability_score_thresh, mode, score_threshold, granularity, alpha
        words = vocabulary, predefined, sam_size
        result, overlay, _, tracks = run_video(service, video, words, advanced, every, prompts, reporter(progress))
        return overlay, video_message(result), track_rows(result), tracks

    return VideoHandlers(new_clip, show_frame, click, run, segment_video)
