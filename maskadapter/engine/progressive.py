"""The steps of ``Segmenter.segment_automatic_steps`` before the last: SAM-2's point grid
coarse to fine (``MaskGenerator.generate_steps``), each step's masks named and painted.

A step's masks are classified only where an earlier step did not have them (candidate
ids name a mask across steps, ``_KnownProbabilities``); the last step's masks go back
to the segmenter, which keeps them in the session and classifies them as
``segment_automatic`` does, so the last result is the one-shot one.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from typing import Any, NamedTuple

import torch

from maskadapter.engine.generator import MaskGenerator
from maskadapter.engine.mask_set import MaskSet
from maskadapter.engine.mask_settings import AutoMaskSettings
from maskadapter.engine.painting_options import Painting
from maskadapter.engine.results import SegmentationResult, assemble, with_others
from maskadapter.engine.session import ImageSession
from maskadapter.engine.vocabulary import Vocabulary
from maskadapter.progress import ProgressCallback, within

Segmenter = Any  # maskadapter.engine.segmenter.Segmenter, which imports this module


class AutomaticStep(NamedTuple):
    """One result of ``Segmenter.segment_automatic_steps``: the result for the first
    ``points`` of the grid's ``total`` points."""

    points: int
    total: int
    result: SegmentationResult

    @property
    def final(self) -> bool:
        return self.points >= self.total


class _KnownProbabilities:
    """Class probabilities of the masks earlier steps classified, by candidate id."""

    def __init__(self, classes: int, device: torch.device) -> None:
        self.ids = torch.zeros(0, dtype=torch.long, device=device)
        self.probs = torch.zeros(0, classes, device=device)

    def missing(self, ids: torch.Tensor) -> torch.Tensor:
        """Positions in ``ids`` of the masks not classified yet."""
        return (~torch.isin(ids, self.ids)).nonzero()[:, 0]

    def add(self, ids: torch.Tensor, probs: torch.Tensor) -> None:
        self.ids, self.probs = torch.cat([self.ids, ids]), torch.cat([self.probs, probs.to(self.probs.dtype)])

    def of(self, ids: torch.Tensor) -> torch.Tensor:
        """(N, C) probabilities of ``ids`` (all known)."""
        order = torch.argsort(self.ids)
        return self.probs[order[torch.searchsorted(self.ids[order], ids)]]


def automatic_steps(
    segmenter: Segmenter,
    session: ImageSession,
    settings: AutoMaskSettings,
    vocabulary: Vocabulary,
    painting: Painting,
    progress: ProgressCallback,
    method: str,
) -> Iterator[AutomaticStep]:
    """``Segmenter.segment_automatic_steps`` on checked arguments. The session is held
    in the store while the steps run (``SessionStore.hold``), and its masks entry is
    claimed: a request for the same masks meanwhile waits for the last step's
    (``ImageSession.claim``)."""
    segmenter.text_embeddings(with_others(vocabulary), within(progress, 0.0, 0.05))
    total = settings.points_per_side**2
    with segmenter.held(session) as session:
        with session.claim("masks", segmenter._mask_key(settings)) as slot:
            if not slot.found:  # nobody made these masks: make them here, a step at a time
                slot.value = yield from mask_steps(segmenter, session, settings, vocabulary, painting, progress, method)
        if not slot.found:
            segmenter.store.update(session)
            segmenter._count("mask_generations")
        result = segmenter._automatic(session, settings, vocabulary, painting, progress, method)
    yield AutomaticStep(total, total, result)


def mask_steps(
    segmenter: Segmenter,
    session: ImageSession,
    settings: AutoMaskSettings,
    vocabulary: Vocabulary,
    painting: Painting,
    progress: ProgressCallback,
    method: str,
) -> Generator[AutomaticStep, None, MaskSet]:
    """Yields the results of the steps before the last; returns the last step's masks,
    largest first (what ``Segmenter.automatic_masks`` keeps). The segmenter's lock is
    held for each step's work, never across a yield."""
    cache = segmenter.sam_embedding(session, progress)
    segmenter.clip_features(session)  # both encodings before the slow part
    frame, classes = segmenter.frame(session), with_others(vocabulary)
    generator = MaskGenerator(segmenter.models.sam2, **settings.generator_args)
    steps = generator.generate_steps(session.image, frame.work_hw, cache, within(progress, 0.1, 0.7))
    total = settings.points_per_side**2
    known = _KnownProbabilities(len(classes), segmenter.device)
    while True:
        with segmenter.lock, torch.inference_mode(), segmenter.autocast():
            done, found, ids = next(steps)
            order = frame.largest_first(found.masks)  # smaller masks are painted over larger
        found, ids = found.select(order), ids[order]
        if done == total:
            return found
        fraction = 0.1 + 0.6 * done / total
        named = within(progress, fraction, fraction)
        new = known.missing(ids)
        if len(new):
            probs = segmenter.mask_probabilities(session, found.masks[new], classes, named, method, step=True)
            known.add(ids[new], probs)
        yield AutomaticStep(done, total, assemble(frame, found, known.of(ids), vocabulary, painting))
