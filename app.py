"""Open-vocabulary segmentation in the browser: SAM-2 masks named by Mask-Adapter.

The page's layout and event wiring only: the work is done by ``maskadapter.service``,
the words and the Gradio glue are in ``maskadapter.ui``. Run ``python app.py --help``
for the flags (each also read from MASKADAPTER_<NAME>).
"""

from __future__ import annotations

# isort: off
import maskadapter.startup  # noqa: F401  (first: tunes the allocator before torch is loaded)

# isort: on
import argparse
import importlib.util
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import gradio as gr

from maskadapter.engine.vocabulary import PREDEFINED
from maskadapter.errors import MaskAdapterError
from maskadapter.logs import setup_logging
from maskadapter.output.render import COMPARE_TITLES
from maskadapter.point_prompts import PointState
from maskadapter.service import SegmentationService
from maskadapter.settings import Settings, add_arguments, settings_from_args
from maskadapter.ui import events
from maskadapter.ui.components import Photo, SegmentView
from maskadapter.ui.events import Runs, friendly, gentle, gpu
from maskadapter.ui.explore import ALL
from maskadapter.ui.handlers import (
    POINT_OUTPUTS,
    automatic_handler,
    automatic_view,
    compare_handler,
    compare_view,
    point_handlers,
    shown_in_banner,
)
from maskadapter.ui.mcp_outputs import fix_mcp_outputs
from maskadapter.ui.page import CSS, JS
from maskadapter.ui.present import CHANGE_HEADERS, START, TRACK_HEADERS, status_markdown
from maskadapter.ui.video import START_VIDEO, video_handlers
from maskadapter.ui.wiring import (
    Shared,
    advanced_controls,
    api_outputs,
    segment_table,
    stopper,
    upload_guard,
    wire_api,
    wire_run,
)

HERE = Path(__file__).resolve().parent
DEFAULT_VOCABULARY = "person, cat, dog, car, road, tree | bush, grass, sky, building, table, wall"
EXAMPLES = [
    [str(HERE / "examples" / "chelsea.png"), "cat | kitten, blanket, wall, floor"],
    [str(HERE / "examples" / "coffee.png"), "coffee cup | mug, saucer, spoon, wooden table, coffee beans"],
    [str(HERE / "examples" / "astronaut.png"), "person | astronaut, flag, rocket, space suit, helmet, wall"],
    [str(HERE / "examples" / "rocket.jpg"), "rocket, smoke | steam, sky, tower, trees, ground"],
]
CLICK_KINDS = [("positive point (+)", "positive"), ("negative point (-)", "negative"), ("box corner (2 clicks)", "box")]
VOCAB_HINT = "Commas or new lines between classes, `|` between synonyms: `tree | bush, sky, person | people`."


def automatic_tab(service: SegmentationService, runs: Runs, vocabulary: gr.Textbox, predefined: gr.Dropdown) -> Shared:
    """The "segment everything" tab and its ``/segment_automatic`` endpoint."""
    with gr.Tab("Automatic", id="automatic"):
        with gr.Row():
            with gr.Column():
                image = Photo(type="numpy", label="Photo", sources=["upload", "clipboard"], elem_id="auto-image")
                with gr.Row():
                    button = gr.Button("Segment", variant="primary", elem_id="segment")
                    stop = gr.Button("Stop", variant="stop", elem_id="auto-stop", scale=0, min_width=90)
                message = gr.Markdown(elem_id="auto-message", elem_classes=["status-line"])
                with gr.Accordion("Advanced", open=False):
                    advanced = advanced_controls(service)
            with gr.Column():
                view = SegmentView(label="Segments", elem_id="auto-output", elem_classes=["explorer"], format="png")
                show = gr.Dropdown([ALL], value=ALL, label="Show", elem_id="auto-show")
                details = gr.Markdown(elem_id="auto-details")
                table = segment_table("Segment table", "auto-table", elem_classes=["explorer-table"], max_height=360)
                files = gr.File(
                    label="Downloads (label map PNG, segments JSON, overlay PNG)",
                    file_count="multiple",
                    interactive=False,
                    elem_id="auto-files",
                )
        exploration = gr.State(None, time_to_live=3600)
        gr.Examples(EXAMPLES, inputs=[image, vocabulary], label="Examples (photo and vocabulary)")
        outputs = api_outputs("overlay", "message", "table", "files", "segments")
        inputs = [image, vocabulary, predefined, *advanced]
        limit = service.settings.concurrency
        wire_api(automatic_handler(service), "segment_automatic", inputs, outputs, limit)
        page = automatic_view(service, runs)
        shown = shown_in_banner(service)
        page_outputs = [view, message, table, files, show, exploration, details]
        wire_run(page.run, (button, stop), inputs, page_outputs, 1, limit, stopper(runs, "automatic"), shown)
        common = dict(api_visibility="private", queue=False)
        show.input(page.show, inputs=[show, exploration], outputs=[view], **common)
        view.select(page.pick, inputs=[exploration], outputs=[details], **common)
        table.select(page.pick_row, inputs=[exploration], outputs=[details], **common)
        upload_guard(service, image, message)  # wired inside the tab: a block between tabs splits them
    return Shared(vocabulary, predefined, advanced)


class PointView(NamedTuple):
    """The point tab's controls and outputs."""

    image: Photo
    click_kind: gr.Radio
    undo: gr.Button
    clear: gr.Button
    relabel: gr.Button
    stop: gr.Button
    points_text: gr.Textbox
    box_text: gr.Textbox
    message: gr.Markdown
    legend: gr.HTML
    table: gr.Dataframe
    files: gr.File
    segment_json: gr.JSON

    def outputs(self, state: gr.State) -> list:
        """The tab's event outputs, in ``PointHandlers``' order."""
        return [
            self.image, self.message, self.table, self.files, self.segment_json,
            self.points_text, self.box_text, self.legend, state,
        ]  # fmt: skip


def point_view() -> PointView:
    """The point tab's photo, click kind, buttons, points and box on the left, the
    message, legend and result on the right."""
    with gr.Row():
        with gr.Column():
            image = Photo(
                type="numpy",
                label="Click on an object",
                sources=["upload", "clipboard"],
                format="png",
                elem_id="point-image",
            )
            legend = gr.HTML(elem_id="point-legend")
            click_kind = gr.Radio(CLICK_KINDS, value="positive", label="A click adds", elem_id="click-kind")
            with gr.Row():
                undo = gr.Button("Undo", elem_id="undo")
                clear = gr.Button("Clear", elem_id="clear")
                relabel = gr.Button("Label again", elem_id="relabel")
                stop = gr.Button("Stop", variant="stop", elem_id="point-stop", scale=0, min_width=90)
            points_text = gr.Textbox(
                "[]", label="Points [x, y, label] (original pixels)", interactive=False, elem_id="points-text"
            )
            box_text = gr.Textbox(
                "", label="Box [x0, y0, x1, y1] (original pixels)", interactive=False, elem_id="box-text"
            )
        with gr.Column():
            message = gr.Markdown(START, elem_id="point-message", elem_classes=["status-line"])
            table = segment_table("Segment", "point-table")
            files = gr.File(label="Downloads", file_count="multiple", interactive=False)
            segment_json = gr.JSON(label="Segment JSON", visible=False)
    return PointView(
        image,
        click_kind,
        undo,
        clear,
        relabel,
        stop,
        points_text,
        box_text,
        message,
        legend,
        table,
        files,
        segment_json,
    )


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


def point_tab(service: SegmentationService, runs: Runs, shared: Shared) -> None:
    """The click-on-an-object tab and its ``/segment_points`` endpoint."""
    limit = service.settings.concurrency
    handlers = point_handlers(service, runs)
    shown = shown_in_banner(service)

    def restore(image, state):  # a photo that fails to decode puts the previous one back
        return {0: service.point_picture(state)}

    upload = gentle(POINT_OUTPUTS, 1, restore=restore, shown=shown)(handlers.new_photo)
    with gr.Tab("Point prompt", id="points"):
        state = gr.State(PointState(), time_to_live=3600)
        view = point_view()
        outputs = view.outputs(state)
        gr.Examples(
            [[row[0]] for row in EXAMPLES],
            inputs=[view.image],
            outputs=outputs,
            fn=gentle(POINT_OUTPUTS, 1, shown=shown)(lambda image: handlers.new_photo(image, None)),
            label="Examples",
            run_on_click=True,
            cache_examples=False,
            api_visibility="private",
        )
        wire_api = point_api(shared)

    settings = [shared.vocabulary, shared.predefined, shared.advanced.sam_size, shared.advanced.alpha]
    common = dict(outputs=outputs, api_visibility="private", concurrency_id="points", concurrency_limit=limit)
    progress = dict(show_progress_on=[view.message])
    for event in (view.image.upload, view.image.clear):
        event(upload, inputs=[view.image, state], **common, **progress)
    click = gentle(POINT_OUTPUTS, 1, shown=shown)(gpu(handlers.click))
    queued = dict(trigger_mode="multiple")  # clicks made during a run wait their turn (none is dropped)
    runs_ = [view.image.select(click, inputs=[view.click_kind, *settings, state], **common, **progress, **queued)]
    for button, operation in (
        (view.undo, PointState.undo),
        (view.clear, PointState.clear),
        (view.relabel, lambda state: None),
    ):
        edit = gentle(POINT_OUTPUTS, 1, shown=shown)(gpu(handlers.edit(operation)))
        runs_.append(button.click(edit, inputs=[*settings, state], **common, **progress, **queued))
    view.stop.click(
        stopper(runs, "points"), outputs=[view.message], cancels=runs_, queue=False, api_visibility="private"
    )
    wire_api(handlers.segment_points, limit)


def compare_tab(service: SegmentationService, runs: Runs, shared: Shared) -> None:
    """The same SAM-2 masks named by Mask-Adapter and by plain mask pooling, under a
    slider over the photo, and its ``/compare`` endpoint."""
    with gr.Tab("Compare", id="compare"):
        gr.Markdown(
            "The same SAM-2 masks named two ways: by **Mask-Adapter**, and by **plain mask pooling** "
            "(CLIP features averaged inside each mask: the baseline the paper improves on). "
            "Drag the slider over the photo to compare. The settings are the Automatic tab's *Advanced* ones."
        )
        with gr.Row():
            with gr.Column(scale=1):
                image = Photo(type="numpy", label="Photo", sources=["upload", "clipboard"], elem_id="compare-image")
                with gr.Row():
                    button = gr.Button("Compare", variant="primary", elem_id="compare")
                    stop = gr.Button("Stop", variant="stop", elem_id="compare-stop", scale=0, min_width=90)
                message = gr.Markdown(elem_id="compare-message", elem_classes=["status-line"])
            with gr.Column(scale=2):
                slider = gr.ImageSlider(
                    label=f"{COMPARE_TITLES[0]} (left) | {COMPARE_TITLES[1]} (right)",
                    type="filepath",
                    interactive=False,
                    elem_id="compare-slider",
                    max_height=720,
                )
                changes = segment_table("Masks named differently", "compare-changes", CHANGE_HEADERS, max_height=320)
                files = gr.File(
                    label="Downloads (side-by-side PNG, label maps, segments JSON)",
                    file_count="multiple",
                    interactive=False,
                    elem_id="compare-files",
                )
        gr.Examples(EXAMPLES, inputs=[image, shared.vocabulary], label="Examples (photo and vocabulary)")
        hidden = api_outputs("overlay:a", "overlay:b", "message", "table:a", "table:b", "segments:a", "segments:b")
        inputs = [image, shared.vocabulary, shared.predefined, *shared.advanced]
        limit = service.settings.concurrency
        wire_api(compare_handler(service), "compare", inputs, hidden, limit)
        outputs = [slider, message, changes, files]
        run = compare_view(service, runs)
        wire_run(run, (button, stop), inputs, outputs, 1, limit, stopper(runs, "compare"), shown_in_banner(service))
        upload_guard(service, image, message)


VIDEO_KINDS = [("positive point (+)", "positive"), ("negative point (-)", "negative")]


def video_tab(service: SegmentationService, runs: Runs, shared: Shared) -> None:
    """A clip's objects found (or clicked on a frame), tracked and named, and its
    ``/segment_video`` endpoint."""
    handlers = video_handlers(service, runs)
    shown = shown_in_banner(service)
    with gr.Tab("Video", id="video"):
        with gr.Row():
            with gr.Column():
                clip = gr.Video(label="Clip", sources=["upload"], include_audio=True, elem_id="video-clip")
                with gr.Row():
                    button = gr.Button("Track", variant="primary", elem_id="track")
                    stop = gr.Button("Stop", variant="stop", elem_id="video-stop", scale=0, min_width=90)
                message = gr.Markdown(START_VIDEO, elem_id="video-message", elem_classes=["status-line"])
                every = gr.Slider(1, 10, 1, step=1, label="Keep every K-th frame", elem_id="video-every")
                with gr.Accordion("Click objects on a frame (optional)", open=False, elem_id="video-clicks"):
                    index = gr.Slider(0, 1, 0, step=1, label="Frame", elem_id="video-frame")
                    frame = gr.Image(label="Click on an object", interactive=False, elem_id="video-picture")
                    with gr.Row():
                        obj = gr.Number(1, label="Object", precision=0, elem_id="video-object")  # checked by the click
                        kind = gr.Radio(VIDEO_KINDS, value="positive", label="A click adds", elem_id="video-kind")
                    prompts = gr.Textbox("[]", label="Prompts (JSON; [] finds objects itself)", elem_id="video-prompts")
            with gr.Column():
                output = gr.Video(label="Tracked objects", interactive=False, elem_id="video-output")
                table = segment_table("Objects", "video-table", TRACK_HEADERS)
                files = gr.File(
                    label="Downloads (overlay MP4, tracks JSON)", file_count="multiple", interactive=False,
                    elem_id="video-files",
                )  # fmt: skip
        gr.Markdown("Settings: the vocabulary above and the Automatic tab's *Advanced* ones.")
        inputs = [clip, shared.vocabulary, shared.predefined, *shared.advanced, every, prompts]
        limit = service.settings.concurrency
        hidden = api_outputs("video", "message", "track-table", "tracks")
        wire_api(handlers.segment_video, "segment_video", inputs, hidden, limit)
        outputs, stops = [output, message, table, files], stopper(runs, "video")
        wire_run(handlers.run, (button, stop), inputs, outputs, 1, limit, stops, shown)
        private = dict(api_visibility="private", queue=False)
        new_clip = gentle(4, 3, shown=shown)(handlers.new_clip)
        for event in (clip.upload, clip.clear):
            event(new_clip, inputs=[clip], outputs=[index, frame, prompts, message], **private)
        show = gentle(2, 1)(handlers.show_frame)
        index.release(show, inputs=[clip, index, prompts], outputs=[frame, message], **private)
        click = gentle(3, 2)(handlers.click)
        frame.select(click, inputs=[clip, index, obj, kind, prompts], outputs=[frame, prompts, message], **private)


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
        runs = Runs()
        with gr.Tabs(overflow_behavior="wrap"):  # on a phone the four tabs take two rows, none hidden in a menu
            shared = automatic_tab(service, runs, vocabulary, predefined)
            point_tab(service, runs, shared)
            compare_tab(service, runs, shared)
            video_tab(service, runs, shared)

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
    demo.launch(**launch_options(settings))
    print(f"Running on {demo.local_url}", flush=True)
    if demo.share_url:
        print(f"Public link: {demo.share_url}", flush=True)
    else:
        print("For a public link, start it with --share (or MASKADAPTER_SHARE=1).", flush=True)
    demo.block_thread()
    return 0


def launch_options(settings: Settings) -> dict:
    """The options ``main`` launches the app with (tests launch with them too)."""
    return dict(
        server_name=settings.host,
        server_port=settings.port,
        share=settings.share,
        max_file_size=f"{settings.max_upload_mb}mb",
        mcp_server=settings.mcp,
        quiet=True,  # Gradio's own lines suggest launch(share=True); ours name the app's flags
        prevent_thread_lock=True,
        css=CSS,
        js=JS,
        allowed_paths=[str(HERE / "examples")],
        show_error=False,  # only our own short messages reach users (gr.Error)
    )


if __name__ == "__main__":
    sys.exit(main())
