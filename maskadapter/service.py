"""The app's service object: one per process, shared by every user.

It builds the models once (in a background thread, so the page comes up at once),
hands out a ``Segmenter`` per SAM-2 size, turns UI inputs (text, slider values, JSON
strings) into engine calls and results into pictures, table rows and files. Image
sessions live in the segmenter's bounded ``SessionStore``; per-user state is a
session key (and, for the point tab, ``PointState``), passed in and returned.
UI-free: ``app.py`` wires it to Gradio.
"""

from __future__ import annotations

import contextlib
import dataclasses
import html
import json
import logging
import re
import tempfile
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

from maskadapter.engine.mask_settings import AutoMaskSettings, default_mask_settings
from maskadapter.engine.runtime import ModelToken, model_token
from maskadapter.engine.segmenter import SegmentationResult, Segmenter
from maskadapter.engine.session import ImageSession, key_mentions
from maskadapter.engine.transforms import box_corners, box_in_image, check_point, check_points, point_list
from maskadapter.engine.vocabulary import Vocabulary, build_vocabulary
from maskadapter.engine.weights import build_sam2_model, resolve_sam2_file, sam2_config_for
from maskadapter.errors import InputError, MaskAdapterError, WeightsNotFoundError
from maskadapter.output.export import save_label_map, segments_to_dict, write_segments_json
from maskadapter.output.render import draw_points, overlay
from maskadapter.settings import SAM2_SIZES, Settings

log = logging.getLogger(__name__)

Report = Callable[[float, str], None]
OUTPUT_TTL_S = 3600
TABLE_HEADERS = ["label", "score", "area %", "alternatives (top 3)"]
MAX_PROMPT_CHARS = 100_000  # points or box JSON text longer than this is refused unread


def _quiet(fraction: float, message: str) -> None:
    log.info("%.0f%% %s", 100 * fraction, message)


def _sweep(directory: Path) -> None:
    """Remove the files in ``directory`` older than ``OUTPUT_TTL_S``."""
    now = time.time()
    for old in directory.iterdir():
        with contextlib.suppress(OSError):
            if old.is_file() and now - old.stat().st_mtime > OUTPUT_TTL_S:
                old.unlink()


def gpu_seconds(image_hw: tuple[int, int] | None, points_per_side: int | None = None) -> int:
    """Seconds of GPU to ask a ZeroGPU Space for one request (it queues shorter asks
    first): encoding and classification grow with the image's megapixels, automatic
    masks with the number of grid points (1024 at the default 32 x 32, about a second on
    an A100-class GPU); doubled for slack, between 15 and 120."""
    megapixels = (image_hw[0] * image_hw[1] / 1e6) if image_hw else 1.0
    points = (points_per_side or 0) ** 2
    return int(min(120, max(15, 2 * (5 + 2 * megapixels + 3 * points / 1024))))


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


CLICK_KINDS = ("positive", "negative", "box")
MAX_UNDO_STEPS = 256  # undo records kept per user; the oldest are dropped first


class PromptSnapshot(NamedTuple):
    """An immutable copy of a point state's prompts, kept for undo."""

    points: tuple[tuple[float, float, int], ...]
    box: tuple[float, ...] | None
    corner: tuple[float, ...] | None


@dataclass
class PointState:
    """One user's point-prompt tab: a key into the segmenter's session store (which
    keeps the photo), the image's size, the points and an optional box.

    Conventions: XY pixels of the original image (0 <= x <= W, 0 <= y <= H); ``points``
    holds ``[x, y, label]`` with label 1 positive, 0 negative (at most ``MAX_POINTS``);
    ``box`` is XYXY with x0 < x1, y0 < y1; ``corner`` is the first click of a box being
    drawn. Every change (a point, a box corner, a clear) pushes a snapshot of the
    prompts before it onto ``history``; ``undo`` pops one, so undoing in any order gives
    back exactly the earlier points, box and pending corner. A refused click changes
    nothing, not even the history.
    """

    key: str | None = None
    hw: tuple[int, int] | None = None
    points: list[list[float]] = field(default_factory=list)  # [x, y, label]
    box: list[float] | None = None  # XYXY
    corner: list[float] | None = None  # first corner of a box being drawn
    history: list[PromptSnapshot] = field(default_factory=list)  # the prompts before each change, for undo

    def add(self, x: float, y: float, kind: str) -> None:
        """Add a click at (x, y), XY pixels of the original image. ``kind``: "positive"
        (label 1), "negative" (label 0) or "box": the first box click sets ``corner``,
        the second makes ``box`` from the two opposite corners (in any order), replacing
        an earlier box. Raises ``InputError`` and changes nothing when the click is
        refused (no image, unknown kind, not finite, outside the image, a box under
        1 pixel, more than ``MAX_POINTS`` points)."""
        if self.hw is None:
            raise InputError("upload an image first, then click on it")
        if kind not in CLICK_KINDS:
            raise InputError(f"unknown click kind {kind!r}: expected one of {', '.join(CLICK_KINDS)}")
        x, y = check_point(x, y, self.hw, "the click")
        points, box, corner = self.points, self.box, self.corner
        if kind == "box" and corner is None:
            corner = [x, y]
        elif kind == "box":
            box, corner = box_in_image([*corner, x, y], self.hw), None
        else:
            points = [*points, [x, y, 1 if kind == "positive" else 0]]
            check_points(points, self.hw, require_positive=False)  # the count limit
        self._push()
        self.points, self.box, self.corner = points, box, corner

    def snapshot(self) -> PromptSnapshot:
        """The current points, box and pending corner, as immutable tuples."""
        return PromptSnapshot(
            tuple((float(x), float(y), int(label)) for x, y, label in self.points),
            None if self.box is None else tuple(self.box),
            None if self.corner is None else tuple(self.corner),
        )

    def _push(self) -> None:
        self.history.append(self.snapshot())
        del self.history[:-MAX_UNDO_STEPS]

    def copy(self) -> PointState:
        """A copy to change, so that a failed event leaves the user's state as it was
        (the prompt lists are copied; history entries are immutable)."""
        return dataclasses.replace(
            self,
            points=[list(p) for p in self.points],
            box=None if self.box is None else list(self.box),
            corner=None if self.corner is None else list(self.corner),
            history=list(self.history),
        )

    def undo(self) -> None:
        """Go back to the prompts before the last change (nothing happens without one)."""
        if self.history:
            points, box, corner = self.history.pop()
            self.points = [list(p) for p in points]
            self.box = None if box is None else list(box)
            self.corner = None if corner is None else list(corner)

    def clear(self) -> None:
        """Remove the points, the box and a pending corner; undo brings them back."""
        if self.points or self.box is not None or self.corner is not None:
            self._push()
            self.points, self.box, self.corner = [], None, None

    @property
    def ready(self) -> bool:
        """Whether there is a prompt SAM-2 can use: a positive point or a box."""
        return any(p[2] == 1 for p in self.points) or self.box is not None

    def points_json(self) -> str:
        return json.dumps([[round(x, 1), round(y, 1), int(lab)] for x, y, lab in self.points])


@dataclass
class Output:
    """What one request produces for the UI and the API."""

    picture: np.ndarray  # (H', W, 3) uint8 RGB
    rows: list[list]  # table rows, TABLE_HEADERS
    segments: dict  # the segments JSON (see maskadapter.output.export)
    label_map_path: Path | None
    json_path: Path | None
    message: str


def _decode(text: str, what: str, example: str) -> object:
    """JSON ``text`` -> Python value; ``InputError`` for text over ``MAX_PROMPT_CHARS``
    or not JSON. (``NaN`` and ``Infinity``, which ``json`` reads, are refused later as
    numbers that are not finite.)"""
    if len(text) > MAX_PROMPT_CHARS:
        raise InputError(f"the {what} text is too long ({len(text):,} characters): at most {MAX_PROMPT_CHARS:,}")
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise InputError(f"{what} must be JSON like {example}; {err.msg} at character {err.pos}") from None
    except (ValueError, RecursionError):  # integers of over 4300 digits, very deep nesting
        raise InputError(
            f"{what} must be JSON like {example}; this text nests too deeply or has too long a number"
        ) from None


def parse_points(text: str | Sequence | None) -> list[list[float]]:
    """``'[[x, y, label], ...]'`` (JSON text, or the list itself) -> ``[[x, y, label], ...]``
    with float XY pixels of the original image and int labels (1 positive, 0 negative).

    None, blank text and JSON ``null`` give ``[]``. The form is checked here (see
    ``maskadapter.engine.transforms.point_list``: at most ``MAX_POINTS``, finite numbers, no
    booleans); the image bounds and the need for a positive point are checked by
    ``check_points`` when the points are used. Raises ``InputError``.
    """
    data = text
    if isinstance(text, str):
        data = None if not text.strip() else _decode(text, "points", "[[x, y, 1], [x, y, 0]]")
    return [] if data is None else point_list(data)


def parse_box(text: str | Sequence | None) -> list[float] | None:
    """``'[x0, y0, x1, y1]'`` (JSON text, or the list itself; two opposite corners in
    XY pixels, in any order) -> the XYXY box with x0 < x1, y0 < y1, or None for no box.

    None, blank text, JSON ``null`` and an empty list mean no box. Four finite numbers
    at least 1 pixel apart on both axes are required here (``box_corners``); the box
    must lie inside the image, checked by ``check_box`` when it is used (a box reaching
    outside is refused, not clipped). Raises ``InputError``.
    """
    data = text
    if isinstance(text, str):
        data = None if not text.strip() else _decode(text, "a box", "[x0, y0, x1, y1]")
    if data is None or (isinstance(data, list | tuple) and len(data) == 0):
        return None
    return box_corners(data)


class SegmentationService:
    """Models, device and lock for the app (through ``Segmenter``), built once."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._base: Segmenter | None = None
        self._by_size: OrderedDict[str, Segmenter] = OrderedDict()  # loaded SAM-2 sizes, least recently used first
        self._error: MaskAdapterError | None = None
        self._ready = threading.Event()
        self._load_lock = threading.Lock()
        self._size_locks: dict[str, threading.Lock] = {}
        self._started = False
        self._status = "loading models..."
        self.output_dir = Path(tempfile.gettempdir()) / "maskadapter-outputs"

    # ------------------------------------------------------------------ loading

    def start(self, background: bool = True) -> None:
        """Begin building the models (once)."""
        with self._load_lock:
            if self._started:
                return
            self._started = True
        if background:
            threading.Thread(target=self._load, name="model-loader", daemon=True).start()
        else:
            self._load()

    def _load(self) -> None:
        try:

            def note(message: str) -> None:
                self._status = message
                log.info(message)

            self._base = Segmenter.from_settings(self.settings, progress=note)
            size = "tiny-random" if self.settings.tiny_random else self.settings.sam_size
            self._by_size[size] = self._base
            self._status = "ready"
        except MaskAdapterError as err:
            self._error = err
            log.error("%s", err)
        except Exception:  # keep serving the page; every request reports this, without internal text
            ref = uuid.uuid4().hex[:8]
            self._error = MaskAdapterError(f"the models could not be loaded (error id {ref}; the server log has it)")
            log.exception("error %s: model loading failed", ref)
        finally:
            self._ready.set()

    def wait(self, report: Report = _quiet) -> Segmenter:
        """The base segmenter, waiting for the loader; raises its error if it failed."""
        self.start()
        while not self._ready.wait(timeout=0.5):
            report(0.02, f"models: {self._status}")
        if self._error is not None:
            raise self._error
        assert self._base is not None
        return self._base

    @property
    def ready(self) -> bool:
        """Loading finished and succeeded."""
        return self._ready.is_set() and self._error is None

    @property
    def loading(self) -> bool:
        """The loader has not finished yet (it may still fail)."""
        return not self._ready.is_set()

    @property
    def sam_sizes(self) -> list[str]:
        return ["tiny-random"] if self.settings.tiny_random else list(SAM2_SIZES)

    @property
    def default_sam_size(self) -> str:
        return self.sam_sizes[0] if self.settings.tiny_random else self.settings.sam_size

    def default_mask_settings(self) -> AutoMaskSettings:
        """The demo's settings; with random weights SAM-2's quality filters are opened
        (random weights predict low quality everywhere, so nothing would pass)."""
        return default_mask_settings(real_weights=not self.settings.tiny_random)

    def segmenter(self, size: str | None, report: Report = _quiet) -> Segmenter:
        """The segmenter whose SAM-2 has ``size`` (loaded on first use)."""
        base = self.wait(report)
        size = size or self.default_sam_size
        if size not in self.sam_sizes:
            raise InputError(f"SAM-2 size must be one of {', '.join(self.sam_sizes)}, got {size!r}")
        with self._load_lock:
            found = self._by_size.get(size)
            if found is not None:
                self._by_size.move_to_end(size)
                return found
            lock = self._size_locks.setdefault(size, threading.Lock())
        # one lock per size: loading (or downloading) one size never holds up requests
        # for sizes already loaded, and two requests for the same size load it once
        with lock:
            with self._load_lock:
                found = self._by_size.get(size)
            if found is None:
                report(0.05, f"loading SAM-2.1 {size}")
                path = resolve_sam2_file(self.settings, size, lambda msg: report(0.05, msg))
                sam = build_sam2_model(path, base.device, sam2_config_for(self.settings, size))
                found = base.with_sam2(sam)
                with self._load_lock:
                    self._by_size[size] = found
                    unloaded = self._unload_beyond_bound(base, found)
                for token in unloaded:  # what the unloaded models computed goes too
                    base.store.forget(lambda key, token=token: key_mentions(key, token))
            return found

    def _unload_beyond_bound(self, base: Segmenter, loaded: Segmenter) -> list[ModelToken]:
        """Drop the least recently used SAM-2 sizes past ``settings.sam_models``, never
        the base size (its segmenter holds the shared models) nor the one just
        ``loaded``; the tokens of the models dropped."""
        unloaded = []
        for size in list(self._by_size):
            if len(self._by_size) <= self.settings.sam_models:
                break
            if self._by_size[size] not in (base, loaded):
                unloaded.append(model_token(self._by_size.pop(size).models.sam2))
                log.info("unloaded SAM-2.1 %s (at most %d sizes stay loaded)", size, self.settings.sam_models)
        return unloaded

    def status_markdown(self) -> str:
        """A line for the top of the page: what runs, or why nothing does."""
        if not self._ready.is_set():
            return f"⏳ Loading models: {self._status} The first request waits for them."
        if self._error is not None:
            return "❌ **The models could not be loaded.** " + error_markdown(self._error)
        seg = self._base
        text = f"Models: {seg.models.description}; device `{seg.device}`, {seg.arithmetic}"
        if seg.amp_dtype is not None:
            text += " autocast"
        if not seg.real_weights:
            text = (
                "⚠️ **Random weights (`--tiny-random`): masks and labels are meaningless.** "
                "This mode only shows that the app works; run without `--tiny-random` "
                "to download the real models. " + text
            )
        return text

    # ------------------------------------------------------------------ helpers

    def open_point_image(self, image: object) -> PointState:
        """A fresh point state for an uploaded image, whose session (the photo) is kept
        in the store."""
        session = self.wait().session(image)
        return PointState(key=session.key, hw=session.hw)

    def prompt_state(self, image: object, points: Sequence[Sequence[float]], box: Sequence[float] | None) -> PointState:
        """A point state for an image with given prompts (the API's one-shot request);
        the prompts are validated when they are used."""
        state = self.open_point_image(image)
        state.points, state.box = [list(p) for p in points], None if box is None else list(box)
        if not state.ready:
            raise InputError("give at least one positive point [x, y, 1], or a box [x0, y0, x1, y1]")
        return state

    def point_picture(self, state: PointState) -> np.ndarray | None:
        """The state's photo (H, W, 3) uint8 with its prompts drawn; None without a photo."""
        if state.key is None:
            return None
        image = self._point_session(self.wait(), state).image
        return draw_points(image, self._shown(state), state.box)

    @staticmethod
    def _shown(state: PointState) -> list[list[float]]:
        """The points to draw: the state's points and a pending box corner."""
        return list(state.points) + ([[*state.corner, 1]] if state.corner else [])

    @staticmethod
    def _point_session(segmenter: Segmenter, state: PointState) -> ImageSession:
        """The state's image session, from the store."""
        session = segmenter.store.get(state.key)
        if session is None:  # the store keeps photos longest, but newer ones needed the room
            raise InputError("this photo is no longer on the server; upload it again")
        return session

    @staticmethod
    def vocabulary(text: str | None, predefined: Sequence[str] | None) -> Vocabulary:
        return build_vocabulary(text or "", list(predefined or []))

    def _files(self, result: SegmentationResult, segments: dict, name: str) -> tuple[Path | None, Path | None]:
        """Write the label map and ``segments`` (the result's JSON) for download; (None,
        None) when the output directory can't be written (read-only, disk full): the
        result is still shown, and the failure is logged."""
        try:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            _sweep(self.output_dir)
            tag = uuid.uuid4().hex[:8]
            labels = save_label_map(result, self.output_dir / f"{name}-labels-{tag}.png")
            json_path = write_segments_json(segments, self.output_dir / f"{name}-segments-{tag}.json")
            return labels, json_path
        except OSError as err:
            log.warning("could not write the downloads to %s: %s", self.output_dir, err)
            return None, None

    @staticmethod
    def rows(result: SegmentationResult) -> list[list]:
        total = result.label_map.size
        return [
            [
                seg.label,
                round(seg.score, 3),
                round(100.0 * seg.area / total, 2),
                ", ".join(f"{label} ({score:.2f})" for label, score in seg.top5[1:4]),
            ]
            for seg in result.segments
        ]

    # ------------------------------------------------------------------ tasks

    def automatic(
        self,
        image: object,
        vocabulary_text: str | None,
        predefined: Sequence[str] | None = (),
        session_key: str | None = None,
        sam_size: str | None = None,
        mask_settings: AutoMaskSettings | None = None,
        mode: str = "semantic",
        score_threshold: float = 0.0,
        granularity: float = 0.8,
        alpha: float = 0.5,
        report: Report = _quiet,
    ) -> tuple[Output, str]:
        """Segment everything; returns the output and the image's session key (masks and
        probabilities stay in the store: a new vocabulary or mode on the same image does
        not run SAM-2 again)."""
        vocabulary = self.vocabulary(vocabulary_text, predefined)
        segmenter = self.segmenter(sam_size, report)
        session = segmenter.session(image)  # the stored session of these pixels, if any
        result = segmenter.segment_automatic(
            session,
            vocabulary,
            mask_settings or self.default_mask_settings(),
            mode,
            score_threshold,
            granularity,
            progress=report,
        )
        report(0.95, "drawing")
        out = self._output(result, overlay(session.image, result, alpha=alpha), "automatic")
        count = len(result.segments)
        message = f"{count} segment{'' if count == 1 else 's'}."
        if not count:
            message = (
                "No segment: SAM-2 found no mask that passes its thresholds, or every mask scored "
                "below the score threshold. Lower them under Advanced."
            )
        out.message = self._message(message, segmenter.vocabulary_notes(vocabulary), out.json_path is not None)
        return out, session.key

    def compare(
        self,
        image: object,
        vocabulary_text: str | None,
        predefined: Sequence[str] | None = (),
        sam_size: str | None = None,
        mask_settings: AutoMaskSettings | None = None,
        mode: str = "semantic",
        score_threshold: float = 0.0,
        granularity: float = 0.8,
        alpha: float = 0.5,
        report: Report = _quiet,
    ) -> tuple[Output, Output, str]:
        """The same SAM-2 masks named by Mask-Adapter and by plain mask pooling: an output
        for each, and a message saying how many masks changed label."""
        vocabulary = self.vocabulary(vocabulary_text, predefined)
        segmenter = self.segmenter(sam_size, report)
        session = segmenter.session(image)
        found = segmenter.compare(
            session,
            vocabulary,
            mask_settings or self.default_mask_settings(),
            mode,
            score_threshold,
            granularity,
            progress=report,
        )
        report(0.95, "drawing")
        outputs = [
            self._output(result, overlay(session.image, result, alpha=alpha), f"compare-{name}")
            for name, result in (("adapter", found.adapter), ("pooling", found.pooling))
        ]
        message = (
            f"{found.changed} of {found.masks} SAM-2 mask{'' if found.masks == 1 else 's'} changed label "
            "between Mask-Adapter and plain mask pooling."
        )
        downloads = all(out.json_path is not None for out in outputs)
        return outputs[0], outputs[1], self._message(message, segmenter.vocabulary_notes(vocabulary), downloads)

    def points(
        self,
        state: PointState,
        vocabulary_text: str | None,
        predefined: Sequence[str] | None = (),
        sam_size: str | None = None,
        alpha: float = 0.5,
        report: Report = _quiet,
    ) -> Output:
        """Label the object at the state's points (and box); draws the prompts."""
        if state.key is None:
            raise InputError("upload an image first, then click on the object")
        shown = self._shown(state)
        segmenter = self.segmenter(sam_size, report)
        session = self._point_session(segmenter, state)
        image = session.image
        if not state.ready:
            picture = draw_points(image, shown, state.box)
            hint = (
                "Add a positive point (or a box) on the object."
                if state.points or state.corner
                else ("Click on the object to add a point.")
            )
            return Output(picture, [], {}, None, None, hint)
        vocabulary = self.vocabulary(vocabulary_text, predefined)
        result = segmenter.segment_points(session, state.points, vocabulary, box=state.box, progress=report)
        picture = overlay(image, result, alpha=alpha, legend=False, points=shown, box=state.box)
        out = self._output(result, picture, "points")
        if result.segments:
            seg = result.segments[0]
            alternatives = ", ".join(f"{plain(label)} {score:.2f}" for label, score in seg.top5[1:4])
            message = f"**{plain(seg.label)}** ({seg.score:.2f}); alternatives: {alternatives}"
        else:
            message = "SAM-2 returned an empty mask for these points; try another click."
        out.message = self._message(message, segmenter.vocabulary_notes(vocabulary), out.json_path is not None)
        return out

    def _output(self, result: SegmentationResult, picture: np.ndarray, name: str) -> Output:
        """A result's output for the UI and the API: ``picture``, the table rows, the
        segments JSON and the downloads written under ``name`` (message left empty)."""
        segments = segments_to_dict(result)
        label_path, json_path = self._files(result, segments, name)
        return Output(picture, self.rows(result), segments, label_path, json_path, "")

    @staticmethod
    def _message(message: str, notes: Sequence[str], downloads: bool) -> str:
        """The result's message (Markdown) with notices about the vocabulary and a word
        on missing downloads."""
        extra = [plain(note) + "." for note in notes]
        if not downloads:
            extra.append("Downloads are unavailable: the server could not write its output files.")
        return " ".join([message, *extra])
