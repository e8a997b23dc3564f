"""The one progress callback type of the package.

``progress(fraction, message)``: ``fraction`` in [0, 1] of the whole task (not of the
current step), ``message`` a short phrase of what is being done now ("encoding the
image"). The engine calls it; the CLI's bar, the app's progress and the logs listen.
"""

from __future__ import annotations

from collections.abc import Callable

ProgressCallback = Callable[[float, str], None]


def no_progress(fraction: float, message: str) -> None:
    """The callback that listens to nothing (the default everywhere)."""


def within(progress: ProgressCallback, start: float, end: float) -> ProgressCallback:
    """``progress`` for a part of the task: the part's fractions mapped to [start, end]."""
    return lambda fraction, message: progress(start + (end - start) * fraction, message)
