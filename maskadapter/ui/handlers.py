"""The functions the app's events and API endpoints call: inputs from the components,
a service call, and the outputs the components show (through ``present``).

Each ``*_handler(s)`` function takes the shared ``SegmentationService`` and returns the
function(s) to wire, not yet wrapped: ``app.py`` wraps API endpoints in ``friendly``
and UI events in ``gentle`` (``maskadapter.ui.events``), and both in ``gpu``. An
endpoint's parameter names and docstring are its API (``endpoint_docs``).
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import Any, NamedTuple

import gradio as gr

from maskadapter.engine.mask_settings import AutoMaskSettings
from maskadapter.errors import Cancelled, InputError
from maskadapter.output.render import COMPARE_TITLES, side_by_side
from maskadapter.point_prompts import PointState, parse_box, parse_points
from maskadapter.service import Output, SegmentationService
from maskadapter.ui import endpoint_docs
from maskadapter.ui.endpoint_docs import documented
from maskadapter.ui.events import Runs, cancelled_check, pixels, reporter, served
from maskadapter.ui.explore import ALL, Exploration, explore
from maskadapter.ui.present import (
    START,
    automatic_message,
    banner_error,
    box_text,
    change_rows,
    compare_message,
    downloads,
    legend_html,
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


def _run_automatic(
    run: Callable, defaults: AutoMaskSettings, image, words: tuple, advanced: tuple, progress, stop=None
) -> Any:
    """``service.automatic`` or ``service.compare`` (``run``) on the endpoints' inputs:
    ``words`` = (vocabulary, predefined, sam size), ``advanced`` = (points per side,
    pred IoU and stability thresholds, mode, score threshold, granularity, alpha);
    ``stop``: the run's ``Runs`` event."""
    points_per_side, pred_iou, stability, mode, score_threshold, granularity, alpha = advanced
    settings = mask_settings(defaults, points_per_side, pred_iou, stability)
    numbers = float(score_threshold), float(granularity), float(alpha)
    return run(pixels(image), *words, settings, mode, *numbers, reporter(progress, stop))


def automatic_handler(service: SegmentationService) -> Callable:
    """The ``/segment_automatic`` endpoint: overlay, message, table rows, downloads and
    segments JSON."""
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
        for out, _ in _run_automatic(service.automatic_steps, defaults, image, words, advanced, progress):
            picture = served(out.picture, service.output_dir)
            yield picture, automatic_message(out), table_rows(out.result), downloads(out), out.segments

    return segment_automatic


def shown(exploration: Exploration, choice: str | None) -> dict:
    """The explorable picture's update: the layers of ``choice`` (``ALL`` or a class)."""
    return gr.update(value=exploration.shown(choice), color_map=exploration.colors)


class AutomaticView(NamedTuple):
    """The Automatic tab's functions for the page (the endpoint is ``automatic_handler``).
    ``run``'s outputs: picture, message, table rows, downloads, "Show" choices,
    exploration (state), details."""

    run: Callable  # the endpoint's inputs, then the request
    show: Callable  # (choice, exploration): the picture
    pick: Callable  # (exploration, evt): the selected segment's details (picture or legend)
    pick_row: Callable  # (exploration, evt): the selected table row's details


def page_run(service: SegmentationService, runs: Runs, tab: str, method: Callable, finish: Callable) -> Callable:
    """A tab's run for the page, with the endpoints' inputs: ``method``
    (``service.automatic_steps`` or ``service.compare``) under the tab's ``Runs`` entry
    (its Stop ends it), then ``finish(image, what method returned)`` gives the outputs;
    a ``method`` that yields (results as they improve) gives outputs for each."""
    defaults = service.default_mask_settings()
    steps = inspect.isgeneratorfunction(method)

    def run(
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
        request: gr.Request,
        progress=gr.Progress(),
    ):
        words = vocabulary, predefined, sam_size
        advanced = points_per_side, pred_iou_thresh, stability_score_thresh, mode, score_threshold, granularity, alpha
        with runs.running(request.session_hash, tab) as stop:
            found = _run_automatic(method, defaults, image, words, advanced, progress, stop)
            for each in found if steps else (found,):
                yield finish(image, each)

    return run


def automatic_view(service: SegmentationService, runs: Runs) -> AutomaticView:
    """The Automatic tab's page functions (``AutomaticView``)."""

    def finish(image, found):
        out, _ = found
        exploration = explore(pixels(image), out.result, service.output_dir)
        overlay = served(out.picture, service.output_dir, "overlay")
        files = [*(downloads(out) or []), *([overlay] if isinstance(overlay, str) else [])] or None
        names = [layer.name for layer in exploration.layers]
        choices = gr.update(choices=[ALL, *exploration.classes], value=ALL)
        message = automatic_message(out)
        if exploration.layers:
            message += " Point at a segment (picture, legend or table) to see it; click it for its details."
        rows = table_rows(out.result, names, digits=2)
        return shown(exploration, ALL), message, rows, files, choices, exploration, ""

    def show(choice, exploration):
        if exploration is None:
            return gr.skip()
        return shown(exploration, choice)

    def pick(exploration, evt: gr.SelectData):
        if exploration is None:
            return gr.skip()
        return exploration.details.get(str(evt.value), "")

    def pick_row(exploration, evt: gr.SelectData):
        if exploration is None or not evt.row_value:
            return gr.skip()
        return exploration.details.get(str(evt.row_value[0]), "")

    return AutomaticView(page_run(service, runs, "automatic", service.automatic_steps, finish), show, pick, pick_row)


def compare_handler(service: SegmentationService) -> Callable:
    """The ``/compare`` endpoint: both overlays, the message, both tables and both
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


def compare_view(service: SegmentationService, runs: Runs) -> Callable:
    """The Compare tab's page run: the slider's two pictures (Mask-Adapter, plain mask
    pooling: the overlays without their legends, the same size), the message, the
    changed masks and the downloads (the side-by-side PNG with legends, both label maps
    and segments JSON)."""

    def finish(image, found):
        adapter, pooling = found.adapter, found.pooling
        height = adapter.result.image_size[0]  # the overlays' legends start below the photo
        slider = tuple(served(out.picture[:height], service.output_dir) for out in (adapter, pooling))
        both = served(side_by_side([adapter.picture, pooling.picture], COMPARE_TITLES), service.output_dir, "compare")
        files = [*(downloads(adapter) or []), *(downloads(pooling) or []), *([both] if isinstance(both, str) else [])]
        return slider, compare_message(found), change_rows(found), files or None

    return page_run(service, runs, "compare", service.compare, finish)


class PointHandlers(NamedTuple):
    """The point tab's functions. Each UI event's outputs are the tab's nine
    (``POINT_OUTPUTS``): photo, message, table rows, downloads, segment JSON, points
    text, box text, legend, state."""

    new_photo: Callable  # (image, state): a new or removed photo
    click: Callable  # (kind, vocabulary, predefined, sam_size, alpha, state, evt, request, progress)
    edit: Callable[[Callable[[PointState], None]], Callable]  # an edit of the state, then label again
    segment_points: Callable  # the /segment_points endpoint: overlay, segments JSON


POINT_OUTPUTS = 9


def point_handlers(service: SegmentationService, runs: Runs) -> PointHandlers:
    """The point tab's functions (``PointHandlers``)."""

    def new_photo(image, state):
        if image is None:  # the photo was removed
            return None, START, [], None, None, "[]", "", "", PointState()
        state = service.open_point_image(pixels(image))
        picture = served(service.point_picture(state), service.output_dir)  # as decoded: EXIF orientation applied
        return picture, "Click on an object to add a point.", [], None, None, "[]", "", "", state

    def label(state, vocabulary, predefined, sam_size, alpha, request, progress):
        with runs.running(request.session_hash if request else None, "points") as stop:
            out: Output = service.points(state, vocabulary, predefined, sam_size, alpha, reporter(progress, stop))
        return (
            served(out.picture, service.output_dir),
            points_message(out, state),
            table_rows(out.result, digits=2),
            downloads(out),
            out.segments or None,
            state.points_json(),
            box_text(state),
            legend_html(out.result),
            state,
        )

    def changed(state, change, vocabulary, predefined, sam_size, alpha, request, progress):
        """Apply ``change`` to the user's state and label again. Events of one browser
        session take turns and change the session's state object in place, so a click
        made while another is processed sees that one's point (none is lost); a failed
        event leaves the state as it was."""
        cancelled = cancelled_check()  # taken now: a click stopped while it waits its turn is dropped
        with runs.turn(request.session_hash if request else None, "points"):
            if cancelled():
                raise Cancelled("stopped")
            work = state.copy()
            change(work)
            if work.key is None:
                raise InputError("upload a photo first")
            outputs = label(work, vocabulary, predefined, sam_size, alpha, request, progress)
            state.assign(work)
        return (*outputs[:-1], state)

    def click(
        kind,
        vocabulary,
        predefined,
        sam_size,
        alpha,
        state,
        evt: gr.SelectData,
        request: gr.Request,
        progress=gr.Progress(),
    ):
        index = evt.index if isinstance(evt.index, list | tuple) and len(evt.index) == 2 else (None, None)
        add = lambda work: work.add(index[0], index[1], kind)  # noqa: E731
        return changed(state, add, vocabulary, predefined, sam_size, alpha, request, progress)

    def edit(operation: Callable[[PointState], None]) -> Callable:
        def handler(vocabulary, predefined, sam_size, alpha, state, request: gr.Request, progress=gr.Progress()):
            return changed(state, operation, vocabulary, predefined, sam_size, alpha, request, progress)

        return handler

    @documented(endpoint_docs.SEGMENT_POINTS)
    def segment_points(image, points, vocabulary, predefined, box, sam_size, alpha, progress=gr.Progress()):
        state = service.prompt_state(pixels(image), parse_points(points), parse_box(box))
        out = service.points(state, vocabulary, predefined, sam_size, alpha, reporter(progress))
        return served(out.picture, service.output_dir), out.segments

    return PointHandlers(new_photo, click, edit, segment_points)


def upload_check(service: SegmentationService) -> Callable:
    """For the Automatic and Compare photos: an upload that is not an image is refused
    at once (the message box says why, the previous photo comes back); a good one is
    kept (a PNG path, for that). Outputs: photo, message, last good photo (state)."""

    def check(image, last):
        if image is None:
            return gr.skip(), "", None
        good = served(pixels(image), service.output_dir, "photo")  # raises the file's InputError
        return gr.skip(), "", good if isinstance(good, str) else None

    return check


def upload_restore(image, last) -> dict[int, Any]:
    """``gentle``'s restore for ``upload_check``: the last good photo back (None: empty)."""
    return {0: last}


def shown_in_banner(service: SegmentationService) -> Callable[[Exception], str | None]:
    """For ``gentle``: a tab's short line for the error the page's banner already shows
    in full (the models could not be loaded), None for any other."""
    return lambda err: banner_error(service.load_status(), err)
