"""Drawing results: coloured masks, contours, one label per class, a legend.

All functions take and return (H, W, 3) uint8 RGB arrays. Class names are drawn as
plain text with PIL and a TrueType font (DejaVu Sans Bold, shipped with matplotlib):
any Unicode the font covers, markup such as ``$x^2$`` or ``<b>x</b>`` literally. A name
with characters DejaVu lacks (CJK, for instance) is drawn with an installed font that
has them, when there is one; otherwise those characters show as boxes.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Sequence
from functools import cache, lru_cache
from pathlib import Path

import cv2
import matplotlib
import numpy as np
from fontTools.ttLib import TTFont, TTLibError
from matplotlib import colormaps, font_manager
from matplotlib.colors import hsv_to_rgb
from PIL import Image, ImageDraw, ImageFont

from maskadapter.engine.results import SegmentationResult

log = logging.getLogger(__name__)

UNLABELLED = -1
FONT_PATH = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans-Bold.ttf"
# at most this many characters of a class name in the picture (the JSON has them all)
MAX_LABEL_CHARS = 40
# installed fonts looked through for characters DejaVu lacks
MAX_FALLBACK_FONTS = 200


def class_colors(num_classes: int) -> np.ndarray:
    """(C, 3) uint8 colours, distinct per class: matplotlib's tab20 up to 20 classes,
    beyond that golden-ratio hue steps with cycling saturation and brightness."""
    if num_classes <= 20:
        rgb = colormaps["tab20"](np.arange(num_classes) / 20.0)[:, :3]
    else:
        i = np.arange(num_classes)
        hue = (i * 0.618033988749895) % 1.0
        saturation = np.array([0.85, 0.6, 0.95])[i % 3]
        value = np.array([0.95, 0.8, 0.65])[(i // 3) % 3]
        rgb = hsv_to_rgb(np.stack([hue, saturation, value], axis=1))
    return (rgb * 255).round().astype(np.uint8)


@lru_cache(maxsize=64)
def _font_file(path: str, size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """The TrueType font at ``path`` in ``size`` pixels; PIL's default font if unusable."""
    try:
        return ImageFont.truetype(path, size)
    except OSError as err:
        log.warning("font %s not usable, drawing labels with PIL's default font: %s", path, err)
        return ImageFont.load_default(size)


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return _font_file(str(FONT_PATH), size)


@cache
def _coverage(path: str) -> frozenset[int]:
    """Code points the font file has glyphs for (empty when it cannot be read)."""
    try:
        with TTFont(path, lazy=True, fontNumber=0) as font:
            return frozenset(font.getBestCmap() or ())
    except (OSError, TTLibError, AssertionError, KeyError, ValueError, struct.error) as err:
        log.debug("font %s not readable: %s", path, err)
        return frozenset()


def _fallback_paths() -> list[str]:
    """Installed font files, sans-serif bold first (as matplotlib lists them)."""
    entries = [
        e
        for e in font_manager.fontManager.ttflist
        if Path(e.fname).suffix.lower() in (".ttf", ".otf", ".ttc")
        and "last resort" not in e.name.lower()  # placeholder glyphs for every code point
    ]

    def rank(entry) -> tuple[bool, bool, bool]:
        name = entry.name.lower()
        bold = entry.weight in ("bold", 700) or (isinstance(entry.weight, int) and entry.weight >= 600)
        return ("sans" not in name or "mono" in name, entry.style != "normal", not bold)

    return [e.fname for e in sorted(entries, key=rank)][:MAX_FALLBACK_FONTS]


@lru_cache(maxsize=4096)
def _font_path_for(text: str) -> str:
    """DejaVu Sans Bold when it has every character of ``text``, else the installed
    font with the most of them (DejaVu on ties)."""
    needed = {ord(ch) for ch in text if not ch.isspace()}
    best, best_missing = str(FONT_PATH), len(needed - _coverage(str(FONT_PATH)))
    if best_missing == 0 or not FONT_PATH.exists():
        return best
    for path in _fallback_paths():
        missing = len(needed - _coverage(path))
        if missing < best_missing:
            best, best_missing = path, missing
            if missing == 0:
                break
    return best


def _font_for(text: str, size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return _font_file(_font_path_for(text), size)


def _shorten(text: str, limit: int = MAX_LABEL_CHARS) -> str:
    """``text`` with at most ``limit`` characters, an ellipsis marking a cut."""
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _font_size(hw: tuple[int, int]) -> int:
    return int(np.clip(min(hw) / 40, 11, 28))


def _text_size(text: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont) -> tuple[int, int]:
    x0, y0, x1, y1 = font.getbbox(text)
    return int(x1 - x0), int(y1 - y0)


def _label_anchor(region: np.ndarray, text_wh: tuple[int, int]) -> tuple[int, int] | None:
    """Centre of the largest text box that fits inside ``region``, or None."""
    padded = np.pad(region.astype(np.uint8), 1)
    dist = cv2.distanceTransform(padded, cv2.DIST_L2, 5)[1:-1, 1:-1]
    y, x = np.unravel_index(int(dist.argmax()), dist.shape)
    tw, th = text_wh
    h, w = region.shape
    x0, y0 = int(x - tw / 2), int(y - th / 2)
    if x0 < 0 or y0 < 0 or x0 + tw > w or y0 + th > h:
        return None
    box = region[y0 : y0 + th, x0 : x0 + tw]
    return (int(x), int(y)) if box.mean() >= 0.9 else None


def _draw_label(draw: ImageDraw.ImageDraw, xy: tuple[int, int], text: str, font) -> None:
    draw.text(xy, text, font=font, fill=(255, 255, 255), anchor="mm", stroke_width=2, stroke_fill=(0, 0, 0))


def overlay(
    image: np.ndarray,
    result: SegmentationResult,
    alpha: float = 0.5,
    contours: bool = True,
    labels: bool = True,
    legend: bool = True,
    points: Sequence[Sequence[float]] = (),
    box: Sequence[float] | None = None,
    corner: Sequence[float] | None = None,
) -> np.ndarray:
    """The image with every segment filled in its class colour.

    Args:
        image: (H, W, 3) uint8 RGB, the segmented image.
        alpha: opacity of the colour fill in [0, 1].
        contours: outline each segment; labels: write each class name once, inside
            its largest region where the text fits; legend: append a legend below.
        points: ``[[x, y, label], ...]`` prompts to mark (green positive, red negative).
        box: optional XYXY box prompt to outline.
        corner: optional (x, y) first corner of a box being drawn, marked as a corner.
    Returns:
        (H', W, 3) uint8 RGB (H' = H plus the legend's height when ``legend``).
    """
    alpha = float(np.clip(alpha, 0.0, 1.0))
    colors = class_colors(len(result.labels))
    label_map = result.label_map
    covered = label_map >= 0
    out = image.copy()
    if covered.any():  # uint8 blend: no float copy of a large photo
        fill = colors[np.clip(label_map, 0, None)]
        blended = cv2.addWeighted(image, 1 - alpha, fill, alpha, 0)
        out[covered] = blended[covered]
    # contours and label anchors come from the working frame, scaled to the image
    working = result.working_label_map if result.working_label_map is not None else label_map
    sy, sx = label_map.shape[0] / working.shape[0], label_map.shape[1] / working.shape[1]
    if contours:
        for seg in result.segments:
            plane = getattr(seg, "working_mask", None)
            plane = seg.mask if plane is None else plane
            found, _ = cv2.findContours(plane.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            found = [np.round((c + 0.5) * (sx, sy) - 0.5).astype(np.int32) for c in found]
            color = tuple(int(v) for v in colors[seg.class_id])
            cv2.drawContours(out, found, -1, (255, 255, 255), 3, lineType=cv2.LINE_AA)
            cv2.drawContours(out, found, -1, color, 1, lineType=cv2.LINE_AA)
    pil = Image.fromarray(out)
    draw = ImageDraw.Draw(pil)
    size = _font_size(result.image_size)
    if labels:
        for class_id in _present_classes(result):
            region = working == class_id
            count, components, stats, _ = cv2.connectedComponentsWithStats(region.astype(np.uint8), connectivity=8)
            if count < 2:
                continue
            largest = 1 + int(stats[1:, cv2.CC_STAT_AREA].argmax())
            text = _shorten(result.labels[class_id])
            font = _font_for(text, size)
            tw, th = _text_size(text, font)
            anchor = _label_anchor(components == largest, (int(np.ceil(tw / sx)), int(np.ceil(th / sy))))
            if anchor is not None:
                _draw_label(draw, (int(anchor[0] * sx), int(anchor[1] * sy)), text, font)
    if box is not None:
        x0, y0, x1, y1 = (float(v) for v in box)
        draw.rectangle((x0, y0, x1, y1), outline=(255, 215, 0), width=3)
    radius = max(4, size // 2)
    if corner is not None:  # a box's corner: crossing lines in the box's colour, not a dot
        x, y = (float(v) for v in corner[:2])
        arm = 3 * radius
        for line in (((x - arm, y), (x + arm, y)), ((x, y - arm), (x, y + arm))):
            draw.line(line, fill=(255, 255, 255), width=5)
            draw.line(line, fill=(255, 215, 0), width=3)
    for x, y, lab in points:
        color = (40, 220, 60) if int(lab) == 1 else (230, 40, 40)
        draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=color, outline=(255, 255, 255), width=2)
    out = np.asarray(pil)
    if legend:
        out = np.concatenate([out, legend_panel(result, out.shape[1])], axis=0)
    return out


def _class_pixels(result: SegmentationResult) -> np.ndarray:
    """(C,) pixels of each class in the label map."""
    return np.bincount((result.label_map + 1).ravel(), minlength=len(result.labels) + 1)[1:]


def _present_classes(result: SegmentationResult) -> list[int]:
    """Class ids visible in the label map, largest area first."""
    counts = _class_pixels(result)
    return [int(i) for i in np.argsort(-counts, kind="stable") if counts[i] > 0]


def legend_panel(result: SegmentationResult, width: int) -> np.ndarray:
    """(h, width, 3) uint8 strip listing the visible classes with their colours and
    share of the image, or a line saying nothing was labelled."""
    colors = class_colors(len(result.labels))
    size = _font_size(result.image_size)
    font = _font(size)
    total = max(1, result.label_map.size)
    counts = _class_pixels(result)
    items = [
        (f"{_shorten(result.labels[c])} {100.0 * counts[c] / total:.1f}%", c) for c in _present_classes(result)
    ] or [("no segment labelled", None)]
    line_h = _text_size("Ag", font)[1] + 12
    swatch = line_h - 10
    rows, row, x = [], [], 8
    for text, c in items:
        item_w = swatch + 6 + _text_size(text, _font_for(text, size))[0] + 18
        if row and x + item_w > width - 8:
            rows.append(row)
            row, x = [], 8
        row.append((x, text, c))
        x += item_w
    rows.append(row)
    panel = Image.new("RGB", (width, line_h * len(rows) + 8), (250, 250, 250))
    draw = ImageDraw.Draw(panel)
    for r, row_items in enumerate(rows):
        y = 4 + r * line_h
        for x, text, c in row_items:
            if c is not None:
                draw.rectangle(
                    (x, y + 5, x + swatch, y + 5 + swatch), fill=tuple(int(v) for v in colors[c]), outline=(60, 60, 60)
                )
            draw.text(
                (x + swatch + 6, y + line_h // 2), text, font=_font_for(text, size), fill=(20, 20, 20), anchor="lm"
            )
    return np.asarray(panel)


def draw_points(
    image: np.ndarray,
    points: Sequence[Sequence[float]],
    box: Sequence[float] | None = None,
    corner: Sequence[float] | None = None,
) -> np.ndarray:
    """The image with prompt points (and box, and a box's first corner) marked, nothing else."""
    empty = SegmentationResult(image.shape[:2], [], [], np.full(image.shape[:2], UNLABELLED, np.int32), "per_mask")
    return overlay(image, empty, legend=False, points=points, box=box, corner=corner)


COMPARE_TITLES = ("Mask-Adapter", "plain mask pooling (baseline)")


def side_by_side(pictures: Sequence[np.ndarray], titles: Sequence[str], gap: int = 12) -> np.ndarray:
    """(H_i, W_i, 3) uint8 pictures next to each other on white, each under its title
    (a comparison: the same masks classified two ways)."""
    size = _font_size(pictures[0].shape[:2])
    title_h = size + 14
    height = max(p.shape[0] for p in pictures) + title_h
    width = sum(p.shape[1] for p in pictures) + gap * (len(pictures) - 1)
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    x = 0
    for picture, title in zip(pictures, titles, strict=True):
        draw.text((x + 4, title_h // 2), title, font=_font_for(title, size), fill=(20, 20, 20), anchor="lm")
        canvas.paste(Image.fromarray(picture), (x, title_h))
        x += picture.shape[1] + gap
    return np.asarray(canvas)
