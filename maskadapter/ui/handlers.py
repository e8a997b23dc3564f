"""The functions the app's events and API endpoints call: inputs from the components,
a service call, and the outputs the components show (through ``present``).

Each ``*_handler(s)`` function takes the shared ``SegmentationService`` and returns the
function(s) to wire, not yet wrapped: ``app.py`` wraps API endpoints in ``friendly``
and UI events in ``gentle`` (``maskadapter.ui.events``), and both in ``gpu``. An
endpoint's parameter names and docstring are its API (``endpoint_docs``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import gradio as gr

from maskadapter.engine.mask_settings import AutoMaskSettings
from maskadapter.errors import InputError
from maskadapter.point_prompts import PointState, parse_box, parse_points
from maskadapter.service import Output, SegmentationService
from maskadapter.ui import endpoint_docs
from maskadapter.ui.endpoint_docs import documented
from maskadapter.ui.events import pixels, reporter, served
from maskadapter.ui.present import (
    START,
    automatic_message,
    compare_message,
    downloads,
    points_message,
    table_rows,
)


def mask_settings(defaults: AutoMaskSettings, points_per_side, pred_iou_thresh, stability_score_thresh):
    """The demo's SAM-2 settings with the three the UI shows replaced."""
    return dataclasses.replace(
        defaults,
        points_per_side=int(points_per_side),
        pred_iou_thresh=float(pred_iou_thresh),
        stability_score_thresh=float(stability_score_thresh),
    )


def _run_automatic(run: Callable, defaults: AutoMaskSettings, image, words: tuple, advanced: tuple, progress) -> Any:
    """``service.automatic`` or ``service.compare`` (``run``) on the endpoints' inputs:
    ``words`` = (vocabulary, predefined, sam size), ``advanced`` = (points per side,
    pred IoU and stability thresholds, mode, score threshold, granularity, alpha)."""
    points_per_side, pred_iou, stability, mode, score_threshold, granularity, alpha = advanced
    settings = mask_settings(defaults, points_per_side, pred_iou, stability)
    numbers = float(score_threshold), float(granularity), float(alpha)
    return run(pixels(image), *words, settings, mode, *numbers, reporter(progress))


def automatic_handler(service: SegmentationService) -> Callable:
    """The Automatic tab's ``/segment_automatic``: overlay, message, table rows,
    downloads and segments JSON."""
    defaults = service.default_mask_settings()

    @documented(endpoint_docs.SEGMENT_AUTOMATIC)
    def segment_automatic(
        image,
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
        progress=gr.Progress(),
    ):
        words = vocabulary, predefined, sam_size
        advanced = points_per_side, pred_iou_thresh, stability_score_thresh, mode, score_threshold, granularity, alpha
        out, _ = _run_automatic(service.automatic, defaults, image, words, advanced, progress)
        picture = served(out.picture, service.output_dir)
        return picture, automatic_message(out), table_rows(out.result), downloads(out), out.segments

    return segment_automatic


def compare_handler(service: SegmentationService) -> Callable:
    """The Compare tab's ``/compare``: both overlays, the message, both tables and both
    segments JSON."""
    defaults = service.default_mask_settings()

    @documented(endpoint_docs.COMPARE)
    def compare(
        image,
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
        progress=gr.Progress(),
    ):
        words = vocabulary, predefined, sam_size
        advanced = points_per_side, pred_iou_thresh, stability_score_thresh, mode, score_threshold, granularity, alpha
        found = _run_automatic(service.compare, defaults, image, words, advanced, progress)
        adapter, pooling = found.adapter, found.pooling
        rows = table_rows(adapter.result), table_rows(pooling.result)
        pictures = (served(adapter.picture, service.output_dir), served(pooling.picture, service.output_dir))
        return *pictures, compare_message(found), *rows, adapter.segments, pooling.segments

    return compare


class PointHandlers(NamedTuple):
    """The point tab's functions. Each UI event's outputs are the tab's seven:
    photo, message, table rows, downloads, segment JSON, points text, state."""

    new_photo: Callable  # (image, state): a new or removed photo
    click: Callable  # (kind, vocabulary, predefined, sam_size, alpha, state, evt, progress)
    edit: Callable[[Callable[[PointState], None]], Callable]  # an edit of the state, then label again
    segment_points: Callable  # the /segment_points endpoint: overlay, segments JSON


def point_handlers(service: SegmentationService) -> PointHandlers:
    """The point tab's functions (``PointHandlers``)."""

    def new_photo(image, state):
        if image is None:  # the photo was removed
            return None, START, [], None, None, "[]", PointState()
        state = service.open_point_image(pixels(image))
        picture = served(service.point_picture(state), service.output_dir)  # as decoded: EXIF orientation applied
        return picture, "Click on an object to add a point.", [], None, None, "[]", state

    def label(state, vocabulary, predefined, sam_size, alpha, progress):
        out: Output = service.points(state, vocabulary, predefined, sam_size, alpha, reporter(progress))
        message = points_message(out, state)
        return (
            served(out.picture, service.output_dir),
            message,
            table_rows(out.result),
            downloads(out),
            out.segments or None,
            state.points_json(),
            state,
        )

    def click(kind, vocabulary, predefined, sam_size, alpha, state, evt: gr.SelectData, progress=gr.Progress()):
        state = state.copy()
        index = evt.index if isinstance(evt.index, list | tuple) and len(evt.index) == 2 else (None, None)
        state.add(index[0], index[1], kind)
        return label(state, vocabulary, predefined, sam_size, alpha, progress)

    def edit(operation: Callable[[PointState], None]) -> Callable:
        def handler(vocabulary, predefined, sam_size, alpha, state, progress=gr.Progress()):
            state = state.copy()
            operation(state)
            if state.key is None:
                raise InputError("upload a photo first")
            return label(state, vocabulary, predefined, sam_size, alpha, progress)

        return handler

    @documented(endpoint_docs.SEGMENT_POINTS)
    def segment_points(image, points, vocabulary, predefined, box, sam_size, alpha, progress=gr.Progress()):
        state = service.prompt_state(pixels(image), parse_points(points), parse_box(box))
        out = service.points(state, vocabulary, predefined, sam_size, alpha, reporter(progress))
        return served(out.picture, service.output_dir), out.segments

    return PointHandlers(new_photo, click, edit, segment_points)
