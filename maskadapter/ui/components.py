"""The app's own Gradio components: the browser side is Gradio's, the server side ours."""

from __future__ import annotations

import gradio as gr
from gradio.components.annotated_image import AnnotatedImageData, Annotation
from gradio.data_classes import FileData

from maskadapter.engine.images import load_image
from maskadapter.errors import InputError


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


class SegmentView(gr.AnnotatedImage):
    """``gr.AnnotatedImage`` showing an ``Exploration``'s files as they are: its value is
    ``(base PNG path, [(layer PNG path, name), ...])`` (``Exploration.shown``), each
    layer already coloured, so nothing is drawn again when one class is shown alone."""

    is_template = True  # the browser side is gr.AnnotatedImage's

    def postprocess(self, value):
        if value is None:
            return None
        base, layers = value
        return AnnotatedImageData(
            image=FileData(path=base), annotations=[Annotation(image=FileData(path=p), label=n) for p, n in layers]
        )
