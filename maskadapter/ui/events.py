"""The Gradio side of the app's events: uploaded photos, failures as short messages,
progress, and GPU time on a ZeroGPU Space.

(The photo component itself, ``Photo``, is defined in ``app.py``: Gradio writes a
``.pyi`` stub beside the module of every component class it meets.)
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
from gradio.queueing import ProcessTime
from PIL import Image

from maskadapter.errors import Cancelled, InputError, MaskAdapterError
from maskadapter.progress import ProgressCallback
from maskadapter.ui.present import plain

try:  # ZeroGPU Spaces: GPU work runs inside spaces.GPU-decorated functions
    import spaces
except ImportError:
    spaces = None

log = logging.getLogger("app")


def gpu_seconds(image_hw: tuple[int, int] | None, points_per_side: int | None = None) -> int:
    """Seconds of GPU to ask a ZeroGPU Space for one request (it queues shorter asks
    first): encoding and classification grow with the image's megapixels, automatic
    masks with the number of grid points (1024 at the default 32 x 32, about a second on
    an A100-class GPU); doubled for slack, between 15 and 120."""
    megapixels = (image_hw[0] * image_hw[1] / 1e6) if image_hw else 1.0
    points = (points_per_side or 0) ** 2
    return int(min(120, max(15, 2 * (5 + 2 * megapixels + 3 * points / 1024))))


def gpu(fn):
    """On a ZeroGPU Space, run ``fn`` on a GPU held for a duration chosen per call from
    its image and SAM-2 grid (``gpu_seconds``); elsewhere ``fn`` itself."""
    if spaces is None:
        return fn
    signature = inspect.signature(fn)

    def duration(*args, **kwargs) -> int:
        given = signature.bind_partial(*args, **kwargs).arguments
        image = given.get("image")
        hw = image.shape[:2] if isinstance(getattr(image, "shape", None), tuple) else None
        return gpu_seconds(hw, given.get("points_per_side"))

    return spaces.GPU(duration=duration)(fn)


def pixels(value: Any) -> Any:
    """A photo component's value (``app.Photo``: an (H, W, 3) uint8 array, None, or the
    ``InputError`` of a file that failed to decode) as the array or None; raises the
    decoding error."""
    if isinstance(value, InputError):
        raise value
    return value


def user_message(err: Exception, where: str) -> str:
    """What a user is told about ``err``: the package's own short message, or, for an
    unexpected error, a generic line with an id under which the traceback is logged."""
    if isinstance(err, gr.Error):
        return str(err.message)
    if isinstance(err, MaskAdapterError):
        return err.summary
    ref = uuid.uuid4().hex[:8]
    log.error("error %s in %s", ref, where, exc_info=err)
    return f"Something went wrong on the server (error id {ref}). Please try again; if it keeps failing, report the id."


def _answering_failures(fn: Callable, answer: Callable[[Exception, tuple], Any]) -> Callable:
    """``fn`` with an exception it raises answered by ``answer(err, args)``: its value is
    returned instead (yielded last, for a generator function, which stays one: what it
    yielded before the failure has been sent); an exception ``answer`` raises goes on."""
    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def steps(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except Exception as err:
                yield answer(err, args)

        return steps

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as err:
            return answer(err, args)

    return wrapper


def friendly(fn):
    """For API endpoints: any failure becomes a short ``gr.Error``, never a traceback
    or internal text. A generator function (an endpoint that yields results as they
    improve) stays one; its results before the failure have been sent."""

    def short(err: Exception, args: tuple) -> Any:
        raise gr.Error(user_message(err, fn.__name__), print_exception=False) from None

    return _answering_failures(fn, short)


def gentle(
    outputs: int,
    message: int,
    restore: Callable[..., dict[int, Any]] | None = None,
    shown: Callable[[Exception], str | None] | None = None,
):
    """For UI events: a failure goes into the tab's message box (output ``message``; no
    toast: one place for messages); every other output (photo, points, previous result)
    and the user's state stay as they were, except what ``restore(*args)`` gives back.
    ``shown(err)``: a shorter text for an error the page already shows in full (the
    banner's), or None. A generator function stays one: what it yielded before the
    failure (a first picture) stays shown."""

    def failed(err: Exception, name: str, args: tuple) -> tuple:
        text = (shown(err) if shown is not None else None) or user_message(err, name)
        result: list[Any] = [gr.skip()] * outputs
        result[message] = "**Error:** " + plain(text)
        if restore is not None:
            try:
                for index, value in restore(*args).items():
                    result[index] = value
            except Exception:  # keep the photo as the browser shows it
                log.warning("could not restore the previous view", exc_info=True)
        return tuple(result)

    def decorate(fn):
        return _answering_failures(fn, lambda err, args: failed(err, fn.__name__, args))

    return decorate


class Runs:
    """The UI runs in progress, one per (browser session, tab), so that the tab's Stop
    button can end its run: ``running`` hands the run a ``threading.Event`` that
    ``stop`` sets, and the run's progress callback (``reporter``) raises ``Cancelled``
    at the engine's next progress report; a newer run of the same tab stops the older
    one the same way. Gradio's own cancel only drops the waiting request; the thread
    doing the work would otherwise run to its end."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: dict[tuple[str, str], threading.Event] = {}
        self._turns: dict[tuple[str, str], list] = {}  # key -> [lock, events holding or waiting]

    @contextlib.contextmanager
    def running(self, session: str | None, tab: str) -> Iterator[threading.Event]:
        stop = threading.Event()
        key = (session or "", tab)
        with self._lock:
            older = self._running.get(key)
            if older is not None:  # a newer run of the tab replaces an older one, which stops
                older.set()
            self._running[key] = stop
        try:
            yield stop
        finally:
            with self._lock:
                if self._running.get(key) is stop:
                    del self._running[key]

    @contextlib.contextmanager
    def turn(self, session: str | None, tab: str) -> Iterator[None]:
        """Run the block while no other event of this browser session and tab is in its
        own block (events that change one user's state take turns)."""
        key = (session or "", tab)
        with self._lock:
            entry = self._turns.setdefault(key, [threading.Lock(), 0])
            entry[1] += 1
        try:
            with entry[0]:
                yield
        finally:
            with self._lock:
                entry[1] -= 1
                if not entry[1]:
                    del self._turns[key]

    def stop(self, session: str | None, tab: str) -> bool:
        """Ask the tab's run in this browser session to stop; whether one was running."""
        with self._lock:
            stop = self._running.get((session or "", tab))
        if stop is not None:
            stop.set()
        return stop is not None


def stage(message: str) -> str:
    """The step a progress message names, without its count ("SAM-2 masks: point batch 3
    of 16" -> "SAM-2 masks"): the bar beside it shows the fraction of the whole task, so a
    step's own count ("391 of 391" at 5%) would contradict it."""
    return message.split(": ", 1)[0]


def cancelled_check() -> Callable[[], bool]:
    """For the event this thread serves: whether its client cancelled it since (Gradio's
    ``/cancel``, which gradio_client's ``Job.cancel`` and a page's cancelling events
    send). Gradio then ends the event's task and frees its worker slot, but the thread
    computing it would run to its end: this lets the run stop at its next progress
    report. Reads Gradio's queue (no public API, Gradio 6.31): an event is cancelled
    once it leaves the queue's active jobs; outside an event (or one the queue does not
    list) it never says so."""
    from gradio.context import LocalContext

    blocks, event_id = LocalContext.blocks.get(None), LocalContext.event_id.get(None)
    queue = getattr(blocks, "_queue", None)

    def active() -> bool:
        jobs = list(getattr(queue, "active_jobs", None) or ())
        return any(getattr(event, "_id", None) == event_id for job in jobs if job for event in job)

    if event_id is None or not active():
        return lambda: False
    return lambda: not active()


def reporter(progress: gr.Progress, stop: threading.Event | None = None) -> ProgressCallback:
    """The package's progress callback shown as Gradio's progress bar; raises
    ``Cancelled`` once ``stop`` is set (see ``Runs``) or the client cancelled the event
    (``cancelled_check``: an API client's cancel stops the server's work too)."""
    cancelled = cancelled_check()

    def report(fraction: float, message: str) -> None:
        if (stop is not None and stop.is_set()) or cancelled():
            raise Cancelled("stopped")
        progress(fraction, desc=stage(message))

    return report


def served(picture: np.ndarray | None, directory: Path, name: str = "picture") -> str | np.ndarray | None:
    """An (H, W, 3) uint8 RGB picture as a PNG file of its own in ``directory``, for an
    image output. Gradio caches an array output at a path made from its content and
    rewrites that file on every request, so two users shown the same picture at once
    (the same photo and vocabulary) could be sent a truncated file; a file of our own is
    copied into the cache under a temporary name and renamed, which is safe. The array
    itself when the file cannot be written (the picture is still shown)."""
    if picture is None:
        return None
    path = directory / f"{name}-{uuid.uuid4().hex[:12]}.png"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        Image.fromarray(picture).save(path, format="PNG", compress_level=1)
    except OSError as err:
        log.warning("could not write a picture to %s: %s", directory, err)
        return picture
    return str(path)


IDLE_POLL_S = 0.02  # how often an idle queue looks for new requests


class _NoRunTimes(dict):
    """Stands in for the Gradio queue's record of each event's average run time, from
    which it shows an ETA ("1.0/105.2s"): nothing is recorded, so no ETA is shown. A
    run's time depends on the photo, the grid, the SAM-2 size and what is cached (a
    click on an encoded photo takes a fraction of the first), so earlier runs' average
    said nothing about the next; the progress bar says how far a run is."""

    def __missing__(self, fn: object) -> ProcessTime:
        return ProcessTime()  # takes the run's time and is dropped


def queue(demo: gr.Blocks, concurrency: int, max_size: int | None = None) -> gr.Blocks:
    """``demo.queue(...)``, with the queue's idle polling slowed from Gradio's 1 ms (on
    Linux) to ``IDLE_POLL_S`` (a thousand wake-ups a second kept an idle app at about
    10% of a CPU core; a request now waits at most 20 ms more to start), and no ETA
    from earlier runs' times (``_NoRunTimes``). Neither has a public setting (Gradio 6.31)."""
    demo.queue(default_concurrency_limit=concurrency, max_size=max_size)
    demo._queue.sleep_when_free = max(demo._queue.sleep_when_free, IDLE_POLL_S)
    demo._queue.process_time_per_fn = _NoRunTimes()
    return demo
