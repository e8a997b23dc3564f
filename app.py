"""Open-vocabulary segmentation in the browser: SAM-2 masks named by Mask-Adapter.

Layout and event wiring only; the work is done by ``maskadapter.service``. Run
``python app.py --help`` for the flags (each also read from MASKADAPTER_<NAME>).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import logging
import sys
from pathlib import Path

import gradio as gr

from maskadapter.errors import MaskAdapterError
from maskadapter.service import TABLE_HEADERS, PointState, SegmentationService, parse_box, parse_points
from maskadapter.settings import Settings, add_arguments, settings_from_args
from maskadapter.vocabulary import PREDEFINED

try:  # ZeroGPU Spaces: GPU work runs inside spaces.GPU-decorated functions
    import spaces

    gpu = spaces.GPU(duration=120)
except ImportError:
    spaces = None

    def gpu(fn):
        return fn


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
MODES = [("label per mask", "per_mask"), ("semantic map", "semantic")]
VOCAB_HINT = "Commas or new lines between classes, `|` between synonyms: `tree | bush, sky, person | people`."
CSS = "#banner {font-size: 0.95em} .gradio-container {max-width: 1400px !important}"


def friendly(fn):
    """Show package errors as short messages (gr.Error), never tracebacks; user state
    is untouched because a failed event updates no output."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except MaskAdapterError as err:
            raise gr.Error(str(err), print_exception=False) from None
        except Exception as err:
            log.exception("unexpected error in %s", fn.__name__)
            raise gr.Error(f"Something went wrong ({type(err).__name__}: {err}).", print_exception=False) from None

    return wrapper


def reporter(progress: gr.Progress):
    return lambda fraction, message: progress(fraction, desc=message)


def build_demo(service: SegmentationService) -> gr.Blocks:
    defaults = service.default_mask_settings()
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

        with gr.Tab("Automatic", id="automatic"):
            auto_session = gr.State(None, time_to_live=3600)
            with gr.Row():
                with gr.Column():
                    auto_image = gr.Image(
                        type="numpy", label="Photo", sources=["upload", "clipboard"], elem_id="auto-image"
                    )
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
                            value="per_mask",
                            label="Mode",
                            info="One label per SAM-2 mask, or a semantic map merging masks per class.",
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

        with gr.Tab("Point prompt", id="points") as point_tab:
            point_state = gr.State(PointState(), time_to_live=3600)
            with gr.Row():
                with gr.Column():
                    point_image = gr.Image(
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
                    point_message = gr.Markdown("Upload a photo, then click on an object.", elem_id="point-message")
                    point_table = gr.Dataframe(
                        headers=TABLE_HEADERS, label="Segment", interactive=False, elem_id="point-table"
                    )
                    point_files = gr.File(label="Downloads", file_count="multiple", interactive=False)
                    point_json = gr.JSON(label="Segment JSON", visible=False)
            point_examples = [[row[0]] for row in EXAMPLES]

        with gr.Group(visible=False):  # inputs and outputs of the /segment_points API endpoint
            api_image = gr.Image(type="numpy", label="image")
            api_points = gr.Textbox("[]", label="points")
            api_box = gr.Textbox("", label="box")
            api_state = gr.State(None, time_to_live=600)
            api_overlay = gr.Image(label="overlay", format="png")
            api_segments = gr.JSON(label="segments")
            api_button = gr.Button("segment points")

        # ---------------------------------------------------------------- events

        def refresh_banner():
            return service.status_markdown(), gr.Timer(active=service.loading)

        demo.load(refresh_banner, outputs=[banner, timer], api_visibility="private")
        timer.tick(refresh_banner, outputs=[banner, timer], api_visibility="private")

        @friendly
        @gpu
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
            mask_settings = dataclasses.replace(
                defaults,
                points_per_side=int(points_per_side),
                pred_iou_thresh=float(pred_iou_thresh),
                stability_score_thresh=float(stability_score_thresh),
            )
            out, session = service.automatic(
                image,
                vocabulary,
                predefined,
                session,
                sam_size,
                mask_settings,
                mode,
                float(score_threshold),
                float(granularity),
                float(alpha),
                reporter(progress),
            )
            files = [str(out.label_map_path), str(out.json_path)]
            return out.picture, out.message, out.rows, files, out.segments, session

        segment_button.click(
            segment_automatic,
            inputs=[
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
            ],
            outputs=[auto_output, auto_message, auto_table, auto_files, auto_json, auto_session],
            api_name="segment_automatic",
        )

        point_outputs = [point_image, point_message, point_table, point_files, point_json, points_text, point_state]

        def point_result(out, state):
            files = [str(out.label_map_path), str(out.json_path)] if out.json_path else None
            return out.picture, out.message, out.rows, files, out.segments or None, state.points_json(), state

        @friendly
        def new_point_image(image):
            if image is None:
                return PointState(), "Upload a photo, then click on an object.", "[]", None, None
            state = service.open_point_image(image)
            return state, "Click on an object to add a point.", "[]", [], None

        for event in (point_image.upload, point_image.clear):
            event(
                new_point_image,
                inputs=[point_image],
                outputs=[point_state, point_message, points_text, point_table, point_json],
                api_visibility="private",
            )
        with point_tab:
            gr.Examples(
                point_examples,
                inputs=[point_image],
                label="Examples",
                fn=new_point_image,
                outputs=[point_state, point_message, points_text, point_table, point_json],
                run_on_click=True,
                cache_examples=False,
                api_visibility="private",
            )

        @friendly
        @gpu
        def click(kind, vocabulary, predefined, sam_size, alpha, state, evt: gr.SelectData, progress=gr.Progress()):
            state = state.copy()
            x, y = evt.index
            state.add(float(x), float(y), kind)
            return point_result(
                service.points(state, vocabulary, predefined, sam_size, alpha, reporter(progress)), state
            )

        point_image.select(
            click,
            inputs=[click_kind, vocabulary, predefined, sam_size, alpha, point_state],
            outputs=point_outputs,
            api_visibility="private",
        )

        def edit(operation):
            @friendly
            @gpu
            def handler(vocabulary, predefined, sam_size, alpha, state, progress=gr.Progress()):
                state = state.copy()
                operation(state)
                if state.key is None:
                    raise gr.Error("Upload a photo first.", print_exception=False)
                out = service.points(state, vocabulary, predefined, sam_size, alpha, reporter(progress))
                return point_result(out, state)

            return handler

        for button, operation in (
            (undo_button, PointState.undo),
            (clear_button, PointState.clear),
            (relabel_button, lambda state: None),
        ):
            button.click(
                edit(operation),
                inputs=[vocabulary, predefined, sam_size, alpha, point_state],
                outputs=point_outputs,
                api_visibility="private",
            )

        @friendly
        @gpu
        def segment_points(
            image, points, vocabulary, predefined, box, sam_size, alpha, session, progress=gr.Progress()
        ):
            state = service.open_point_image(image)
            state.points = parse_points(points)
            state.box = parse_box(box)
            state.actions = ["point"] * len(state.points)
            if not state.ready:
                raise gr.Error(
                    "points need at least one positive point [x, y, 1], or give a box", print_exception=False
                )
            out = service.points(state, vocabulary, predefined, sam_size, alpha, reporter(progress))
            return out.picture, out.segments, state.key

        api_button.click(
            segment_points,
            inputs=[api_image, api_points, vocabulary, predefined, api_box, sam_size, alpha, api_state],
            outputs=[api_overlay, api_segments, api_state],
            api_name="segment_points",
        )
    return demo


def parse_settings(argv: list[str] | None = None) -> Settings:
    parser = argparse.ArgumentParser(description="Open-vocabulary segmentation app (SAM-2 + Mask-Adapter).")
    add_arguments(parser, app=True)
    return settings_from_args(parser.parse_args(argv))


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in ("app", "maskadapter"):
        logging.getLogger(name).setLevel(logging.INFO)
    try:
        settings = parse_settings(argv)
    except MaskAdapterError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    service = SegmentationService(settings)
    service.start(background=spaces is None)  # ZeroGPU wants the models built at start-up
    demo = build_demo(service)
    demo.queue(default_concurrency_limit=1, max_size=64)
    demo.launch(
        server_name=settings.host,
        server_port=settings.port,
        share=settings.share,
        css=CSS,
        allowed_paths=[str(HERE / "examples")],
        show_error=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
