"""Open-vocabulary segmentation in the browser: SAM-2 masks named by Mask-Adapter.

The page's layout and event wiring only: the work is done by ``maskadapter.service``,
the words and the Gradio glue are in ``maskadapter.ui``. Run ``python app.py --help``
for the flags (each also read from MASKADAPTER_<NAME>).
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import gradio as gr

from maskadapter.engine.images import load_image
from maskadapter.engine.vocabulary import PREDEFINED
from maskadapter.errors import InputError, MaskAdapterError
from maskadapter.logs import setup_logging
from maskadapter.output.render import COMPARE_TITLES
from maskadapter.point_prompts import PointState
from maskadapter.service import SegmentationService
from maskadapter.settings import Settings, add_arguments, settings_from_args
from maskadapter.ui import events
from maskadapter.ui.events import friendly, gentle, gpu
from maskadapter.ui.handlers import automatic_handler, compare_handler, point_handlers
from maskadapter.ui.mcp_outputs import fix_mcp_outputs
from maskadapter.ui.present import START, TABLE_HEADERS, status_markdown

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
POINT_OUTPUTS = 7  # the point tab's events: photo, message, table, downloads, JSON, points text, state


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


def wire_endpoint(
    fn: Callable,
    api_name: str,
    buttons: tuple[gr.Button, gr.Button],
    inputs: list,
    outputs: list,
    message: int,
    limit: int,
) -> None:
    """``fn`` as the API endpoint ``api_name`` (clicked by the hidden ``buttons[0]``;
    failures as short errors) and as the visible ``buttons[1]``'s event (failures in
    output ``message``; a private endpoint ``<api_name>_ui``)."""
    common = dict(inputs=inputs, outputs=outputs, concurrency_id="automatic", concurrency_limit=limit)
    api_button, button = buttons
    api_button.click(friendly(gpu(fn)), api_name=api_name, **common)
    ui = gentle(len(outputs), message)(gpu(fn))
    button.click(ui, api_name=f"{api_name}_ui", api_visibility="private", **common)


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


def automatic_results() -> list:
    """The Automatic tab's outputs: overlay, message, table, downloads, segments JSON."""
    return [
        gr.Image(label="Overlay", interactive=False, format="png", elem_id="auto-output"),
        gr.Markdown(label="Message", elem_id="auto-message"),
        gr.Dataframe(
            headers=TABLE_HEADERS, label="Segment table", interactive=False, elem_id="auto-table", max_height=320
        ),
        gr.File(label="Downloads (label map PNG, segments JSON)", file_count="multiple", interactive=False),
        gr.JSON(label="Segments JSON", visible=False),
    ]


def automatic_tab(service: SegmentationService, vocabulary: gr.Textbox, predefined: gr.Dropdown) -> Shared:
    """The "segment everything" tab and its ``/segment_automatic`` endpoint."""
    with gr.Tab("Automatic", id="automatic"):
        with gr.Row():
            with gr.Column():
                image = Photo(type="numpy", label="Photo", sources=["upload", "clipboard"], elem_id="auto-image")
                button = gr.Button("Segment", variant="primary", elem_id="segment")
                with gr.Accordion("Advanced", open=False):
                    advanced = advanced_controls(service)
            with gr.Column():
                outputs = automatic_results()
        gr.Examples(EXAMPLES, inputs=[image, vocabulary], label="Examples (photo and vocabulary)")
        api_button = gr.Button("segment automatic", visible=False)
    inputs = [image, vocabulary, predefined, *advanced]
    handler = automatic_handler(service)
    wire_endpoint(handler, "segment_automatic", (api_button, button), inputs, outputs, 1, service.settings.concurrency)
    return Shared(vocabulary, predefined, advanced)


class PointView(NamedTuple):
    """The point tab's controls and outputs."""

    image: Photo
    click_kind: gr.Radio
    undo: gr.Button
    clear: gr.Button
    relabel: gr.Button
    points_text: gr.Textbox
    message: gr.Markdown
    table: gr.Dataframe
    files: gr.File
    segment_json: gr.JSON


def point_view() -> PointView:
    """The point tab's photo, click kind, buttons and points on the left, the result on
    the right."""
    with gr.Row():
        with gr.Column():
            image = Photo(
                type="numpy",
                label="Click on an object",
                sources=["upload", "clipboard"],
                format="png",
                elem_id="point-image",
            )
            click_kind = gr.Radio(CLICK_KINDS, value="positive", label="A click adds", elem_id="click-kind")
            with gr.Row():
                undo = gr.Button("Undo", elem_id="undo")
                clear = gr.Button("Clear", elem_id="clear")
                relabel = gr.Button("Label again", elem_id="relabel")
            points_text = gr.Textbox(
                "[]", label="Points [x, y, label] (original pixels)", interactive=False, elem_id="points-text"
            )
        with gr.Column():
            message = gr.Markdown(START, elem_id="point-message")
            table = gr.Dataframe(headers=TABLE_HEADERS, label="Segment", interactive=False, elem_id="point-table")
            files = gr.File(label="Downloads", file_count="multiple", interactive=False)
            segment_json = gr.JSON(label="Segment JSON", visible=False)
    return PointView(image, click_kind, undo, clear, relabel, points_text, message, table, files, segment_json)


def point_api(shared: Shared) -> Callable[[Callable, int], None]:
    """The hidden inputs and outputs of the ``/segment_points`` endpoint; returns the
    function that wires it to ``(handler, concurrency limit)``."""
    with gr.Group(visible=False):
        image = Photo(type="numpy", label="image")
        points = gr.Textbox("[]", label="points")
        box = gr.Textbox("", label="box")
        overlay = gr.Image(label="overlay", format="png")
        segments = gr.JSON(label="segments")
        button = gr.Button("segment points")
    advanced = shared.advanced

    def wire(handler: Callable, limit: int) -> None:
        button.click(
            friendly(gpu(handler)),
            inputs=[image, points, shared.vocabulary, shared.predefined, box, advanced.sam_size, advanced.alpha],
            outputs=[overlay, segments],
            api_name="segment_points",
            concurrency_id="points",
            concurrency_limit=limit,
        )

    return wire


def point_tab(service: SegmentationService, shared: Shared) -> None:
    """The click-on-an-object tab and its ``/segment_points`` endpoint."""
    limit = service.settings.concurrency
    handlers = point_handlers(service)

    def restore(image, state):  # a photo that fails to decode puts the previous one back
        return {0: service.point_picture(state)}

    upload = gentle(POINT_OUTPUTS, 1, restore=restore)(handlers.new_photo)
    with gr.Tab("Point prompt", id="points"):
        state = gr.State(PointState(), time_to_live=3600)
        view = point_view()
        outputs = [view.image, view.message, view.table, view.files, view.segment_json, view.points_text, state]
        gr.Examples(
            [[row[0]] for row in EXAMPLES],
            inputs=[view.image],
            outputs=outputs,
            fn=gentle(POINT_OUTPUTS, 1)(lambda image: handlers.new_photo(image, None)),
            label="Examples",
            run_on_click=True,
            cache_examples=False,
            api_visibility="private",
        )
        wire_api = point_api(shared)

    settings = [shared.vocabulary, shared.predefined, shared.advanced.sam_size, shared.advanced.alpha]
    common = dict(outputs=outputs, api_visibility="private", concurrency_id="points", concurrency_limit=limit)
    for event in (view.image.upload, view.image.clear):
        event(upload, inputs=[view.image, state], **common)
    click = gentle(POINT_OUTPUTS, 1)(gpu(handlers.click))
    view.image.select(click, inputs=[view.click_kind, *settings, state], **common)
    for button, operation in (
        (view.undo, PointState.undo),
        (view.clear, PointState.clear),
        (view.relabel, lambda state: None),
    ):
        edit = gentle(POINT_OUTPUTS, 1)(gpu(handlers.edit(operation)))
        button.click(edit, inputs=[*settings, state], **common)
    wire_api(handlers.segment_points, limit)


def compare_tab(service: SegmentationService, shared: Shared) -> None:
    """The same SAM-2 masks named by Mask-Adapter and by plain mask pooling, side by
    side, and its ``/compare`` endpoint."""
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
                    table = gr.Dataframe(
                        headers=TABLE_HEADERS,
                        label=f"{title}: segments",
                        interactive=False,
                        elem_id=f"compare-{key}-table",
                        max_height=320,
                    )
                    tables.append(table)
        segments = [gr.JSON(label=f"{key} segments", visible=False) for key in ("adapter", "pooling")]
        gr.Examples(EXAMPLES, inputs=[image, shared.vocabulary], label="Examples (photo and vocabulary)")
        api_button = gr.Button("compare", visible=False)
    inputs = [image, shared.vocabulary, shared.predefined, *shared.advanced]
    outputs = [*pictures, message, *tables, *segments]
    handler = compare_handler(service)
    wire_endpoint(handler, "compare", (api_button, button), inputs, outputs, 2, service.settings.concurrency)


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
        banner = gr.Markdown(status_markdown(service.load_status()), elem_id="banner")
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
            return status_markdown(service.load_status()), gr.Timer(active=service.loading)

        demo.load(refresh_banner, outputs=[banner, timer], api_visibility="private")
        timer.tick(refresh_banner, outputs=[banner, timer], api_visibility="private")
    return demo


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
    service.start(background=events.spaces is None)  # ZeroGPU wants the models built at start-up
    demo = build_demo(service)
    events.queue(demo, settings.concurrency, settings.queue_size)
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
