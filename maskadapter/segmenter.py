"""The segmenter: image -> SAM-2 masks -> Mask-Adapter class probabilities -> segments.

``Segmenter`` owns the three models, the device, autocast, a lock around model work
and the text-embedding cache; one instance serves every user. ``ImageSession`` holds
what one image costs (SAM-2 embedding, CLIP features) so that a second click or a new
vocabulary on the same image does not recompute it; each user keeps their own.

Two ways of turning classified masks into a picture (``mode``):

- ``"per_mask"``: every SAM-2 mask is one segment labelled with its best class
  (masks below ``score_threshold`` are dropped); smaller masks are drawn over larger.
- ``"semantic"``: for each class keep the masks whose probability for it is at least
  ``granularity`` x that class's best (and at least ``score_threshold``); every pixel
  takes the class with the highest probability among kept masks covering it; pixels
  covered by no kept mask stay unlabelled. One segment per class.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from maskadapter.clip_features import (
    MASK_CHUNK,
    classify_embeddings,
    clip_image_features,
    mask_embeddings_from_features,
)
from maskadapter.errors import InputError
from maskadapter.masks import (
    AutoMaskSettings,
    MaskProposal,
    automatic_masks,
    encode_image,
    image_key,
    prompt_mask,
    sam_cache_key,
)
from maskadapter.settings import Settings
from maskadapter.transforms import ImageTransform, check_box, check_image, check_points
from maskadapter.vocabulary import TextEmbeddingCache, Vocabulary, build_vocabulary
from maskadapter.weights import Models, build_models, build_tiny_random, resolve_model_files

MODES = ("per_mask", "semantic")
TOP_K = 5

Progress = Callable[[str], None]


@dataclass
class Segment:
    """One labelled region.

    mask: (H, W) bool at image resolution; box: XYXY pixels, x1/y1 exclusive;
    top5: the five most probable (label, probability) pairs, best first.
    """

    mask: np.ndarray
    label: str
    class_id: int
    score: float
    top5: list[tuple[str, float]]
    area: int
    box: tuple[int, int, int, int]
    sam_iou: float | None = None


@dataclass
class SegmentationResult:
    """Segments of one image; ``label_map`` (H, W) int32 holds class ids, -1 unlabelled."""

    image_size: tuple[int, int]
    labels: list[str]
    segments: list[Segment]
    label_map: np.ndarray
    mode: str


@dataclass
class ImageSession:
    """One user's image and what it costs to encode (filled lazily by the segmenter)."""

    image: np.ndarray
    key: str = ""
    sam_cache: dict = field(default_factory=dict)
    clip_cache: dict = field(default_factory=dict)

    @classmethod
    def from_image(cls, image: object) -> ImageSession:
        """Validate an (H, W, 3) uint8 RGB image (or PIL image) and open a session on it."""
        image = check_image(image)
        return cls(image=image, key=image_key(image))

    @property
    def hw(self) -> tuple[int, int]:
        return self.image.shape[0], self.image.shape[1]


def _box(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return (0, 0, 0, 0)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def _top(probs: np.ndarray, labels: Sequence[str], k: int = TOP_K) -> list[tuple[str, float]]:
    order = np.argsort(-probs, kind="stable")[:k]
    return [(labels[i], float(probs[i])) for i in order]


class Segmenter:
    """Owns models, device, autocast and a lock; turns images into labelled segments."""

    def __init__(
        self,
        models: Models,
        device: str | torch.device = "cpu",
        transform: ImageTransform | None = None,
        cache_dir: str | None = None,
    ) -> None:
        self.models = models
        self.device = torch.device(device)
        self.transform = transform or ImageTransform()
        self.amp_dtype = None
        if self.device.type == "cuda":
            self.amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        self.text_cache = TextEmbeddingCache(models.clip, models.tokenizer, models.clip_key, cache_dir)
        self.lock = threading.RLock()
        self.stats: Counter[str] = Counter()

    @classmethod
    def from_settings(cls, settings: Settings, progress: Progress | None = None) -> Segmenter:
        """Resolve files, build the models on the chosen device (CUDA when present)."""
        device = resolve_device(settings.device)
        if settings.tiny_random:
            models = build_tiny_random(device)
        else:
            files = resolve_model_files(settings, progress)
            models = build_models(files, device, progress)
        transform = ImageTransform(settings.short_side, settings.max_size)
        return cls(models, device, transform, str(settings.cache_path))

    @property
    def real_weights(self) -> bool:
        return self.models.real_weights

    def autocast(self) -> contextlib.AbstractContextManager:
        """fp16/bf16 autocast on CUDA, nothing (float32) on CPU."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    # ------------------------------------------------------------------ building blocks

    def session(self, image: object) -> ImageSession:
        """A new ``ImageSession`` for an (H, W, 3) uint8 RGB image."""
        return ImageSession.from_image(image)

    def _as_session(self, image_or_session: object) -> ImageSession:
        if isinstance(image_or_session, ImageSession):
            return image_or_session
        return self.session(image_or_session)

    def vocabulary(self, text: str = "", predefined: Sequence[str] = ()) -> Vocabulary:
        return build_vocabulary(text, predefined)

    def text_embeddings(self, vocabulary: Vocabulary) -> tuple[torch.Tensor, torch.Tensor]:
        """(K, D) text rows and (K,) class index, cached per synonym."""
        with self.lock:
            return self.text_cache.embed(vocabulary)

    def clip_features(self, session: ImageSession) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw and dense CLIP features of the session's image (computed once)."""
        key = self._clip_key()
        with self.lock:
            if key not in session.clip_cache:
                x = self.transform.image_to_tensor(session.image, self.device)
                with torch.inference_mode(), self.autocast():
                    raw, dense = clip_image_features(self.models.clip, x)
                session.clip_cache.clear()
                session.clip_cache[key] = (raw.float(), dense.float())
                self.stats["clip_image_encodings"] += 1
            return session.clip_cache[key]

    def _clip_key(self) -> tuple:
        return (self.transform, str(self.device), self.models.clip_key)

    def is_encoded(self, session: ImageSession) -> bool:
        """Whether both embeddings of the session's image are cached for these models."""
        sam_key = sam_cache_key(self.models.sam2, session.key)
        return sam_key in session.sam_cache and self._clip_key() in session.clip_cache

    def with_sam2(self, sam_model: torch.nn.Module) -> Segmenter:
        """A segmenter with another SAM-2 model, sharing everything else (CLIP, adapter,
        text cache, lock, device, statistics)."""
        other = copy.copy(self)
        other.models = dataclasses.replace(self.models, sam2=sam_model)
        return other

    def encode(self, session: ImageSession, progress: Progress | None = None) -> None:
        """Compute (once) what the session's image costs: SAM-2 embedding, CLIP features."""
        with self.lock:
            if progress and not self.is_encoded(session):
                progress("encoding the image (SAM-2 and CLIP)")
            with self.autocast():
                self.stats["sam_image_encodings"] += encode_image(self.models.sam2, session.image, session.sam_cache)
            self.clip_features(session)

    def mask_probabilities(self, session: ImageSession, masks: np.ndarray, vocabulary: Vocabulary) -> np.ndarray:
        """(N, C) class probabilities of (N, H, W) bool masks (softmax over classes)."""
        if masks.ndim != 3 or masks.shape[1:] != session.hw:
            raise InputError(f"masks must be (N, {session.hw[0]}, {session.hw[1]}), got {masks.shape}")
        embeddings, class_index = self.text_embeddings(vocabulary)
        raw, dense = self.clip_features(session)
        chunks = []
        with self.lock, torch.inference_mode():
            for start in range(0, len(masks), MASK_CHUNK):
                m = self.transform.masks_to_tensor(masks[start : start + MASK_CHUNK], self.device)
                emb = mask_embeddings_from_features(self.models.clip, self.models.adapter, raw, dense, m)
                chunks.append(classify_embeddings(self.models.clip, emb, embeddings, class_index)[0])
        if not chunks:
            return np.zeros((0, len(vocabulary)), dtype=np.float32)
        return torch.cat(chunks).float().softmax(-1).cpu().numpy()

    # ------------------------------------------------------------------ the two tasks

    def segment_automatic(
        self,
        image: ImageSession | np.ndarray,
        vocabulary: Vocabulary,
        mask_settings: AutoMaskSettings | None = None,
        mode: str = "per_mask",
        score_threshold: float = 0.0,
        granularity: float = 0.8,
        progress: Progress | None = None,
    ) -> SegmentationResult:
        """Segment everything SAM-2 finds and name it with the vocabulary.

        Args:
            image: an ``ImageSession`` or an (H, W, 3) uint8 RGB array.
            mode: ``"per_mask"`` or ``"semantic"`` (see the module docstring).
            score_threshold: minimum class probability of a kept segment, in [0, 1].
            granularity: semantic mode's per-class relative threshold, in [0, 1].
        """
        if mode not in MODES:
            raise InputError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        for name, value in (("score threshold", score_threshold), ("granularity", granularity)):
            if not 0.0 <= value <= 1.0:
                raise InputError(f"{name} must be between 0 and 1, got {value}")
        session = self._as_session(image)
        self.text_embeddings(vocabulary)  # fail on the text side before the slow part
        self.encode(session, progress)
        if progress:
            progress("generating masks with SAM-2")
        with self.lock, self.autocast():
            proposals, encodings = automatic_masks(self.models.sam2, session.image, session.sam_cache, mask_settings)
        self.stats["sam_image_encodings"] += encodings
        if progress:
            progress(f"classifying {len(proposals)} masks with Mask-Adapter")
        return self._assemble(session, proposals, vocabulary, mode, score_threshold, granularity)

    def segment_points(
        self,
        image: ImageSession | np.ndarray,
        points: Sequence[Sequence[float]],
        vocabulary: Vocabulary,
        box: Sequence[float] | None = None,
        progress: Progress | None = None,
    ) -> SegmentationResult:
        """Segment the object at the given points and name it.

        Args:
            points: ``[[x, y, label], ...]`` XY pixel coordinates in the original image,
                label 1 positive, 0 negative; at least one positive unless a box is given.
            box: optional XYXY pixel box around the object.
        Returns:
            a result with one segment (none if SAM-2 returns an empty mask).
        """
        session = self._as_session(image)
        box_arr = check_box(box, session.hw)
        points = [] if points is None else points
        if box_arr is not None and isinstance(points, Sequence | np.ndarray) and len(points) == 0:
            coords = labels = None  # a box alone
        else:
            coords, labels = check_points(points, session.hw, require_positive=box_arr is None)
        self.text_embeddings(vocabulary)
        self.encode(session, progress)
        with self.lock, self.autocast():
            proposal, encodings = prompt_mask(
                self.models.sam2, session.image, session.sam_cache, coords, labels, box_arr
            )
        self.stats["sam_image_encodings"] += encodings
        proposals = [proposal] if proposal.mask.any() else []
        return self._assemble(session, proposals, vocabulary, "per_mask", 0.0, 0.0)

    # ------------------------------------------------------------------ masks -> segments

    def _assemble(
        self,
        session: ImageSession,
        proposals: list[MaskProposal],
        vocabulary: Vocabulary,
        mode: str,
        score_threshold: float,
        granularity: float,
    ) -> SegmentationResult:
        labels = vocabulary.labels
        h, w = session.hw
        label_map = np.full((h, w), -1, dtype=np.int32)
        if not proposals:
            return SegmentationResult((h, w), labels, [], label_map, mode)
        masks = np.stack([p.mask for p in proposals])
        probs = self.mask_probabilities(session, masks, vocabulary)
        if mode == "per_mask":
            segments = self._per_mask(proposals, probs, labels, score_threshold, label_map)
        else:
            segments = self._semantic(proposals, probs, labels, score_threshold, granularity, label_map)
        return SegmentationResult((h, w), labels, segments, label_map, mode)

    @staticmethod
    def _per_mask(proposals, probs, labels, score_threshold, label_map) -> list[Segment]:
        segments = []
        # largest first, so that smaller masks are painted over larger ones
        order = sorted(range(len(proposals)), key=lambda i: -int(proposals[i].mask.sum()))
        for i in order:
            class_id = int(probs[i].argmax())
            score = float(probs[i, class_id])
            if score < score_threshold:
                continue
            mask = proposals[i].mask
            label_map[mask] = class_id
            segments.append(
                Segment(
                    mask,
                    labels[class_id],
                    class_id,
                    score,
                    _top(probs[i], labels),
                    int(mask.sum()),
                    _box(mask),
                    proposals[i].predicted_iou,
                )
            )
        return segments

    @staticmethod
    def _semantic(proposals, probs, labels, score_threshold, granularity, label_map) -> list[Segment]:
        best = probs.max(axis=0)  # (C,) best mask probability per class
        keep = (probs >= granularity * best[None]) & (probs >= score_threshold)  # (N, C)
        pixel_score = np.full(label_map.shape, -1.0, dtype=np.float32)
        for i, c in zip(*np.nonzero(keep), strict=True):
            region = proposals[i].mask & (probs[i, c] > pixel_score)
            pixel_score[region] = probs[i, c]
            label_map[region] = c
        segments = []
        for c in np.unique(label_map[label_map >= 0]):
            mask = label_map == c
            kept = [i for i in np.nonzero(keep[:, c])[0] if (proposals[i].mask & mask).any()]
            top = max(kept, key=lambda i: probs[i, c])
            segments.append(
                Segment(
                    mask,
                    labels[c],
                    int(c),
                    float(probs[top, c]),
                    _top(probs[top], labels),
                    int(mask.sum()),
                    _box(mask),
                    proposals[top].predicted_iou,
                )
            )
        segments.sort(key=lambda s: -s.area)
        return segments


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; anything else must be usable here."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise InputError(f"unknown device {name!r}; use auto, cpu or cuda[:N]") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {name!r} asked for, but CUDA is not available here")
    return device
