"""The API endpoints' docstrings, their shared parts written once.

Gradio reads an endpoint's docstring (``gradio.utils.get_function_description``) for
the API page and the MCP tool: the text before ``Args:`` is the description (its lines
joined by spaces), each ``name: text`` line under ``Args:`` describes that parameter,
and the lines under ``Returns:`` the outputs. ``documented(doc)`` sets a function's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

F = TypeVar("F", bound=Callable)

IMAGE_URLS = (
    "Pass the image as a data URL (data:image/png;base64,...) or as a public http(s) URL\n"
    "(Gradio refuses URLs of loopback and private addresses)."
)
VOCABULARY_SYNTAX = (
    "The vocabulary has commas or new lines between classes and `|` between synonyms of one class, "
    'e.g. "car, road, tree | bush".'
)
POINTS_SYNTAX = (
    "Points are JSON [[x, y, label], ...]\n"
    "in the original image's pixels (x right, y down from the top-left corner), label 1 positive\n"
    "(on the object) or 0 negative (not on it); at least one positive point unless a box is given."
)
SEGMENT_FIELDS = "top-5, area, bbox [x, y, w, h], SAM-2's IoU estimate and a COCO RLE mask {size, counts}"

# the parameters' descriptions; "alpha" differs per endpoint
ARGS = {
    "image": "the photo: a data:image/...;base64 URL or a public http(s) URL (PNG, JPEG, WebP, ...)",
    "points": "JSON [[x, y, label], ...] in original-image pixels; label 1 positive, 0 negative",
    "vocabulary": 'classes, commas or new lines between classes, `|` between synonyms: "car, road, tree | bush"',
    "predefined": 'predefined vocabularies added to the classes, e.g. ["coco"]; may be empty',
    "box": "optional JSON [x0, y0, x1, y1] in original-image pixels around the object; empty for none",
    "sam_size": "SAM-2 model size (a size other than the default downloads on first use)",
    "points_per_side": "SAM-2 prompt grid, points per side (4 to 64); more finds smaller things, slower",
    "pred_iou_thresh": "SAM-2's predicted-IoU filter on masks, 0 to 1",
    "stability_score_thresh": "SAM-2's stability filter on masks, 0 to 1",
    "mode": '"semantic" (default: one segment per class, its masks merged) or "per_mask" (one per mask)',
    "score_threshold": "drop segments whose class probability is lower, 0 to 1 (default 0)",
    "granularity": "semantic mode: keep masks scoring at least this times the class's best (default 0.8)",
}
AUTOMATIC_ARGS = (
    "image",
    "vocabulary",
    "predefined",
    "sam_size",
    "points_per_side",
    "pred_iou_thresh",
    "stability_score_thresh",
    "mode",
    "score_threshold",
    "granularity",
)


def endpoint_doc(summary: str, about: Sequence[str], args: Sequence[tuple[str, str]], returns: Sequence[str]) -> str:
    """A docstring in the form Gradio reads: ``summary``, a paragraph of the ``about``
    sentences, ``Args:`` (name, text) and ``Returns:`` lines."""
    lines = [summary, "", "\n".join(about), "", "Args:"]
    lines += [f"    {name}: {text}" for name, text in args]
    lines += ["", "Returns:"] + [f"    {line}" for line in returns]
    return "\n".join(lines)


def _args(names: Sequence[str], alpha: str) -> list[tuple[str, str]]:
    return [(name, ARGS[name]) for name in names] + [("alpha", alpha)]


SEGMENT_AUTOMATIC = endpoint_doc(
    "Segment everything in a photo: SAM-2 proposes masks from a grid of point prompts and\n"
    "Mask-Adapter over CLIP names each with one class of the vocabulary. The grid runs coarse to\n"
    "fine, and the endpoint yields a complete result after each step (for a 32x32 grid: 64, 256,\n"
    "then 1024 points); the last one is the final result (gradio_client: predict() gives it,\n"
    "submit(...).outputs() every step).",
    [IMAGE_URLS, VOCABULARY_SYNTAX],
    _args(AUTOMATIC_ARGS, "opacity of the colours painted on the overlay, 0 to 1"),
    [
        "overlay: PNG of the photo with the segments painted, a legend below",
        "message: one line saying what was found",
        "table: one row per segment (label, score, area, ...)",
        "files: a label-map PNG and the segments JSON file",
        "segments: JSON with the image size, the labels, and per segment its label, class id, score",
        SEGMENT_FIELDS,
    ],
)

SEGMENT_POINTS = endpoint_doc(
    "Segment the object under point prompts (and an optional box) with SAM-2, and name it with\n"
    "Mask-Adapter over CLIP: the class of the vocabulary that fits it best.",
    [IMAGE_URLS, POINTS_SYNTAX, VOCABULARY_SYNTAX],
    _args(
        ("image", "points", "vocabulary", "predefined", "box", "sam_size"),
        "opacity of the colour painted on the overlay, 0 to 1",
    ),
    [
        "overlay: PNG of the photo with the segment painted and its label",
        "segments: JSON with the image size, the labels, and one segment: its label, class id, score",
        SEGMENT_FIELDS,
    ],
)

COMPARE = endpoint_doc(
    "Segment everything in a photo as segment_automatic does, and name the same SAM-2 masks twice:\n"
    "by Mask-Adapter and by plain mask pooling (CLIP features averaged inside each mask, the\n"
    "baseline), to see where the adapter changes the label.",
    [IMAGE_URLS, VOCABULARY_SYNTAX],
    _args(AUTOMATIC_ARGS, "opacity of the colours painted on the overlays, 0 to 1"),
    [
        "adapter_overlay: PNG overlay of the masks named by Mask-Adapter",
        "pooling_overlay: PNG overlay of the same masks named by mask pooling",
        "message: how many masks changed label",
        "adapter_table: Mask-Adapter's segments, one row each",
        "pooling_table: mask pooling's segments, one row each",
        "adapter_segments: Mask-Adapter's segments JSON (as segment_automatic's, with COCO RLE masks)",
        "pooling_segments: mask pooling's segments JSON",
    ],
)

SEGMENT_VIDEO = endpoint_doc(
    "Find the objects of a video clip and follow them: SAM-2 segments everything on the first frame\n"
    "and again every 20 frames (or starts from the prompts given), its video predictor tracks each\n"
    "object, and Mask-Adapter over CLIP names it from several of its frames.",
    [
        "Pass the clip (MP4, MOV, WebM, GIF) as a data URL (data:video/mp4;base64,...), a public http(s) URL\n"
        "or a file upload.",
        VOCABULARY_SYNTAX,
    ],
    [("video", "the clip: a data:video/mp4;base64 URL, a public http(s) URL or a file (MP4, MOV, WebM, GIF)")]
    + [(name, ARGS[name]) for name in AUTOMATIC_ARGS[1:]]
    + [
        ("alpha", "opacity of the colours painted on the overlay video, 0 to 1"),
        ("every", "keep every K-th frame (1: all)"),
        ("prompts", 'optional JSON [{"frame": 0, "object": 1, "points": [[x, y, 1]], "box": [x0, y0, x1, y1]}]; '
         "empty: objects are found automatically"),
    ],  # fmt: skip
    [
        "overlay: MP4 of the clip with each tracked object painted in its colour and named",
        "message: one line saying what was tracked",
        "table: one row per object (name, label, score, frames visible, top-5)",
        "tracks: JSON with the clip's size, fps, frame count and labels, and per object its id, label, class id, "
        "score, top-5 and per frame its bbox [x, y, w, h], area and COCO RLE mask",
    ],
)


def documented(doc: str) -> Callable[[F], F]:
    """A decorator that gives a function the docstring ``doc``."""

    def decorate(fn: F) -> F:
        fn.__doc__ = doc
        return fn

    return decorate
