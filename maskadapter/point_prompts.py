"""Point prompts as the app takes them: one user's clicks, and prompts sent as JSON text.

``PointState`` is the point tab's per-user state (a key into the segmenter's session
store, the image's size, the points, a box, undo history); ``parse_points`` and
``parse_box`` read the API's JSON text. Conventions: XY pixels of the original image
(0 <= x <= W, 0 <= y <= H), points ``[x, y, label]`` with label 1 positive, 0
negative, boxes XYXY with x0 < x1, y0 < y1. Checks are the engine's
(``maskadapter.engine.transforms``); failures raise ``InputError``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from maskadapter.engine.transforms import box_corners, box_in_image, check_point, check_points, point_list
from maskadapter.errors import InputError

MAX_PROMPT_CHARS = 100_000  # points or box JSON text longer than this is refused unread

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

    def assign(self, other: PointState) -> None:
        """Take ``other``'s photo key, size and prompts (this object is the one the
        user's session keeps; see the point tab's handlers)."""
        for name in (f.name for f in dataclasses.fields(self)):
            setattr(self, name, getattr(other, name))

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
