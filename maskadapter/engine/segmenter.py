"""The segmenter: image -> SAM-2 masks -> Mask-Adapter class probabilities -> segments.

``Segmenter`` owns the three models, the device, autocast, a lock around model work,
the text-embedding cache and the ``SessionStore`` of image sessions; one instance
serves every user. Work happens at a working resolution (``WorkingFrame``: the image
scaled so its long side is at most ``mask_side``); what leaves the engine is at the
original size (``maskadapter.engine.results``: modes, thresholds, the class "others").

A session keeps results, not just embeddings: the masks made with given mask settings
(a ``MaskSet``) and their class probabilities for a given vocabulary. So a new
vocabulary re-runs only the text side (cached) and the adapter, and a new mode,
threshold or granularity re-runs only painting; neither calls SAM-2 again.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

import numpy as np
import torch

from maskadapter.engine.clip_features import (
    MASK_CHUNK,
    classify_embeddings,
    clip_image_features,
    mask_embeddings_from_features,
    pooled_embeddings_from_features,
)
from maskadapter.engine.generator import MaskGenerator
from maskadapter.engine.mask_set import MaskSet
from maskadapter.engine.mask_settings import RANDOM_WEIGHT_NOTE, AutoMaskSettings, default_mask_settings
from maskadapter.engine.painting_options import METHODS, Painting
from maskadapter.engine.predictor import encode_image, prompt_mask
from maskadapter.engine.progressive import AutomaticStep, automatic_steps
from maskadapter.engine.results import Comparison, SegmentationResult, assemble, mask_changes, with_others
from maskadapter.engine.runtime import (
    autocast_dtype,
    compile_sam2,
    halving_on_oom,
    model_token,
    precision_name,
    resolve_device,
)
from maskadapter.engine.session import ImageSession, SessionStore
from maskadapter.engine.text_embeddings import TextEmbeddingCache, context_notes
from maskadapter.engine.transforms import ImageTransform, WorkingFrame, check_prompts
from maskadapter.engine.vocabulary import Vocabulary, build_vocabulary
from maskadapter.engine.weights import (
    Models,
    build_models,
    build_real_size_random,
    build_tiny_random,
    resolve_model_files,
)
from maskadapter.errors import InputError
from maskadapter.progress import ProgressCallback, no_progress, within
from maskadapter.settings import Settings

T = TypeVar("T")
log = logging.getLogger(__name__)


class Segmenter:
    """Owns models, device, autocast, a lock and the session store; images -> segments."""

    def __init__(
        self,
        models: Models,
        device: str | torch.device = "cpu",
        transform: ImageTransform | None = None,
        cache_dir: str | None = None,
        mask_side: int = 1024,
        session_bytes: int = 2 * 2**30,
        text_cache_entries: int = 20000,
        text_cache_bytes: int = 256 * 2**20,
        precision: str = "auto",
    ) -> None:
        self.models = models
        self.device = torch.device(device)
        self.transform = transform or ImageTransform()
        self.mask_side = int(mask_side)
        self.amp_dtype = autocast_dtype(self.device, precision)  # checks ``precision``
        sizes = {"memory_entries": text_cache_entries, "disk_bytes": text_cache_bytes}
        self.text_cache = TextEmbeddingCache(models.clip, models.tokenizer, models.clip_key, cache_dir, **sizes)
        self.store = SessionStore(session_bytes)
        self.lock = threading.RLock()  # model work, one request at a time
        self.stats: Counter[str] = Counter()  # what was computed; written under _stats_lock
        self._stats_lock = threading.Lock()
        self._said_random_defaults = False

    @classmethod
    def from_settings(
        cls, settings: Settings, progress: ProgressCallback = no_progress, real_size_random: bool = False
    ) -> Segmenter:
        """Resolve files, build the models on the chosen device (CUDA when present);
        ``progress`` hears the downloads (first half) and loading (second half).
        ``real_size_random``: the real architectures (SAM-2.1 ``settings.sam_size``,
        ``settings.clip_model``, the head) with random weights, for timing and memory
        figures; ``settings.tiny_random``: small random models."""
        device = resolve_device(settings.device)
        if real_size_random:
            models = build_real_size_random(device, settings.sam_size, settings.clip_model)
        elif settings.tiny_random:
            models = build_tiny_random(device)
        else:
            files = resolve_model_files(settings, within(progress, 0.0, 0.5))
            models = build_models(files, device, within(progress, 0.5, 1.0))
        if settings.compile:
            compile_sam2(models.sam2)
        transform = ImageTransform(settings.short_side, settings.max_size)
        return cls(
            models,
            device,
            transform,
            str(settings.cache_path),
            mask_side=settings.mask_side,
            session_bytes=settings.session_cache_mb * 2**20,
            text_cache_entries=settings.text_cache_entries,
            text_cache_bytes=settings.text_cache_mb * 2**20,
            precision=settings.precision,
        )

    @property
    def real_weights(self) -> bool:
        return self.models.real_weights

    def default_mask_settings(self) -> AutoMaskSettings:
        """The automatic-mask settings used when none are given: the demo's, with SAM-2's
        quality filters opened when the weights are random (``mask_settings.default_mask_settings``)."""
        return default_mask_settings(self.real_weights)

    def _mask_settings(self, given: AutoMaskSettings | None) -> AutoMaskSettings:
        """``given``, else ``default_mask_settings()`` (said once if the weights are random)."""
        if given is not None:
            return given
        if not self.real_weights and not self._said_random_defaults:
            self._said_random_defaults = True
            log.warning("%s; pass mask_settings to choose", RANDOM_WEIGHT_NOTE)
        return self.default_mask_settings()

    @property
    def arithmetic(self) -> str:
        """What the networks compute in: ``"float32"``, ``"bfloat16"`` or ``"float16"``
        (autocast; see ``maskadapter.engine.runtime``)."""
        return precision_name(self.amp_dtype)

    def autocast(self) -> contextlib.AbstractContextManager:
        """The precision's autocast (bf16 or fp16), or nothing (float32)."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    # ------------------------------------------------------------------ sessions

    def session(self, image: object) -> ImageSession:
        """The stored session of an (H, W, 3) uint8 RGB image (opened if new)."""
        return self.store.open(image)

    def held(self, image: ImageSession | np.ndarray) -> contextlib.AbstractContextManager[ImageSession]:
        """The stored session of an image (or a caller's session, stored again if it
        was evicted), held for the block: never trimmed nor evicted meanwhile."""
        return self.store.hold(image if isinstance(image, ImageSession) else ImageSession.from_image(image))

    def frame(self, session: ImageSession) -> WorkingFrame:
        """The working frame of the session's image."""
        return WorkingFrame(session.hw, self.mask_side)

    def vocabulary(self, text: str = "", predefined: Sequence[str] = ()) -> Vocabulary:
        """``build_vocabulary`` with ``vocabulary_notes`` as its notes."""
        vocabulary = build_vocabulary(text, predefined)
        return dataclasses.replace(vocabulary, notes=self.vocabulary_notes(vocabulary))

    def vocabulary_notes(self, vocabulary: Vocabulary) -> tuple[str, ...]:
        """What to tell the user about the vocabulary: its own notes (names cut) and
        names too long for this CLIP's text context (``context_notes``)."""
        extra = context_notes(vocabulary, self.models.tokenizer, self.text_cache.templates)
        return tuple(dict.fromkeys(vocabulary.notes + extra))

    def text_embeddings(
        self, vocabulary: Vocabulary, progress: ProgressCallback = no_progress
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(K, D) text rows and (K,) class index, cached per synonym; ``progress`` as
        in ``TextEmbeddingCache.embed``."""
        with self.lock:
            return self.text_cache.embed(vocabulary, progress)

    # ------------------------------------------------------------------ what an image costs

    def _stage(self, session: ImageSession, table: str, key: tuple, compute: Callable[[], T]) -> T:
        """``session.once`` (computed once, others wait), then the store recounts the session."""
        value, computed = session.once(table, key, compute)
        if computed:
            self.store.update(session)
        return value

    def _count(self, name: str, n: int = 1) -> None:
        with self._stats_lock:
            self.stats[name] += n

    def clip_features(self, session: ImageSession) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw and dense CLIP features of the session's image (computed once)."""

        def compute() -> tuple[torch.Tensor, torch.Tensor]:
            x = self.transform.image_to_tensor(session.image, self.device)
            with self.lock, torch.inference_mode(), self.autocast():
                features = clip_image_features(self.models.clip, x)
            self._count("clip_image_encodings")
            return features

        return self._stage(session, "clip_cache", self._clip_key(), compute)

    def _clip_key(self) -> tuple:
        return (self.transform, str(self.device), self.models.clip_key)

    def sam_embedding(self, session: ImageSession, progress: ProgressCallback = no_progress) -> dict:
        """SAM-2's embedding of the session's image (computed once), as the one-entry
        cache ``CachingPredictor`` reads (keyed by the model)."""
        key = model_token(self.models.sam2)

        def compute() -> tuple:
            progress(0.05, "encoding the image (SAM-2)")
            cache: dict = {}
            with self.lock, torch.inference_mode(), self.autocast():
                encode_image(self.models.sam2, session.image, cache)
            self._count("sam_image_encodings")
            return cache[key]

        return {key: self._stage(session, "sam_cache", key, compute)}

    def with_sam2(self, sam_model: torch.nn.Module) -> Segmenter:
        """A segmenter with another SAM-2 model, sharing everything else (store, lock, ...)."""
        other = copy.copy(self)
        other.models = dataclasses.replace(self.models, sam2=sam_model)
        return other

    def _mask_key(self, settings: AutoMaskSettings) -> tuple:
        return (model_token(self.models.sam2), settings, self.mask_side)

    def automatic_masks(
        self, session: ImageSession, settings: AutoMaskSettings | None = None, progress: ProgressCallback = no_progress
    ) -> MaskSet:
        """SAM-2's automatic masks of the session's image in its working frame (made
        once per mask settings; None: ``default_mask_settings()``), largest first."""
        settings = self._mask_settings(settings)
        key = self._mask_key(settings)
        return self._stage(session, "masks", key, lambda: self._generate(session, settings, progress))

    def _generate(self, session: ImageSession, settings: AutoMaskSettings, progress: ProgressCallback) -> MaskSet:
        cache = self.sam_embedding(session, progress)
        self.clip_features(session)  # both encodings before the slow part
        frame = self.frame(session)
        generator = MaskGenerator(self.models.sam2, **settings.generator_args)

        def generate(points_per_batch: int) -> MaskSet:
            generator.points_per_batch = points_per_batch
            return generator.generate_masks(session.image, frame.work_hw, cache, within(progress, 0.1, 0.7))

        with self.lock, torch.inference_mode(), self.autocast():
            found = halving_on_oom(generate, generator.points_per_batch, "on SAM-2's point batches")
            found = found.select(frame.largest_first(found.masks))  # smaller masks are painted over larger
        self._count("mask_generations")
        return found

    def mask_probabilities(
        self,
        session: ImageSession,
        masks: np.ndarray | torch.Tensor,
        vocabulary: Vocabulary,
        progress: ProgressCallback = no_progress,
        method: str = "adapter",
        step: bool = False,
    ) -> torch.Tensor:
        """(N, C) float32 class probabilities (softmax over classes) of (N, h, w) bool
        masks given in the working frame or at the original size.

        ``method``: ``"adapter"`` (Mask-Adapter) or ``"pooling"`` (the plain baseline:
        CLIP's raw features averaged inside each mask, ``pooled_embeddings_from_features``).
        Both use the session's cached CLIP features. ``step``: for a step before the last
        of ``segment_automatic_steps`` (counted on its own in ``stats``)."""
        if method not in METHODS:
            raise InputError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
        masks = torch.as_tensor(masks, device=self.device)
        if masks.ndim != 3 or tuple(masks.shape[1:]) not in (session.hw, self.frame(session).work_hw):
            raise InputError(f"masks must be (N, {session.hw[0]}, {session.hw[1]}), got {tuple(masks.shape)}")
        embeddings, class_index = self.text_embeddings(vocabulary)
        raw, dense = self.clip_features(session)
        name = "Mask-Adapter" if method == "adapter" else "mask pooling"

        def classify(chunk: int) -> torch.Tensor:
            logits = []
            for start in range(0, len(masks), chunk):
                m = self.transform.masks_to_tensor(masks[start : start + chunk], self.device, session.hw)
                if method == "adapter":
                    emb = mask_embeddings_from_features(self.models.clip, self.models.adapter, raw, dense, m)
                else:
                    emb = pooled_embeddings_from_features(self.models.clip, raw, m, chunk)
                logits.append(classify_embeddings(self.models.clip, emb, embeddings, class_index)[0].float())
                done = min(len(masks), start + chunk)
                progress(0.7 + 0.2 * done / len(masks), f"{name}: {done} of {len(masks)} masks classified")
            return torch.cat(logits) if logits else torch.zeros(0, len(vocabulary), device=self.device)

        with self.lock, torch.inference_mode(), self.autocast():
            logits = halving_on_oom(classify, MASK_CHUNK, f"in {name}")
        self._count(("step_" if step else "") + ("adapter_runs" if method == "adapter" else "pooling_runs"))
        return logits.softmax(-1)

    def _probabilities(
        self,
        session: ImageSession,
        mask_key: tuple,
        masks: torch.Tensor,
        vocabulary: Vocabulary,
        progress: ProgressCallback,
        method: str = "adapter",
    ) -> torch.Tensor:
        """``mask_probabilities`` kept in the session per (masks, vocabulary, method)."""
        key = (mask_key, vocabulary, self._clip_key(), method)
        classes = with_others(vocabulary)
        return self._stage(
            session, "probs", key, lambda: self.mask_probabilities(session, masks, classes, progress, method)
        )

    # ------------------------------------------------------------------ the two tasks

    def segment_automatic(
        self,
        image: ImageSession | np.ndarray,
        vocabulary: Vocabulary,
        mask_settings: AutoMaskSettings | None = None,
        mode: str = "semantic",
        score_threshold: float = 0.0,
        granularity: float = 0.8,
        progress: ProgressCallback = no_progress,
        method: str = "adapter",
    ) -> SegmentationResult:
        """Segment everything SAM-2 finds and name it with the vocabulary.

        Args:
            image: an ``ImageSession`` or an (H, W, 3) uint8 RGB array.
            mask_settings: SAM-2's automatic-mask settings; None: ``default_mask_settings()``
                (the demo's; with random weights SAM-2's quality filters are opened, and
                a warning says so once).
            mode: ``"semantic"`` (default) or ``"per_mask"`` (see ``maskadapter.engine.results``).
            score_threshold: minimum class probability of a kept segment, in [0, 1].
            granularity: semantic mode's per-class relative threshold, in [0, 1].
            progress: called with (fraction done, message) as the work advances.
            method: how masks are classified: ``"adapter"`` (Mask-Adapter) or
                ``"pooling"`` (plain mask pooling, the baseline the paper improves on).
        """
        painting, settings = Painting(mode, score_threshold, granularity), self._mask_settings(mask_settings)
        with self.held(image) as session:
            return self._automatic(session, settings, vocabulary, painting, progress, method)

    def segment_automatic_steps(
        self,
        image: ImageSession | np.ndarray,
        vocabulary: Vocabulary,
        mask_settings: AutoMaskSettings | None = None,
        mode: str = "semantic",
        score_threshold: float = 0.0,
        granularity: float = 0.8,
        progress: ProgressCallback = no_progress,
        method: str = "adapter",
    ) -> Iterator[AutomaticStep]:
        """``segment_automatic`` (same arguments, checked at once) a step of SAM-2's point
        grid at a time, coarse to fine (32 x 32: 64, 256, then 1024 points): an
        ``AutomaticStep`` per step, a complete result for the points so far; the last
        (``final``) is ``segment_automatic``'s, kept in the session (masks already
        there give that step alone). Leaving early keeps no masks (``progressive``)."""
        painting, settings = Painting(mode, score_threshold, granularity), self._mask_settings(mask_settings)
        session = image if isinstance(image, ImageSession) else ImageSession.from_image(image)  # held by the steps
        return automatic_steps(self, session, settings, vocabulary, painting, progress, method)

    def compare(
        self,
        image: ImageSession | np.ndarray,
        vocabulary: Vocabulary,
        mask_settings: AutoMaskSettings | None = None,
        mode: str = "semantic",
        score_threshold: float = 0.0,
        granularity: float = 0.8,
        progress: ProgressCallback = no_progress,
    ) -> Comparison:
        """The same SAM-2 masks classified by Mask-Adapter and by plain mask pooling (the
        arguments as in ``segment_automatic``); the masks and the CLIP features are
        computed once for both."""
        painting, settings = Painting(mode, score_threshold, granularity), self._mask_settings(mask_settings)
        with self.held(image) as session:
            adapter, pooling = (self._automatic(session, settings, vocabulary, painting, progress, m) for m in METHODS)
            masks = self.automatic_masks(session, settings).masks  # kept in the session: no new work
            key = self._mask_key(settings)
            probs = [self._probabilities(session, key, masks, vocabulary, progress, m) for m in METHODS]
            changes = mask_changes(self.frame(session), masks, *probs, vocabulary)
        return Comparison(adapter, pooling, len(changes), len(masks), changes)

    def _automatic(
        self,
        session: ImageSession,
        settings: AutoMaskSettings,
        vocabulary: Vocabulary,
        painting: Painting,
        progress: ProgressCallback,
        method: str,
    ) -> SegmentationResult:
        """``segment_automatic`` on checked arguments (``compare`` runs it twice)."""
        # fail on the text side before the slow part
        self.text_embeddings(with_others(vocabulary), within(progress, 0.0, 0.05))
        found = self.automatic_masks(session, settings, progress)
        probs = self._probabilities(session, self._mask_key(settings), found.masks, vocabulary, progress, method)
        progress(0.92, "painting")
        return assemble(self.frame(session), found, probs, vocabulary, painting)

    def segment_points(
        self,
        image: ImageSession | np.ndarray,
        points: Sequence[Sequence[float]],
        vocabulary: Vocabulary,
        box: Sequence[float] | None = None,
        progress: ProgressCallback = no_progress,
    ) -> SegmentationResult:
        """Segment the object at the given points and name it.

        Args:
            points: ``[[x, y, label], ...]`` XY pixel coordinates in the original image,
                label 1 positive, 0 negative; at least one positive unless a box is given.
            box: optional XYXY pixel box around the object.
        Returns a result with one segment (none if SAM-2 returns an empty mask).
        """
        with self.held(image) as session:
            coords, labels, box_arr = check_prompts(points, box, session.hw)
            self.text_embeddings(with_others(vocabulary), within(progress, 0.0, 0.05))
            cache, frame = self.sam_embedding(session, progress), self.frame(session)
            with self.lock, self.autocast():
                mask, iou = prompt_mask(self.models.sam2, session.image, cache, coords, labels, box_arr, frame.work_hw)
            masks = torch.as_tensor(mask[None] if mask.any() else mask[None][:0], device=self.device)
            scores = [torch.full((len(masks),), value, device=self.device) for value in (iou, float("nan"))]
            found = MaskSet.of(masks, *scores)  # no stability score for a prompted mask
            probs = self.mask_probabilities(session, masks, with_others(vocabulary), progress)
            return assemble(frame, found, probs, vocabulary, Painting("per_mask", 0.0, 0.0))

