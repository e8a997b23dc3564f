"""Image sessions and the one bounded store that owns them.

An ``ImageSession`` keeps what one image costs: its SAM-2 embedding, its CLIP
features, the masks made with given mask settings, and the class probabilities of
those masks for a given vocabulary. The ``SessionStore`` owns every session of a
``Segmenter``; callers (the app's per-user state included) hold only a key. The store
counts the bytes of every tensor and array a session holds, on the CPU and on the GPU
alike, and evicts the least recently used sessions past its byte budget. An evicted
session is recomputed when it is needed again.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
import torch

from maskadapter.masks import image_key
from maskadapter.transforms import check_image


@dataclass
class ImageSession:
    """One image and what it costs to encode and segment (filled lazily by the segmenter).

    image: (H, W, 3) uint8 RGB, the original. ``sam_cache`` holds SAM-2 embeddings,
    ``clip_cache`` CLIP features, ``masks`` a ``MaskSet`` per mask-settings key and
    ``probs`` an (N, C) probability tensor per (mask key, vocabulary) key.
    """

    image: np.ndarray
    key: str = ""
    sam_cache: dict = field(default_factory=dict)
    clip_cache: dict = field(default_factory=dict)
    masks: dict = field(default_factory=dict)
    probs: dict = field(default_factory=dict)

    @classmethod
    def from_image(cls, image: object) -> ImageSession:
        """Validate an (H, W, 3) uint8 RGB image (or PIL image) and open a session on it."""
        image = check_image(image)
        return cls(image=image, key=image_key(image))

    @property
    def hw(self) -> tuple[int, int]:
        return self.image.shape[0], self.image.shape[1]

    def nbytes(self) -> int:
        """Bytes held by this session's arrays and tensors (CPU and GPU)."""
        return _nbytes((self.image, self.sam_cache, self.clip_cache, self.masks, self.probs))


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
    """Image sessions by key, least recently used first out past ``budget_bytes``.

    The session in use is never evicted, even when it alone is over the budget.
    """

    def __init__(self, budget_bytes: int) -> None:
        self.budget_bytes = int(budget_bytes)
        self._sessions: OrderedDict[str, ImageSession] = OrderedDict()
        self._sizes: dict[str, int] = {}
        self._lock = threading.Lock()
        self.evictions = 0

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
            self._sessions.move_to_end(session.key)
        self.update(stored)
        return stored

    def update(self, session: ImageSession) -> None:
        """Recount ``session``'s bytes and evict others until the store fits its budget."""
        size = session.nbytes()
        with self._lock:
            if session.key not in self._sessions:
                return
            self._sizes[session.key] = size
            self._sessions.move_to_end(session.key)
            while self.nbytes > self.budget_bytes and len(self._sessions) > 1:
                key, _ = self._sessions.popitem(last=False)
                self._sizes.pop(key, None)
                self.evictions += 1

    def discard(self, key: str) -> None:
        """Forget the session with ``key`` (nothing happens when it is not stored): for
        callers that know an image will not come back, such as an evaluation run."""
        with self._lock:
            self._sessions.pop(key, None)
            self._sizes.pop(key, None)

    @property
    def nbytes(self) -> int:
        return sum(self._sizes.values())

    def __len__(self) -> int:
        return len(self._sessions)

    def __contains__(self, key: str) -> bool:
        return key in self._sessions
