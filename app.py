"""Open-vocabulary segmentation in the browser: SAM-2 masks named by Mask-Adapter.

Layout and event wiring only; the work is done by ``maskadapter.service``. Run
``python app.py --help`` for the flags (each also read from MASKADAPTER_<NAME>).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import html
import importlib.util
import inspect
import json
import logging
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import gradio as gr

from maskadapter.engine.images import load_image
from maskadapter.engine.mask_settings import AutoMaskSettings
from maskadapter.engine.vocabulary import PREDEFINED
from maskadapter.errors import InputError, MaskAdapterError
from maskadapter.logs import setup_logging
from maskadapter.output.render import COMPARE_TITLES
from maskadapter.service import (
    TABLE_HEADERS,
    PointState,
    SegmentationService,
    gpu_seconds,
    parse_box,
    parse_points,
    plain,
)
from maskadapter.settings import Settings, add_arguments, settings_from_args

try:  # ZeroGPU Spaces: GPU work runs inside spaces.GPU-decorated functions
    import spaces
except ImportError:
    spaces = None


def gpu(fn):
    """On a ZeroGPU Space, run ``fn`` on a GPU held for a duration chosen per call from
    its image and SAM-2 grid (``gpu_seconds``); elsewhere ``fn`` itself."""
    if spaces is None:
        return fn
    signature = inspect.signature(fn)

    def duration(*args, **kwargs) -> int:
        given = signature.bind_partial(*args, **kwargs).arguments
        image = given.get("image")
        hw = image.shape[:2] if isinstance(getattr(image, "shape", None), tuple) else None
        return gpu_seconds(hw, given.get("points_per_side"))

    return spaces.GPU(duration=duration)(fn)


log = logging.getLogger("app")
HERE = Path(__file__).resolve().parent
DEFAULT_VOCABULARY = "person, cat, dog, car, road, tree | bush, grass, sky, building, table, wall"
EXAMPLES = [
    [str(HERE / "examples" / "chelsea.png"), "cat | kitten, blanket, wall, floor"],
    [str(HERE / "examples" / "coffee.png"), "coffee cup | mug, saucer, spoon, wooden table, coffee beans"],
    [str(HERE / "examples" / "astronaut.png"), "person | astronaut, flag, rocket, space suit, helmet, wall"],
    [str(HERE / "examples" / "rocket.jpg"), "rocket, smoke | steam, sky, tower, trees, ground"],
]
CLICK_KINDS = [("positive point (+)", "positive"), ("negative point (-)", "negative"), ("box corner (2 clicks)", "box")]
MODES = [("semantic map", "semantic"), ("one label per mask", "per_mask")]
VOCAB_HINT = "Commas or new lines between classes, `|` between synonyms: `tree | bush, sky, person | people`."
CSS = "#banner {font-size: 0.95em} .gradio-container {max-width: 1400px !important}"
START = "Upload a photo, then click on an object."


class Photo(gr.Image):
    """``gr.Image`` whose uploads the package decodes (EXIF orientation, every pixel
    format, its own message for a file that is not an image). A file that fails to
    decode reaches the handler as its ``InputError``, so that the handler reports it
    like any other bad input."""

    is_template = True  # the browser side is gr.Image's

    def preprocess(self, payload):
        if payload is None:
            return None
        try:
            return load_image(payload.path)
        except InputError as err:
            return err


def pixels(value: Any) -> Any:
    """A ``Photo`` value as an (H, W, 3) uint8 array (or None); raises its decoding error."""
    if isinstance(value, InputError):
        raise value
    return value


def user_message(err: Exception, where: str) -> str:
    """What a user is told about ``err``: the package's own short message, or, for an
    unexpected error, a generic line with an id under which the traceback is logged."""
    if isinstance(err, gr.Error):
        return str(err.message)
    if isinstance(err, MaskAdapterError):
        return err.summary
    ref = uuid.uuid4().hex[:8]
    log.error("error %s in %s", ref, where, exc_info=err)
    return f"Something went wrong on the server (error id {ref}). Please try again; if it keeps failing, report the id."


def friendly(fn):
    """For API endpoints: any failure becomes a short ``gr.Error``, never a traceback
    or internal text."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as err:
            raise gr.Error(user_message(err, fn.__name__), print_exception=False) from None

    return wrapper


def gentle(outputs: int, message: int, restore: Callable[..., dict[int, Any]] | None = None):
    """For UI events: a failure shows a warning and goes into the tab's message box
    (output ``message``); every other output (photo, points, previous result) and the
    user's state stay as they were, except what ``restore(*args)`` gives back."""

    def decorate(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except Exception as err:
                text = user_message(err, fn.__name__)
            gr.Warning(html.escape(text))
            result: list[Any] = [gr.skip()] * outputs
            result[message] = "⚠️ " + plain(text)
            if restore is not None:
                try:
                    for index, value in restore(*args).items():
                        result[index] = value
                except Exception:  # keep the photo as the browser shows it
                    log.warning("could not restore the previous view", exc_info=True)
            return tuple(result)

        return wrapper

    return decorate


def reporter(progress: gr.Progress):
    return lambda fraction, message: progress(fraction, desc=message)


class Shared(NamedTuple):
    """Inputs the tabs share: the vocabulary, and the Automatic tab's Advanced settings
    (``grid``: points per side, pred IoU and stability thresholds, mode, score threshold,
    granularity, in that order)."""

    vocabulary: gr.Textbox
    predefined: gr.Dropdown
    sam_size: gr.Dropdown
    alpha: gr.Slider
    grid: list


def mask_settings(defaults: AutoMaskSettings, points_per_side, pred_iou_thresh, stability_score_thresh):
    """The demo's SAM-2 settings with the three the UI shows replaced."""
    return dataclasses.replace(
        defaults,
        points_per_side=int(points_per_side),
        pred_iou_thresh=float(pred_iou_thresh),
        stability_score_thresh=float(stability_score_thresh),
    )


def automatic_tab(service: SegmentationService, vocabulary: gr.Textbox, predefined: gr.Dropdown) -> Shared:
    """The "segment everything" tab and its ``/segment_automatic`` endpoint."""
    defaults = service.default_mask_settings()
    limit = service.settings.concurrency
    with gr.Tab("Automatic", id="automatic"):
        auto_session = gr.State(None, time_to_live=3600)
        with gr.Row():
            with gr.Column():
                auto_image = Photo(type="numpy", label="Photo", sources=["upload", "clipboard"], elem_id="auto-image")
                segment_button = gr.Button("Segment", variant="primary", elem_id="segment")
                with gr.Accordion("Advanced", open=False):
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
                    )
                    pred_iou_thresh = gr.Slider(
                        0,
                        1,
                        defaults.pred_iou_thresh,
                        step=0.01,
                        label="Pred IoU thresh",
                        info="SAM-2's own mask quality filter.",
                    )
                    stability_score_thresh = gr.Slider(
                        0, 1, defaults.stability_score_thresh, step=0.01, label="Stability score thresh"
                    )
                    mode = gr.Radio(
                        MODES,
                        value="semantic",
                        label="Mode",
                        info="A semantic map merging masks per class (the method's demo), or one label per SAM-2 mask.",
                    )
                    score_threshold = gr.Slider(
                        0,
                        1,
                        0.0,
                        step=0.01,
                        label="Score threshold",
                        info="Drop segments whose class probability is lower.",
                    )
                    granularity = gr.Slider(
                        0,
                        1,
                        0.8,
                        step=0.01,
                        label="Granularity",
                        info="Semantic map: keep masks scoring >= this x the class's best.",
                    )
                    alpha = gr.Slider(0, 1, 0.5, step=0.05, label="Overlay alpha")
            with gr.Column():
                auto_output = gr.Image(label="Overlay", interactive=False, format="png", elem_id="auto-output")
                auto_message = gr.Markdown(label="Message", elem_id="auto-message")
                auto_table = gr.Dataframe(
                    headers=TABLE_HEADERS,
                    label="Segment table",
                    interactive=False,
                    elem_id="auto-table",
                    max_height=320,
                )
                auto_files = gr.File(
                    label="Downloads (label map PNG, segments JSON)", file_count="multiple", interactive=False
                )
                auto_json = gr.JSON(label="Segments JSON", visible=False)
        gr.Examples(EXAMPLES, inputs=[auto_image, vocabulary], label="Examples (photo and vocabulary)")
        api_button = gr.Button("segment automatic", visible=False)

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
        session,
        progress=gr.Progress(),
    ):
        """Segment everything in a photo: SAM-2 proposes masks from a grid of point prompts and
        Mask-Adapter over CLIP names each with one class of the vocabulary.

        Pass the image as a data URL (data:image/png;base64,...) or as a public http(s) URL
        (Gradio refuses URLs of loopback and private addresses). The vocabulary has commas or
        new lines between classes and `|` between synonyms of one class, e.g. "car, road, tree | bush".

        Args:
            image: the photo: a data:image/...;base64 URL or a public http(s) URL (PNG, JPEG, WebP, ...)
            vocabulary: classes, commas or new lines between classes, `|` between synonyms: "car, road, tree | bush"
            predefined: predefined vocabularies added to the classes, e.g. ["coco"]; may be empty
            sam_size: SAM-2 model size (a size other than the default downloads on first use)
            points_per_side: SAM-2 prompt grid, points per side (4 to 64); more finds smaller things, slower
            pred_iou_thresh: SAM-2's predicted-IoU filter on masks, 0 to 1
            stability_score_thresh: SAM-2's stability filter on masks, 0 to 1
            mode: "semantic" (default: one segment per class, its masks merged) or "per_mask" (one per mask)
            score_threshold: drop segments whose class probability is lower, 0 to 1 (default 0)
            granularity: semantic mode: keep masks scoring at least this times the class's best (default 0.8)
            alpha: opacity of the colours painted on the overlay, 0 to 1

        Returns:
            overlay: PNG of the photo with the segments painted, a legend below
            message: one line saying what was found
            table: one row per segment (label, score, area, ...)
            files: a label-map PNG and the segments JSON file
            segments: JSON with the image size, the labels, and per segment its label, class id, score
            top-5, area, bbox [x, y, w, h], SAM-2's IoU estimate and a COCO RLE mask {size, counts}
        """
        out, session = service.automatic(
            pixels(image),
            vocabulary,
            predefined,
            session,
            sam_size,
            mask_settings(defaults, points_per_side, pred_iou_thresh, stability_score_thresh),
            mode,
            float(score_threshold),
            float(granularity),
            float(alpha),
            reporter(progress),
        )
        files = [str(out.label_map_path), str(out.json_path)] if out.json_path else None
        return out.picture, out.message, out.rows, files, out.segments, session

    inputs = [
        auto_image,
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
        auto_session,
    ]
    outputs = [auto_output, auto_message, auto_table, auto_files, auto_json, auto_session]
    common = dict(inputs=inputs, outputs=outputs, concurrency_id="automatic", concurrency_limit=limit)
    api_button.click(friendly(gpu(segment_automatic)), api_name="segment_automatic", **common)
    ui = gentle(len(outputs), 1)(gpu(segment_automatic))
    segment_button.click(ui, api_name="segment_automatic_ui", api_visibility="private", **common)
    grid = [points_per_side, pred_iou_thresh, stability_score_thresh, mode, score_threshold, granularity]
    return Shared(vocabulary, predefined, sam_size, alpha, grid)


def point_tab(service: SegmentationService, shared: Shared) -> None:
    """The click-on-an-object tab and its ``/segment_points`` endpoint."""
    limit = service.settings.concurrency

    def new_photo(image, state):
        if image is None:  # the photo was removed
            return None, START, [], None, None, "[]", PointState()
        state = service.open_point_image(pixels(image))
        picture = service.point_picture(state)  # as decoded: EXIF orientation applied
        return picture, "Click on an object to add a point.", [], None, None, "[]", state

    # a photo that fails to decode puts the previous one back
    upload = gentle(7, 1, restore=lambda image, state: {0: service.point_picture(state)})(new_photo)

    with gr.Tab("Point prompt", id="points"):
        point_state = gr.State(PointState(), time_to_live=3600)
        with gr.Row():
            with gr.Column():
                point_image = Photo(
                    type="numpy",
                    label="Click on an object",
                    sources=["upload", "clipboard"],
                    format="png",
                    elem_id="point-image",
                )
                click_kind = gr.Radio(CLICK_KINDS, value="positive", label="A click adds", elem_id="click-kind")
                with gr.Row():
                    undo_button = gr.Button("Undo", elem_id="undo")
                    clear_button = gr.Button("Clear", elem_id="clear")
                    relabel_button = gr.Button("Label again", elem_id="relabel")
                points_text = gr.Textbox(
                    "[]", label="Points [x, y, label] (original pixels)", interactive=False, elem_id="points-text"
                )
            with gr.Column():
                point_message = gr.Markdown(START, elem_id="point-message")
                point_table = gr.Dataframe(
                    headers=TABLE_HEADERS, label="Segment", interactive=False, elem_id="point-table"
                )
                point_files = gr.File(label="Downloads", file_count="multiple", interactive=False)
                point_json = gr.JSON(label="Segment JSON", visible=False)
        outputs = [point_image, point_message, point_table, point_files, point_json, points_text, point_state]
        gr.Examples(
            [[row[0]] for row in EXAMPLES],
            inputs=[point_image],
            outputs=outputs,
            fn=gentle(7, 1)(lambda image: new_photo(image, None)),
            label="Examples",
            run_on_click=True,
            cache_examples=False,
            api_visibility="private",
        )
        with gr.Group(visible=False):  # inputs and outputs of the /segment_points API endpoint
            api_image = Photo(type="numpy", label="image")
            api_points = gr.Textbox("[]", label="points")
            api_box = gr.Textbox("", label="box")
            api_state = gr.State(None, time_to_live=600)
            api_overlay = gr.Image(label="overlay", format="png")
            api_segments = gr.JSON(label="segments")
            api_button = gr.Button("segment points")

    settings = [shared.vocabulary, shared.predefined, shared.sam_size, shared.alpha]
    common = dict(outputs=outputs, api_visibility="private", concurrency_id="points", concurrency_limit=limit)
    for event in (point_image.upload, point_image.clear):
        event(upload, inputs=[point_image, point_state], **common)

    def result(out, state):
        files = [str(out.label_map_path), str(out.json_path)] if out.json_path else None
        return out.picture, out.message, out.rows, files, out.segments or None, state.points_json(), state

    def click(kind, vocabulary, predefined, sam_size, alpha, state, evt: gr.SelectData, progress=gr.Progress()):
        state = state.copy()
        index = evt.index if isinstance(evt.index, list | tuple) and len(evt.index) == 2 else (None, None)
        state.add(index[0], index[1], kind)
        return result(service.points(state, vocabulary, predefined, sam_size, alpha, reporter(progress)), state)

    point_image.select(gentle(7, 1)(gpu(click)), inputs=[click_kind, *settings, point_state], **common)

    def edit(operation):
        def handler(vocabulary, predefined, sam_size, alpha, state, progress=gr.Progress()):
            state = state.copy()
            operation(state)
            if state.key is None:
                raise InputError("upload a photo first")
            return result(service.points(state, vocabulary, predefined, sam_size, alpha, reporter(progress)), state)

        return gentle(7, 1)(gpu(handler))

    for button, operation in (
        (undo_button, PointState.undo),
        (clear_button, PointState.clear),
        (relabel_button, lambda state: None),
    ):
        button.click(edit(operation), inputs=[*settings, point_state], **common)

    def segment_points(image, points, vocabulary, predefined, box, sam_size, alpha, session, progress=gr.Progress()):
        """Segment the object under point prompts (and an optional box) with SAM-2, and name it with
        Mask-Adapter over CLIP: the class of the vocabulary that fits it best.

        Pass the image as a data URL (data:image/png;base64,...) or as a public http(s) URL
        (Gradio refuses URLs of loopback and private addresses). Points are JSON [[x, y, label], ...]
        in the original image's pixels (x right, y down from the top-left corner), label 1 positive
        (on the object) or 0 negative (not on it); at least one positive point unless a box is given.
        The vocabulary has commas or new lines between classes and `|` between synonyms of one
        class, e.g. "car, road, tree | bush".

        Args:
            image: the photo: a data:image/...;base64 URL or a public http(s) URL (PNG, JPEG, WebP, ...)
            points: JSON [[x, y, label], ...] in original-image pixels; label 1 positive, 0 negative
            vocabulary: classes, commas or new lines between classes, `|` between synonyms: "car, road, tree | bush"
            predefined: predefined vocabularies added to the classes, e.g. ["coco"]; may be empty
            box: optional JSON [x0, y0, x1, y1] in original-image pixels around the object; empty for none
            sam_size: SAM-2 model size (a size other than the default downloads on first use)
            alpha: opacity of the colour painted on the overlay, 0 to 1

        Returns:
            overlay: PNG of the photo with the segment painted and its label
            segments: JSON with the image size, the labels, and one segment: its label, class id, score
            top-5, area, bbox [x, y, w, h], SAM-2's IoU estimate and a COCO RLE mask {size, counts}
        """
        state = service.prompt_state(pixels(image), parse_points(points), parse_box(box))
        out = service.points(state, vocabulary, predefined, sam_size, alpha, reporter(progress))
        return out.picture, out.segments, state.key

    api_inputs = [api_image, api_points, *settings[:2], api_box, *settings[2:], api_state]
    api_button.click(
        friendly(gpu(segment_points)),
        inputs=api_inputs,
        outputs=[api_overlay, api_segments, api_state],
        api_name="segment_points",
        concurrency_id="points",
        concurrency_limit=limit,
    )


def compare_tab(service: SegmentationService, shared: Shared) -> None:
    """The same SAM-2 masks named by Mask-Adapter and by plain mask pooling, side by
    side, and its ``/compare`` endpoint."""
    defaults = service.default_mask_settings()
    with gr.Tab("Compare", id="compare"):
        gr.Markdown(
            "The same SAM-2 masks named two ways: by **Mask-Adapter**, and by **plain mask pooling** "
            "(CLIP features averaged inside each mask: the baseline the paper improves on). "
            "The settings are the Automatic tab's *Advanced* ones."
        )
        with gr.Row():
            with gr.Column(scale=1):
                image = Photo(type="numpy", label="Photo", sources=["upload", "clipboard"], elem_id="compare-image")
                button = gr.Button("Compare", variant="primary", elem_id="compare")
            message = gr.Markdown(elem_id="compare-message")
        pictures, tables = [], []
        with gr.Row():
            for key, title in zip(("adapter", "pooling"), COMPARE_TITLES, strict=True):
                with gr.Column():
                    pictures.append(gr.Image(label=title, interactive=False, format="png", elem_id=f"compare-{key}"))
                    tables.append(
                        gr.Dataframe(
                            headers=TABLE_HEADERS,
                            label=f"{title}: segments",
                            interactive=False,
                            elem_id=f"compare-{key}-table",
                            max_height=320,
                        )
                    )
        segments = [gr.JSON(label=f"{key} segments", visible=False) for key in ("adapter", "pooling")]
        gr.Examples(EXAMPLES, inputs=[image, shared.vocabulary], label="Examples (photo and vocabulary)")
        api_button = gr.Button("compare", visible=False)

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
        """Segment everything in a photo as segment_automatic does, and name the same SAM-2 masks twice:
        by Mask-Adapter and by plain mask pooling (CLIP features averaged inside each mask, the
        baseline), to see where the adapter changes the label.

        Pass the image as a data URL (data:image/png;base64,...) or as a public http(s) URL
        (Gradio refuses URLs of loopback and private addresses). The vocabulary has commas or
        new lines between classes and `|` between synonyms of one class, e.g. "car, road, tree | bush".

        Args:
            image: the photo: a data:image/...;base64 URL or a public http(s) URL (PNG, JPEG, WebP, ...)
            vocabulary: classes, commas or new lines between classes, `|` between synonyms: "car, road, tree | bush"
            predefined: predefined vocabularies added to the classes, e.g. ["coco"]; may be empty
            sam_size: SAM-2 model size (a size other than the default downloads on first use)
            points_per_side: SAM-2 prompt grid, points per side (4 to 64); more finds smaller things, slower
            pred_iou_thresh: SAM-2's predicted-IoU filter on masks, 0 to 1
            stability_score_thresh: SAM-2's stability filter on masks, 0 to 1
            mode: "semantic" (default: one segment per class, its masks merged) or "per_mask" (one per mask)
            score_threshold: drop segments whose class probability is lower, 0 to 1 (default 0)
            granularity: semantic mode: keep masks scoring at least this times the class's best (default 0.8)
            alpha: opacity of the colours painted on the overlays, 0 to 1

        Returns:
            adapter_overlay: PNG overlay of the masks named by Mask-Adapter
            pooling_overlay: PNG overlay of the same masks named by mask pooling
            message: how many masks changed label
            adapter_table: Mask-Adapter's segments, one row each
            pooling_table: mask pooling's segments, one row each
            adapter_segments: Mask-Adapter's segments JSON (as segment_automatic's, with COCO RLE masks)
            pooling_segments: mask pooling's segments JSON
        """
        adapter, pooling, text = service.compare(
            pixels(image),
            vocabulary,
            predefined,
            sam_size,
            mask_settings(defaults, points_per_side, pred_iou_thresh, stability_score_thresh),
            mode,
            float(score_threshold),
            float(granularity),
            float(alpha),
            reporter(progress),
        )
        return adapter.picture, pooling.picture, text, adapter.rows, pooling.rows, adapter.segments, pooling.segments

    inputs = [image, shared.vocabulary, shared.predefined, shared.sam_size, *shared.grid, shared.alpha]
    outputs = [*pictures, message, *tables, *segments]
    limit = service.settings.concurrency
    common = dict(inputs=inputs, outputs=outputs, concurrency_id="automatic", concurrency_limit=limit)
    api_button.click(friendly(gpu(compare)), api_name="compare", **common)
    ui = gentle(len(outputs), 2)(gpu(compare))
    button.click(ui, api_name="compare_ui", api_visibility="private", **common)


def build_demo(service: SegmentationService) -> gr.Blocks:
    predefined_choices = [(title, key) for key, (title, _) in PREDEFINED.items()]
    with gr.Blocks(
        title="Mask-Adapter + SAM-2: open-vocabulary segmentation", delete_cache=(3600, 3600), analytics_enabled=False
    ) as demo:
        gr.Markdown(
            "# Open-vocabulary segmentation\n"
            "Upload a photo, say what you care about, and get labelled segments: masks from "
            "[SAM-2](https://github.com/facebookresearch/sam2), named by "
            "[Mask-Adapter](https://github.com/hustvl/MaskAdapter) (CVPR 2025) with CLIP."
        )
        banner = gr.Markdown(service.status_markdown(), elem_id="banner")
        timer = gr.Timer(1.0)
        with gr.Row():
            vocabulary = gr.Textbox(
                DEFAULT_VOCABULARY, label="Vocabulary", lines=2, scale=3, info=VOCAB_HINT, elem_id="vocabulary"
            )
            predefined = gr.Dropdown(
                predefined_choices,
                value=[],
                multiselect=True,
                label="Predefined vocabularies",
                scale=2,
                info="Added to the classes you type.",
                elem_id="predefined",
            )
        shared = automatic_tab(service, vocabulary, predefined)
        point_tab(service, shared)
        compare_tab(service, shared)

        def refresh_banner():
            return service.status_markdown(), gr.Timer(active=service.loading)

        demo.load(refresh_banner, outputs=[banner, timer], api_visibility="private")
        timer.tick(refresh_banner, outputs=[banner, timer], api_visibility="private")
    return demo


def fix_mcp_outputs() -> None:
    """Two fixes to what Gradio 6.31's MCP server makes of the endpoints' outputs. Without
    progress notifications it takes a multi-output endpoint's whole output tuple for one
    output (and then fails to drop its State: "pop index out of range"): give it the outputs
    one by one, as its progress path does. And it writes JSON outputs (segments) as Python
    text: write them as JSON, and a list of files (the downloads) as their URLs. Images (the
    overlays) stay images."""
    from gradio.mcp import GradioMCPServer
    from gradio.processing_utils import add_root_url
    from gradio_client.utils import is_file_obj_with_meta

    run = getattr(GradioMCPServer, "_execute_tool_without_progress", None)
    postprocess = getattr(GradioMCPServer, "postprocess_output_data", None)
    if run is None or postprocess is None or getattr(run, "fixed", False):  # another Gradio, or done
        return

    async def without_progress(self, job):
        outputs = await run(self, job)
        return list(outputs[0]) if len(outputs) == 1 and isinstance(outputs[0], tuple) else outputs

    def as_json(value):
        if isinstance(value, list) and value and all(is_file_obj_with_meta(item) for item in value):
            return json.dumps([item["url"] for item in value])  # the downloads, as URLs
        if isinstance(value, dict | list) and not is_file_obj_with_meta(value):
            return json.dumps(value)
        return value

    def postprocess_json(self, data, root_url):
        data = add_root_url(data, root_url, None)
        return postprocess(self, [as_json(value) for value in data], root_url)

    without_progress.fixed = True
    GradioMCPServer._execute_tool_without_progress = without_progress
    GradioMCPServer.postprocess_output_data = postprocess_json


def parse_settings(argv: list[str] | None = None) -> Settings:
    parser = argparse.ArgumentParser(description="Open-vocabulary segmentation app (SAM-2 + Mask-Adapter).")
    add_arguments(parser, app=True)
    return settings_from_args(parser.parse_args(argv))


def main(argv: list[str] | None = None) -> int:
    try:
        settings = parse_settings(argv)
    except MaskAdapterError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    setup_logging(settings.verbose)  # third-party warnings no one can act on: hidden unless verbose
    for name in ("app", "maskadapter"):
        logging.getLogger(name).setLevel(logging.INFO)  # the app's own progress lines
    if settings.mcp:
        if importlib.util.find_spec("mcp") is None:
            print("error: --mcp needs the `mcp` package: pip install -r requirements.txt", file=sys.stderr)
            return 2
        fix_mcp_outputs()
    service = SegmentationService(settings)
    service.start(background=spaces is None)  # ZeroGPU wants the models built at start-up
    demo = build_demo(service)
    demo.queue(default_concurrency_limit=settings.concurrency, max_size=settings.queue_size)
    demo.launch(
        server_name=settings.host,
        server_port=settings.port,
        share=settings.share,
        css=CSS,
        allowed_paths=[str(HERE / "examples")],
        show_error=False,  # only our own short messages reach users (gr.Error)
        max_file_size=f"{settings.max_upload_mb}mb",
        mcp_server=settings.mcp,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
