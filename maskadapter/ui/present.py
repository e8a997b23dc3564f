"""Words for people: the service's data as Markdown, table rows and messages.

Every text a user reads about a result or the models is made here (the app's layout
labels are in ``app.py``); user text such as class names always shows literally
(``plain``). No Gradio: a Markdown string, a list of rows or a list of file paths each.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Sequence

from maskadapter.engine.results import SegmentationResult
from maskadapter.errors import MaskAdapterError, WeightsNotFoundError
from maskadapter.output.render import class_colors
from maskadapter.point_prompts import PointState
from maskadapter.service import ComparedOutput, LoadStatus, Output

TABLE_HEADERS = ["label", "score", "area %", "alternatives (top 3)"]
START = "Upload a photo, then click on an object."  # the point tab's message without a photo


def plain(text: str) -> str:
    """``text`` escaped for Gradio's Markdown (and the HTML it allows): user text such
    as class names always shows literally."""
    return re.sub(r"([\\`*_{}\[\]()#+!|~$-])", r"\\\1", html.escape(str(text), quote=False))


def error_markdown(err: MaskAdapterError) -> str:
    """An error as Markdown: its text shown literally; the missing files of a
    ``WeightsNotFoundError`` as a list between its message and its advice."""
    if not isinstance(err, WeightsNotFoundError) or not err.files:
        return plain(err.summary)
    items = "\n".join(f"- {plain(line)}" for line in err.files)
    return f"{plain(err.message)}\n\n{items}\n\n{plain(err.advice)}"


def status_markdown(status: LoadStatus) -> str:
    """A line for the top of the page: what runs, or why nothing does."""
    if status.loading:
        return f"**Loading models:** {status.step} The first request waits for them."
    if status.error is not None:
        return "**The models could not be loaded.** " + error_markdown(status.error)
    seg = status.segmenter
    text = f"Models: {seg.models.description}; device `{seg.device}`, {seg.arithmetic}"
    if seg.amp_dtype is not None:
        text += " autocast"
    if not seg.real_weights:
        text = (
            "**Random weights (`--tiny-random`): masks and labels are meaningless.** "
            "This mode only shows that the app works; run without `--tiny-random` "
            "to download the real models. " + text
        )
    return text


def table_rows(
    result: SegmentationResult | None, names: Sequence[str] | None = None, digits: int = 3
) -> list[list]:
    """One row per segment, in the result's order (``TABLE_HEADERS``): label (or the
    segment's name from ``names``, as the app's picture names it), score (``digits``
    decimals), area in percent of the image (one decimal fewer), and the next three
    labels of its top 5 with their scores, e.g. ``"dog (0.12), wall (0.05), sky
    (0.01)"``; [] without a result. The page shows 2 digits (narrow columns on a
    phone), the API 3."""
    if result is None:
        return []
    total = result.label_map.size
    names = names or [seg.label for seg in result.segments]
    return [
        [
            name,
            round(seg.score, digits),
            round(100.0 * seg.area / total, digits - 1),
            ", ".join(f"{label} ({score:.2f})" for label, score in seg.top5[1:4]),
        ]
        for seg, name in zip(result.segments, names, strict=True)
    ]


CHANGE_HEADERS = ["SAM-2 mask", "Mask-Adapter", "plain mask pooling", "area %"]


def change_rows(found: ComparedOutput) -> list[list]:
    """The masks the two methods name differently (``CHANGE_HEADERS``): the mask's
    number, its class under each ("(none)" for none of the vocabulary), its area in
    percent of the image, largest first."""
    total = max(1, found.adapter.result.label_map.size)
    changes = sorted(found.changes, key=lambda c: -c.area)
    return [
        [c.mask + 1, c.adapter or "(none)", c.pooling or "(none)", round(100.0 * c.area / total, 2)] for c in changes
    ]


def legend_html(result: SegmentationResult | None) -> str:
    """The classes shown in a result as HTML swatches with their labels and scores
    (the point tab's legend); "" without a segment."""
    if result is None or not result.segments:
        return ""
    colors = class_colors(len(result.labels))
    items = []
    for seg in result.segments:
        r, g, b = (int(v) for v in colors[seg.class_id])
        items.append(
            f'<span class="legend-entry"><span class="swatch" style="background: rgb({r}, {g}, {b})"></span>'
            f"{html.escape(seg.label)} ({seg.score:.2f})</span>"
        )
    return f'<div class="point-legend">{"".join(items)}</div>'


def box_text(state: PointState) -> str:
    """The point tab's box field: the box ``[x0, y0, x1, y1]`` in original pixels, the
    first corner of one being drawn, or "" without a box."""
    if state.corner:
        x, y = (round(v) for v in state.corner)
        return f"first corner ({x}, {y}): click the opposite corner"
    if state.box:
        return json.dumps([round(v) for v in state.box])
    return ""


def banner_error(status: LoadStatus, err: Exception) -> str | None:
    """A tab's short line for the error the page's banner shows in full (model loading
    failed), else None."""
    if status.error is not None and err is status.error:
        return "The models could not be loaded; the message at the top of the page says why."
    return None


def downloads(out: Output) -> list[str] | None:
    """The files to download (label map PNG, segments JSON) as paths, or None when they
    could not be written."""
    return [str(out.label_map_path), str(out.json_path)] if out.downloads else None


def automatic_message(out: Output) -> str:
    """What the Automatic tab says about a result (Markdown)."""
    count = len(out.result.segments)
    message = f"{count} segment{'' if count == 1 else 's'}."
    if out.points is not None:  # a step before the last: the picture is refined as more points run
        done, total = out.points
        return f"{message} From {done} of {total} points; refining with the rest…"
    if not count:
        message = (
            "No segment: SAM-2 found no mask that passes its thresholds, or every mask scored "
            "below the score threshold. Lower them under Advanced."
        )
    return _with_notes(message, out.notes, out.downloads)


def compare_message(found: ComparedOutput) -> str:
    """What the Compare tab says: how many masks changed label (Markdown)."""
    message = (
        f"{found.changed} of {found.masks} SAM-2 mask{'' if found.masks == 1 else 's'} changed label "
        "between Mask-Adapter and plain mask pooling."
    )
    return _with_notes(message, found.adapter.notes, found.adapter.downloads and found.pooling.downloads)


def points_message(out: Output, state: PointState) -> str:
    """What the point tab says: the label, its score and alternatives, or what to click
    next when the state has no prompt SAM-2 can use yet (Markdown)."""
    if out.result is None:
        if state.corner:
            return "Click the opposite corner of the box."
        if state.points:
            return "Add a positive point (or a box) on the object."
        return "Click on the object to add a point."
    if out.result.segments:
        seg = out.result.segments[0]
        alternatives = ", ".join(f"{plain(label)} {score:.2f}" for label, score in seg.top5[1:4])
        message = f"**{plain(seg.label)}** ({seg.score:.2f}); alternatives: {alternatives}"
    else:
        message = "SAM-2 returned an empty mask for these points; try another click."
    if state.corner:
        message += " Click the opposite corner of the box."
    return _with_notes(message, out.notes, out.downloads)


def _with_notes(message: str, notes: Sequence[str], downloads: bool) -> str:
    """``message`` (Markdown) with the notices about the vocabulary and a word on
    missing downloads."""
    extra = [plain(note) + "." for note in notes]
    if not downloads:
        extra.append("Downloads are unavailable: the server could not write its output files.")
    return " ".join([message, *extra])


TRACK_HEADERS = ["object", "label", "score", "frames", "top 5"]  # the Video tab's table
