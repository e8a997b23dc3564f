"""Gradio wiring the app's tabs share: API endpoints on hidden components, page runs
with one message line, a Stop button and refusal of non-images at upload, tables that
wrap instead of cutting columns, and the Advanced settings the Automatic and Compare
tabs share. ``app.py`` lays the tabs out with these.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import gradio as gr

from maskadapter.service import SegmentationService
from maskadapter.ui.events import Runs, friendly, gentle, gpu
from maskadapter.ui.handlers import upload_check, upload_restore
from maskadapter.ui.present import TABLE_HEADERS, TRACK_HEADERS

MODES = [("semantic map", "semantic"), ("one label per mask", "per_mask")]


def wire_api(fn: Callable, api_name: str, inputs: list, outputs: list, limit: int) -> None:
    """``fn`` as the API endpoint ``api_name`` (clicked by a hidden button; failures as
    short errors); its outputs are hidden components."""
    with gr.Group(visible=False):
        button = gr.Button(api_name)
    button.click(
        friendly(gpu(fn)),
        inputs=inputs,
        outputs=outputs,
        api_name=api_name,
        concurrency_id="automatic",
        concurrency_limit=limit,
    )


def wire_run(
    fn: Callable,
    buttons: tuple[gr.Button, gr.Button],
    inputs: list,
    outputs: list,
    message: int,
    limit: int,
    stop: Callable,
    shown: Callable,
) -> None:
    """``fn`` as the page's run (``buttons[0]``; a private endpoint): the message box
    (output ``message``) is cleared first and is the one place of its progress and
    errors; ``buttons[1]`` stops it (``stop(request)`` ends the work, Gradio drops the
    request; the previous result stays)."""
    run_button, stop_button = buttons
    box = outputs[message]
    cleared = run_button.click(lambda: "", outputs=[box], queue=False, api_visibility="private")
    run = cleared.then(
        gentle(len(outputs), message, shown=shown)(gpu(fn)),
        inputs=inputs,
        outputs=outputs,
        api_visibility="private",
        concurrency_id="automatic",
        concurrency_limit=limit,
        show_progress_on=[box],
    )
    stop_button.click(stop, outputs=[box], cancels=[run], queue=False, api_visibility="private")


def stopper(runs: Runs, tab: str) -> Callable:
    """The Stop button's function for ``tab``: the run's work ends at its next progress
    report; the message says so."""

    def stop(request: gr.Request):
        return "Stopped." if runs.stop(request.session_hash, tab) else gr.skip()

    return stop


def upload_guard(service: SegmentationService, image: gr.Image, message: gr.Markdown) -> None:
    """Refuse an upload that is not an image at once, keeping the previous photo."""
    last = gr.State(None, time_to_live=3600)
    guard = gentle(3, 1, restore=upload_restore)(upload_check(service))
    image.upload(guard, inputs=[image, last], outputs=[image, message, last], api_visibility="private", queue=False)


def segment_table(label: str, elem_id: str, headers: list[str] = TABLE_HEADERS, **kwargs) -> gr.Dataframe:
    """A read-only table whose text wraps between words (no column cut at 1400 px or on
    a phone; the browser sizes the columns to their words, so numbers never break)."""
    classes = ["segment-table", *kwargs.pop("elem_classes", [])]
    return gr.Dataframe(
        headers=headers,
        label=label,
        interactive=False,
        wrap=True,
        elem_id=elem_id,
        elem_classes=classes,
        **kwargs,
    )


def api_outputs(*names: str) -> list:
    """Hidden components for an API endpoint's outputs (the page shows its own)."""
    kinds = {
        "overlay": lambda: gr.Image(label="overlay", format="png"),
        "message": lambda: gr.Markdown(label="message"),
        "table": lambda: gr.Dataframe(headers=TABLE_HEADERS, label="table"),
        "track-table": lambda: gr.Dataframe(headers=TRACK_HEADERS, label="table"),
        "files": lambda: gr.File(label="downloads", file_count="multiple"),
        "segments": lambda: gr.JSON(label="segments"),
        "video": lambda: gr.Video(label="overlay", include_audio=True),
        "tracks": lambda: gr.JSON(label="tracks"),
    }
    with gr.Group(visible=False):
        return [kinds[name.split(":")[0]]() for name in names]


class Advanced(NamedTuple):
    """The Automatic tab's Advanced settings, in the endpoints' order (the Compare tab
    uses them too)."""

    sam_size: gr.Dropdown
    points_per_side: gr.Slider
    pred_iou_thresh: gr.Slider
    stability_score_thresh: gr.Slider
    mode: gr.Radio
    score_threshold: gr.Slider
    granularity: gr.Slider
    alpha: gr.Slider


class Shared(NamedTuple):
    """Inputs the tabs share: the vocabulary, and the Automatic tab's Advanced settings."""

    vocabulary: gr.Textbox
    predefined: gr.Dropdown
    advanced: Advanced


def advanced_controls(service: SegmentationService) -> Advanced:
    """The Advanced accordion's controls, starting at the demo's mask settings."""
    defaults = service.default_mask_settings()
    sam_size = gr.Dropdown(
        service.sam_sizes,
        value=service.default_sam_size,
        label="SAM-2 size",
        info="Other sizes download on first use.",
    )
    points_per_side = gr.Slider(
        4,
        64,
        defaults.points_per_side,
        step=1,
        label="Points per side",
        info="SAM-2 prompt grid; more finds smaller things, slower.",
        elem_id="points-per-side",
    )
    pred_iou_thresh = gr.Slider(
        0, 1, defaults.pred_iou_thresh, step=0.01, label="Pred IoU thresh", info="SAM-2's own mask quality filter."
    )
    stability_score_thresh = gr.Slider(0, 1, defaults.stability_score_thresh, step=0.01, label="Stability score thresh")
    mode = gr.Radio(
        MODES,
        value="semantic",
        label="Mode",
        info="A semantic map merging masks per class (the method's demo), or one label per SAM-2 mask.",
        elem_id="mode",
    )
    score_threshold = gr.Slider(
        0, 1, 0.0, step=0.01, label="Score threshold", info="Drop segments whose class probability is lower."
    )
    granularity = gr.Slider(
        0, 1, 0.8, step=0.01, label="Granularity", info="Semantic map: keep masks scoring >= this x the class's best."
    )
    alpha = gr.Slider(0, 1, 0.5, step=0.05, label="Overlay alpha")
    return Advanced(
        sam_size, points_per_side, pred_iou_thresh, stability_score_thresh, mode, score_threshold, granularity, alpha
    )
