"""Image sessions and the one bounded store that owns them.

An ``ImageSession`` keeps what one image costs: its SAM-2 embedding, its CLIP
features, the masks made with given mask settings, and the class probabilities of
those masks for a given vocabulary (its four *tables*). Each entry is computed once:
``ImageSession.once`` lets the first request compute it while every other request for
the same entry waits for that result, and no table is read while another thread writes
it.

The ``SessionStore`` owns every session of a ``Segmenter`` (callers, the app's per-user
state included, hold only a key). It counts the bytes of every tensor and array a
session holds, on the CPU and on the GPU alike, and keeps the total within its budget
in two steps: first it drops what the least recently used sessions cost (their tables;
the photo stays, so a user's photo outlives its embeddings), then, if the photos
alone are still over the budget, whole sessions, least recently used first. A
session held by a request (``SessionStore.hold``, for the request's whole length)
is neither trimmed nor evicted, so nothing a request is using or filling is lost or
left uncounted; the store may then stay over its budget until the holds end (the
costs of held sessions never push other photos out: only trimming makes room for
them). What was dropped is recomputed when needed again.
"""

from __future__ import annotations

import contextlib
import threading
from collections import Counter, OrderedDict
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np
import torch

from maskadapter.engine.images import check_image, image_key

T = TypeVar("T")
TABLES = ("sam_cache", "clip_cache", "masks", "probs")


@dataclass
class Slot:
    """An entry of a session table (``ImageSession.claim``): ``found`` if it was there
    (``value`` is it), else the claimer computes ``value``."""

    value: object
    found: bool


@dataclass(eq=False)
class ImageSession:
    """One image and what it costs to encode and segment (filled lazily by the segmenter).

    image: (H, W, 3) uint8 RGB, the original. ``sam_cache`` holds SAM-2 embeddings,
    ``clip_cache`` CLIP features, ``masks`` a ``MaskSet`` per mask-settings key and
    ``probs`` an (N, C) probability tensor per (mask key, vocabulary) key. Write them
    only through ``once``; read them through ``once`` or ``peek``.
    """

    image: np.ndarray
    key: str = ""
    sam_cache: dict = field(default_factory=dict)
    clip_cache: dict = field(default_factory=dict)
    masks: dict = field(default_factory=dict)
    probs: dict = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _pending: dict = field(default_factory=dict, repr=False)  # (table, key) -> Event of the computing thread

    @classmethod
    def from_image(cls, image: object) -> ImageSession:
        """Validate an (H, W, 3) uint8 RGB image (or PIL image) and open a session on it."""
        image = check_image(image)
        return cls(image=image, key=image_key(image))

    @property
    def hw(self) -> tuple[int, int]:
        return self.image.shape[0], self.image.shape[1]

    def once(self, table: str, key: Hashable, compute: Callable[[], T]) -> tuple[T, bool]:
        """The entry ``key`` of ``table`` (one of ``TABLES``), made by ``compute()`` if it
        is not there: (value, whether this call computed it).

        While one thread computes an entry, the others asking for it wait and then take
        its value; if that computation fails (or is cancelled), the next waiter computes
        it. Never call it holding a lock that ``compute`` of another thread needs.
        """
        with self.claim(table, key) as slot:
            if not slot.found:
                slot.value = compute()
        return slot.value, not slot.found

    @contextlib.contextmanager
    def claim(self, table: str, key: Hashable) -> Iterator[Slot]:
        """``once`` for a computation that cannot be one call (one that hands out
        intermediate results): the ``Slot`` has the entry (``found``), or this caller
        is the one to compute it and sets ``slot.value`` before the block ends; the
        value is stored when the block ends without an exception. Others asking
        meanwhile wait, as in ``once``; a block left by an exception (a generator
        closed early included) stores nothing and lets the next waiter compute."""
        entries = getattr(self, table)
        while True:
            with self._lock:
                found = key in entries
                value = entries.get(key)
                busy = None if found else self._pending.get((table, key))
                if not found and busy is None:
                    done = self._pending[(table, key)] = threading.Event()
            if busy is None:
                break
            busy.wait()
        if found:
            yield Slot(value, True)
            return
        slot = Slot(None, False)
        try:
            yield slot
            with self._lock:
                entries[key] = slot.value
        finally:
            with self._lock:
                del self._pending[(table, key)]
            done.set()

    def peek(self, table: str, key: Hashable) -> object | None:
        """The entry ``key`` of ``table`` if it is there, else None (nothing computed)."""
        with self._lock:
            return getattr(self, table).get(key)

    def nbytes(self) -> int:
        """Bytes held by this session's arrays and tensors (CPU and GPU), photo included."""
        with self._lock:
            return self.image.nbytes + _nbytes([getattr(self, table) for table in TABLES])

    def drop_costs(self) -> None:
        """Forget every computed entry (the photo stays); entries being computed are
        stored when they finish."""
        with self._lock:
            for table in TABLES:
                getattr(self, table).clear()

    def forget(self, uses: Callable[[Hashable], bool]) -> None:
        """Forget the entries whose key ``uses(key)`` says depend on something gone (an
        unloaded model)."""
        with self._lock:
            for table in TABLES:
                entries = getattr(self, table)
                for key in [k for k in entries if uses(k)]:
                    del entries[key]


def key_mentions(key: Hashable, part: Hashable) -> bool:
    """Whether a table key is ``part`` or holds it in its tuples (at any depth)."""
    if isinstance(key, tuple):
        return any(key_mentions(item, part) for item in key)
    return key == part


def _nbytes(obj: object) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, np.ndarray):
        return obj.nbytes
    if isinstance(obj, dict):
        return sum(_nbytes(v) for v in obj.values())
    if isinstance(obj, list | tuple):
        return sum(_nbytes(v) for v in obj)
    if hasattr(obj, "__dataclass_fields__"):
        return sum(_nbytes(getattr(obj, name)) for name in obj.__dataclass_fields__)
    return 0


class SessionStore:
    """Image sessions by key within ``budget_bytes``: the least recently used sessions
    lose their computed entries first, then, if still needed, their place (see the
    module docstring). The session being counted and the held ones are never trimmed
    or evicted, even over budget.

    ``evictions`` counts sessions removed, ``trimmed`` sessions whose entries were dropped.
    """

    def __init__(self, budget_bytes: int) -> None:
        self.budget_bytes = int(budget_bytes)
        self._sessions: OrderedDict[str, ImageSession] = OrderedDict()
        self._sizes: dict[str, int] = {}
        self._total = 0
        self._holds: Counter[str] = Counter()  # session key -> requests holding it
        self._lock = threading.Lock()
        self.evictions = 0
        self.trimmed = 0

    def open(self, image: object) -> ImageSession:
        """The session of an (H, W, 3) uint8 RGB image: the stored one for the same
        pixels, else a new one (stored)."""
        image = check_image(image)
        key = image_key(image)
        with self._lock:
            session = self._sessions.get(key)
            if session is not None:
                self._sessions.move_to_end(key)
                return session
        return self.adopt(ImageSession(image=image, key=key))

    def get(self, key: str | None) -> ImageSession | None:
        """The stored session with ``key``, or None (never stored, or evicted)."""
        with self._lock:
            session = self._sessions.get(key) if key else None
            if session is not None:
                self._sessions.move_to_end(key)
            return session

    def adopt(self, session: ImageSession) -> ImageSession:
        """Store ``session`` (a caller's, perhaps evicted earlier) and return the stored
        session for its image (an equal one already stored wins)."""
        with self._lock:
            stored = self._sessions.setdefault(session.key, session)
            self._fit(stored, touch=True)
        return stored

    @contextlib.contextmanager
    def hold(self, session: ImageSession) -> Iterator[ImageSession]:
        """Store ``session`` (as ``adopt``) and keep the stored one from being trimmed
        or evicted until the block ends (an exception, a closed generator included)."""
        with self._lock:
            stored = self._sessions.setdefault(session.key, session)
            self._holds[stored.key] += 1
            self._fit(stored, touch=True)
        try:
            yield stored
        finally:
            with self._lock:
                self._holds[stored.key] -= 1
                if not self._holds[stored.key]:
                    del self._holds[stored.key]
                if self._sessions.get(stored.key) is stored:  # what the hold kept may go now,
                    self._shrink(stored)  # but for this session, the most recently used

    def held(self, key: str) -> bool:
        """Whether a request holds the session with ``key``."""
        with self._lock:
            return key in self._holds

    def update(self, session: ImageSession, touch: bool = True) -> None:
        """Recount ``session``'s bytes (``touch``: and make it the most recently used)
        and make the store fit its budget again."""
        with self._lock:
            if self._sessions.get(session.key) is session:  # else evicted meanwhile: not counted
                self._fit(session, touch)

    def _fit(self, session: ImageSession, touch: bool) -> None:
        """With the store's lock held (then each session's: always in that order)."""
        self._resize(session.key, session.nbytes())
        if touch:
            self._sessions.move_to_end(session.key)
        self._shrink(session)

    def _shrink(self, current: ImageSession | None) -> None:
        """Trim, then evict, sessions other than ``current`` and the held ones until the
        store fits (see the module docstring). With the store's lock held."""
        # least recently used first; held sessions are left alone
        others = [s for s in self._sessions.values() if s is not current and s.key not in self._holds]
        for old in others:
            if self._total <= self.budget_bytes:
                return
            if self._sizes[old.key] > old.image.nbytes:
                old.drop_costs()
                self._resize(old.key, old.nbytes())
                self.trimmed += 1
        # photos leave only for the bytes held sessions do not account for: what requests
        # under way computed is lent to them and comes back (trimmable) when they end
        lent = sum(self._sizes[k] - self._sessions[k].image.nbytes for k in self._holds if k in self._sizes)
        for old in others:
            if self._total - lent <= self.budget_bytes:
                return
            del self._sessions[old.key]
            self._resize(old.key, 0)
            del self._sizes[old.key]
            self.evictions += 1

    def _resize(self, key: str, size: int) -> None:
        self._total += size - self._sizes.get(key, 0)
        self._sizes[key] = size

    def discard(self, key: str) -> None:
        """Forget the session with ``key`` (nothing happens when it is not stored): for
        callers that know an image will not come back, such as an evaluation run."""
        with self._lock:
            if self._sessions.pop(key, None) is not None:
                self._total -= self._sizes.pop(key, 0)

    def forget(self, uses: Callable[[Hashable], bool]) -> None:
        """``ImageSession.forget`` on every stored session, then recount them."""
        with self._lock:
            sessions = list(self._sessions.values())
        for session in sessions:
            session.forget(uses)
            self.update(session, touch=False)

    @property
    def nbytes(self) -> int:
        """Bytes the stored sessions hold, as last counted."""
        with self._lock:
            return self._total

    def __len__(self) -> int:
        with self._lock:
            return len(self._sessions)

    def __contains__(self, key: str) -> bool:
        with self._lock:
            return key in self._sessions
