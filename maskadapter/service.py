"""The app's service object: one per process, shared by every user.

It builds the models once (in a background thread, so the page comes up at once),
hands out a ``Segmenter`` per SAM-2 size, turns the app's inputs (text, slider values,
JSON strings) into engine calls and results into data: pictures, segments JSON, files
to download and the notes to pass on (``Output``, ``ComparedOutput``, ``LoadStatus``);
errors are raised as the package's typed errors. Image sessions live in the
segmenter's bounded ``SessionStore``; the point tab's per-user state is a
``PointState``, passed in and returned. No words for people and no Gradio here:
``maskadapter.ui`` turns the data into Markdown, table rows and messages, and
``app.py`` wires it all to Gradio.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import tempfile
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from maskadapter.engine.mask_settings import AutoMaskSettings, default_mask_settings
from maskadapter.engine.results import Comparison, MaskChange, SegmentationResult
from maskadapter.engine.runtime import ModelToken, model_token
from maskadapter.engine.segmenter import Segmenter
from maskadapter.engine.session import ImageSession, key_mentions
from maskadapter.engine.vocabulary import Vocabulary, build_vocabulary
from maskadapter.engine.weights import build_sam2_model, resolve_sam2_file, sam2_config_for
from maskadapter.errors import InputError, MaskAdapterError
from maskadapter.output.export import save_label_map, segments_to_dict, write_segments_json
from maskadapter.output.render import draw_points, overlay
from maskadapter.point_prompts import MAX_PROMPT_CHARS, MAX_UNDO_STEPS, PointState, parse_box, parse_points
from maskadapter.progress import ProgressCallback, no_progress
from maskadapter.settings import SAM2_SIZES, Settings

# the point prompts' names, answered here too (``maskadapter.point_prompts`` is their place)
__all__ = [
    "MAX_PROMPT_CHARS",
    "MAX_UNDO_STEPS",
    "ComparedOutput",
    "LoadStatus",
    "Output",
    "PointState",
    "SegmentationService",
    "parse_box",
    "parse_points",
]

log = logging.getLogger(__name__)

OUTPUT_TTL_S = 3600


def _sweep(directory: Path) -> None:
    """Remove the files in ``directory`` older than ``OUTPUT_TTL_S``."""
    now = time.time()
    for old in directory.iterdir():
        with contextlib.suppress(OSError):
            if old.is_file() and now - old.stat().st_mtime > OUTPUT_TTL_S:
                old.unlink()


@dataclass
class Output:
    """One request's answer as data; ``maskadapter.ui`` words it (message, table rows).

    ``result`` is None only for the point tab without a usable prompt yet: then
    ``picture`` is the photo with the clicks drawn, ``segments`` is ``{}`` and there are
    no files.
    """

    result: SegmentationResult | None
    picture: np.ndarray  # (H', W, 3) uint8 RGB, H' >= H: the overlay (automatic: a legend below) or the photo
    segments: dict  # the segments JSON (see maskadapter.output.export); {} without a result
    label_map_path: Path | None  # the label map PNG to download (None: not written)
    json_path: Path | None  # the segments JSON file to download (None: not written)
    notes: tuple[str, ...] = ()  # what to tell about the vocabulary (Segmenter.vocabulary_notes)
    points: tuple[int, int] | None = None  # an automatic result before the last step: (points so far, all points)

    @property
    def downloads(self) -> bool:
        """Whether the files to download were written (they are not on a read-only disk)."""
        return self.json_path is not None


@dataclass
class ComparedOutput:
    """The comparison's answer as data: the same SAM-2 masks named by Mask-Adapter
    (``adapter``) and by plain mask pooling (``pooling``); ``changed`` of the ``masks``
    masks have a different best class under the two."""

    adapter: Output
    pooling: Output
    changed: int
    masks: int
    changes: tuple[MaskChange, ...] = ()  # the masks named differently (Comparison.changes)


class LoadStatus(NamedTuple):
    """Where model loading stands (for the page's banner): ``loading`` until the loader
    finishes; then ``error`` if it failed, else ``segmenter``, the base one."""

    loading: bool
    step: str  # what the loader is doing ("loading models...", then "ready")
    error: MaskAdapterError | None
    segmenter: Segmenter | None


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

            def note(fraction: float, message: str) -> None:
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

    def wait(self, report: ProgressCallback = no_progress) -> Segmenter:
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
        """The automatic-mask settings the page starts with, known before the models are
        loaded: ``default_mask_settings`` for the weights ``--tiny-random`` chooses.
        Requests without settings leave the choice to the segmenter."""
        return default_mask_settings(real_weights=not self.settings.tiny_random)

    def segmenter(self, size: str | None, report: ProgressCallback = no_progress) -> Segmenter:
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
                path = resolve_sam2_file(self.settings, size, lambda fraction, message: report(0.05, message))
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

    def load_status(self) -> LoadStatus:
        """Where model loading stands (``maskadapter.ui.present.status_markdown`` words it)."""
        if not self._ready.is_set():
            return LoadStatus(True, self._status, None, None)
        return LoadStatus(False, self._status, self._error, self._base)

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
        return draw_points(image, state.points, state.box, state.corner)

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

    # ------------------------------------------------------------------ tasks

    def automatic(
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
        report: ProgressCallback = no_progress,
    ) -> tuple[Output, str]:
        """Segment everything (``Segmenter.segment_automatic``; ``mask_settings`` None: the
        segmenter's defaults); returns the output and the key of the image's stored
        session (masks and probabilities stay in the store: the same pixels with a new
        vocabulary or mode do not run SAM-2 again)."""
        session, result, notes = self._run_automatic(
            Segmenter.segment_automatic,
            image,
            vocabulary_text,
            predefined,
            sam_size,
            (mask_settings, mode, score_threshold, granularity),
            report,
        )
        return self._output(result, overlay(session.image, result, alpha=alpha), "automatic", notes), session.key

    def automatic_steps(
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
        report: ProgressCallback = no_progress,
    ) -> Iterator[tuple[Output, str]]:
        """``automatic`` a step of SAM-2's point grid at a time
        (``Segmenter.segment_automatic_steps``): an output after each step, its
        ``points`` set before the last; the last output is ``automatic``'s."""
        vocabulary, segmenter, session = self._prepare(image, vocabulary_text, predefined, sam_size, report)
        notes = segmenter.vocabulary_notes(vocabulary)
        options = (mask_settings, mode, score_threshold, granularity)
        for step in segmenter.segment_automatic_steps(session, vocabulary, *options, progress=report):
            if step.final:
                report(0.95, "drawing")
            out = self._output(step.result, overlay(session.image, step.result, alpha=alpha), "automatic", notes)
            yield dataclasses.replace(out, points=None if step.final else (step.points, step.total)), session.key

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
        report: ProgressCallback = no_progress,
    ) -> ComparedOutput:
        """The same SAM-2 masks named by Mask-Adapter and by plain mask pooling
        (``Segmenter.compare``; arguments as in ``automatic``): an output for each, and
        how many masks changed label."""
        session, found, notes = self._run_automatic(
            Segmenter.compare,
            image,
            vocabulary_text,
            predefined,
            sam_size,
            (mask_settings, mode, score_threshold, granularity),
            report,
        )
        adapter, pooling = (
            self._output(result, overlay(session.image, result, alpha=alpha), f"compare-{name}", notes)
            for name, result in (("adapter", found.adapter), ("pooling", found.pooling))
        )
        return ComparedOutput(adapter, pooling, found.changed, found.masks, found.changes)

    def _prepare(
        self,
        image: object,
        vocabulary_text: str | None,
        predefined: Sequence[str] | None,
        sam_size: str | None,
        report: ProgressCallback,
    ) -> tuple[Vocabulary, Segmenter, ImageSession]:
        """What every automatic task starts with: the vocabulary (checked before waiting
        for any model), the segmenter of ``sam_size`` and the stored session of the
        image's pixels (opened if new)."""
        vocabulary = self.vocabulary(vocabulary_text, predefined)
        segmenter = self.segmenter(sam_size, report)
        return vocabulary, segmenter, segmenter.session(image)

    def _run_automatic(
        self,
        run: Callable[..., SegmentationResult | Comparison],
        image: object,
        vocabulary_text: str | None,
        predefined: Sequence[str] | None,
        sam_size: str | None,
        options: tuple[AutoMaskSettings | None, str, float, float],
        report: ProgressCallback,
    ) -> tuple[ImageSession, SegmentationResult | Comparison, tuple[str, ...]]:
        """What ``automatic`` and ``compare`` share: ``_prepare``, then
        ``run(segmenter, session, vocabulary, *options)`` with ``options``
        (mask settings, mode, score threshold, granularity); the session, what ``run``
        found and the vocabulary's notes."""
        vocabulary, segmenter, session = self._prepare(image, vocabulary_text, predefined, sam_size, report)
        found = run(segmenter, session, vocabulary, *options, progress=report)
        report(0.95, "drawing")
        return session, found, segmenter.vocabulary_notes(vocabulary)

    def points(
        self,
        state: PointState,
        vocabulary_text: str | None,
        predefined: Sequence[str] | None = (),
        sam_size: str | None = None,
        alpha: float = 0.5,
        report: ProgressCallback = no_progress,
    ) -> Output:
        """Label the object at the state's points (and box); draws the prompts. Without a
        prompt SAM-2 can use yet (``state.ready``), the photo with the clicks drawn and
        no result."""
        if state.key is None:
            raise InputError("upload an image first, then click on the object")
        segmenter = self.segmenter(sam_size, report)
        session = self._point_session(segmenter, state)
        if not state.ready:
            return Output(None, draw_points(session.image, state.points, state.box, state.corner), {}, None, None)
        vocabulary = self.vocabulary(vocabulary_text, predefined)
        result = segmenter.segment_points(session, state.points, vocabulary, box=state.box, progress=report)
        prompts = dict(points=state.points, box=state.box, corner=state.corner)
        picture = overlay(session.image, result, alpha=alpha, legend=False, **prompts)
        return self._output(result, picture, "points", segmenter.vocabulary_notes(vocabulary))

    def _output(self, result: SegmentationResult, picture: np.ndarray, name: str, notes: tuple[str, ...]) -> Output:
        """A result's output: ``picture``, the segments JSON, the downloads written under
        ``name``, and the vocabulary's ``notes``."""
        segments = segments_to_dict(result)
        label_path, json_path = self._files(result, segments, name)
        return Output(result, picture, segments, label_path, json_path, notes)
