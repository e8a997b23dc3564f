"""The Automatic tab's explorable picture: the photo at its working size with one
transparent layer per segment, so that the page can highlight a segment (hover in the
picture, the legend or the table), name it (select) and show one class alone.

Each layer is a PNG file of its own in the service's output directory (Gradio copies
it into its cache race-free, see ``events.served``); showing a subset of the layers
reuses the files. No Gradio here: ``app.SegmentView`` shows an ``Exploration``.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from maskadapter.engine.results import SegmentationResult
from maskadapter.output.render import class_colors
from maskadapter.ui.present import plain

ALL = "all segments"  # the "Show" choice that shows every layer
FILL_ALPHA = 150  # a layer's fill; its outline is opaque


@dataclass
class Layer:
    """One segment's layer: ``name`` is unique in the result ("cat", or "cat 2" when a
    class has several segments); ``path`` an (h, w) RGBA PNG in the working frame."""

    name: str
    label: str
    path: str


@dataclass
class Exploration:
    """What the picture shows and what selecting a segment tells: the photo at the
    working size (``base``, a PNG path), the layers in the result's order, a colour
    per layer name (``#rrggbb``) and a Markdown line per layer name."""

    base: str
    layers: list[Layer]
    colors: dict[str, str] = field(default_factory=dict)
    details: dict[str, str] = field(default_factory=dict)

    @property
    def classes(self) -> list[str]:
        """The classes shown, in the layers' order, each once."""
        return list(dict.fromkeys(layer.label for layer in self.layers))

    def shown(self, choice: str | None) -> tuple[str, list[tuple[str, str]]]:
        """``(base, [(layer path, name), ...])``: every layer (``ALL``), or those of one class."""
        layers = [x for x in self.layers if choice in (None, ALL) or x.label == choice]
        return self.base, [(x.path, x.name) for x in layers]


def segment_names(result: SegmentationResult) -> list[str]:
    """A name per segment, unique in the result: its label, numbered ("cat 1", "cat 2")
    when the label has several segments (one label per mask)."""
    counts: dict[str, int] = {}
    for seg in result.segments:
        counts[seg.label] = counts.get(seg.label, 0) + 1
    seen: dict[str, int] = {}
    names = []
    for seg in result.segments:
        seen[seg.label] = seen.get(seg.label, 0) + 1
        names.append(seg.label if counts[seg.label] == 1 else f"{seg.label} {seen[seg.label]}")
    return names


def details_markdown(result: SegmentationResult, index: int, name: str) -> str:
    """One segment in words: name, label, score, area (share and pixels) and top 5."""
    seg = result.segments[index]
    share = 100.0 * seg.area / max(1, result.label_map.size)
    top = ", ".join(f"{plain(label)} {score:.2f}" for label, score in seg.top5)
    return (
        f"**{plain(name)}**: {plain(seg.label)}, score {seg.score:.2f}, "
        f"{share:.1f}% of the photo ({seg.area:,} pixels). Top 5: {top}"
    )


def explore(image: np.ndarray, result: SegmentationResult, directory: Path) -> Exploration:
    """The layers of ``result`` over ``image`` ((H, W, 3) uint8 RGB, the photo it was
    made from), written as PNG files in ``directory``: the photo resized to the result's
    working frame and, per segment, its working-frame mask in its class colour."""
    working = result.working_label_map
    h, w = working.shape if working is not None else result.image_size
    directory.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex[:12]
    base = directory / f"explore-{tag}.png"
    photo = result.frame.shrink(image) if result.frame is not None else image
    Image.fromarray(photo).save(base, format="PNG", compress_level=1)
    colors = class_colors(len(result.labels))
    names = segment_names(result)
    layers, hexes, details = [], {}, {}
    kernel = np.ones((3, 3), np.uint8)
    for i, (seg, name) in enumerate(zip(result.segments, names, strict=True)):
        plane = (seg.working_mask if working is not None else seg.mask).astype(np.uint8)  # (h, w)
        inside = cv2.erode(plane, kernel)  # the outline: mask pixels with a neighbour outside
        rgba = np.zeros((h, w, 4), np.uint8)
        rgba[..., :3] = colors[seg.class_id]
        rgba[..., 3] = plane * FILL_ALPHA + (plane - inside) * (255 - FILL_ALPHA)
        path = directory / f"explore-{tag}-{i}.png"
        Image.fromarray(rgba, "RGBA").save(path, format="PNG", compress_level=1)
        layers.append(Layer(name, seg.label, str(path)))
        hexes[name] = "#{:02x}{:02x}{:02x}".format(*(int(v) for v in colors[seg.class_id]))
        details[name] = details_markdown(result, i, name)
    return Exploration(str(base), layers, hexes, details)
