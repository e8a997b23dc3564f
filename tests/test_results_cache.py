"""Sessions keep results: re-labelling and re-painting never call SAM-2 again; the
store is bounded; painting equals a straightforward per-mask recomputation."""

from __future__ import annotations

import numpy as np
import torch

from maskadapter.engine.mask_settings import AutoMaskSettings
from maskadapter.engine.painting import per_mask_label_map, semantic_label_map
from maskadapter.engine.session import SessionStore
from maskadapter.engine.vocabulary import build_vocabulary

GRID = AutoMaskSettings(points_per_side=8)


class Calls:
    def __init__(self, *modules) -> None:
        self.count = 0
        self.hooks = [m.register_forward_hook(self) for m in modules]

    def __call__(self, *args) -> None:
        self.count += 1

    def remove(self) -> None:
        for hook in self.hooks:
            hook.remove()


def test_relabel_and_repaint_make_no_sam2_calls(segmenter, image, synthetic_sam):
    sam = segmenter.models.sam2
    session = segmenter.session(image)
    first = segmenter.segment_automatic(session, build_vocabulary("cat, wall, floor"), GRID, "per_mask")
    assert len(first.segments) > 3
    encoder, decoder = Calls(sam.image_encoder), Calls(sam.sam_prompt_encoder)  # once per decoder call
    clip_stem = Calls(segmenter.models.clip.visual.trunk.stem)
    adapter = Calls(segmenter.models.adapter)
    try:
        relabelled = segmenter.segment_automatic(session, build_vocabulary("dog, sky, grass, table"), GRID, "per_mask")
        assert encoder.count == 0 and decoder.count == 0 and clip_stem.count == 0
        assert adapter.count > 0  # the adapter runs for the new vocabulary
        assert relabelled.labels == ["dog", "sky", "grass", "table"]
        adapter.count = 0
        for mode, threshold in (("semantic", 0.0), ("per_mask", 0.3)):
            segmenter.segment_automatic(
                session, build_vocabulary("dog, sky, grass, table"), GRID, mode, score_threshold=threshold
            )
        assert encoder.count == decoder.count == clip_stem.count == adapter.count == 0  # painting only
    finally:
        for calls in (encoder, decoder, clip_stem, adapter):
            calls.remove()
    # the same masks were labelled: per-mask segments keep their areas and boxes
    assert [s.area for s in relabelled.segments] == [s.area for s in first.segments]


def test_evicted_session_is_recomputed(segmenter, image, synthetic_sam):
    vocabulary = build_vocabulary("cat, wall")
    first = segmenter.segment_automatic(image, vocabulary, GRID)
    segmenter.store.budget_bytes = 1  # every other session goes at the next update
    segmenter.segment_automatic(image[::-1].copy(), vocabulary, GRID)
    assert len(segmenter.store) == 1 and segmenter.store.evictions >= 1
    again = segmenter.segment_automatic(image, vocabulary, GRID)
    np.testing.assert_array_equal(again.label_map, first.label_map)
    assert segmenter.stats["mask_generations"] == 3


def test_store_is_lru_with_a_byte_budget():
    store = SessionStore(budget_bytes=3 * 30_000 + 10)
    images = [np.full((100, 100, 3), v, np.uint8) for v in range(5)]
    sessions = [store.open(im) for im in images[:3]]
    assert len(store) == 3 and store.nbytes == 3 * 30_000
    store.get(sessions[0].key)  # now the most recent
    store.open(images[3])
    assert sessions[1].key not in store and sessions[0].key in store
    sessions[0].probs["x"] = torch.zeros(10_000, dtype=torch.float32)  # +40 kB
    store.update(sessions[0])
    assert sessions[0].key in store and store.nbytes <= store.budget_bytes
    big = store.open(np.zeros((400, 400, 3), np.uint8))  # alone over the budget: kept, others out
    assert list(store._sessions) == [big.key]


def _reference_per_mask(masks, class_ids):
    label = np.full(masks.shape[1:], -1)
    for m, c in zip(masks, class_ids, strict=True):  # later masks over earlier ones
        if c >= 0:
            label[m] = c
    return label


def _reference_semantic(masks, probs, granularity, extra):
    """Keep masks (a real class scores >= granularity x its best), sum the kept rows per
    pixel, take the argmax; uncovered pixels and pixels won by an extra class are -1."""
    probs = probs.astype(np.float64)
    c = probs.shape[1] - extra
    kept = [n for n in range(len(masks)) if (probs[n, :c] >= granularity * probs[:, :c].max(0)).any()]
    label = np.full(masks.shape[1:], -1)
    for y, x in np.ndindex(*masks.shape[1:]):
        rows = [probs[n] for n in kept if masks[n, y, x]]
        if rows:
            best = int(np.argmax(np.sum(rows, axis=0)))
            label[y, x] = best if best < c else -1
    return label


def test_painting_equals_a_loop_over_masks():
    rng = np.random.default_rng(0)
    for n, c in ((1, 1), (7, 3), (70, 12)):
        masks = rng.random((n, 23, 31)) < 0.3
        class_ids = rng.integers(-1, c, n)
        labels, winner = per_mask_label_map(torch.as_tensor(masks), torch.as_tensor(class_ids), chunk=4)
        np.testing.assert_array_equal(labels.numpy(), _reference_per_mask(masks, class_ids))
        probs = rng.dirichlet(np.ones(c), n).astype(np.float32)
        probs[rng.integers(0, n)] = probs[0]  # ties between masks
        for granularity, extra in ((0.0, 0), (0.8, 0), (1.0, 0), (0.5, 1 if c > 1 else 0)):
            got, _ = semantic_label_map(torch.as_tensor(masks), torch.as_tensor(probs), granularity, extra)
            np.testing.assert_array_equal(got.numpy(), _reference_semantic(masks, probs, granularity, extra))
