"""The demo's semantic map (against loops written here), "others" for one-class
vocabularies, and the semantic map as the default automatic mode."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from maskadapter import semantic_map
from maskadapter.export import segments_to_dict
from maskadapter.masks import AutoMaskSettings
from maskadapter.segmenter import MaskSet
from maskadapter.service import SegmentationService
from maskadapter.vocabulary import build_vocabulary


def _loops(masks: np.ndarray, probs: np.ndarray, granularity: float) -> np.ndarray:
    """The construction, pixel by pixel: keep masks, sum kept rows, argmax, -1 if uncovered."""
    n, h, w = masks.shape
    c = probs.shape[1]
    kept = []
    for i in range(n):
        if any(probs[i, k] >= granularity * max(probs[j, k] for j in range(n)) for k in range(c)):
            kept.append(i)
    out = np.full((h, w), -1, dtype=np.int32)
    for y in range(h):
        for x in range(w):
            covering = [i for i in kept if masks[i, y, x]]
            if covering:
                sums = [sum(float(probs[i, k]) for i in covering) for k in range(c)]
                out[y, x] = int(np.argmax(sums))
    return out


@pytest.mark.parametrize("granularity", [0.5, 0.8, 1.0])
@pytest.mark.parametrize("seed", [0, 1])
def test_semantic_map_equals_the_construction(granularity, seed):
    rng = np.random.default_rng(seed)
    n, h, w, c = 30, 24, 31, 7
    masks = np.zeros((n, h, w), dtype=bool)
    for i in range(n):  # rectangles of all sizes, overlapping
        y0, x0 = rng.integers(0, h - 2), rng.integers(0, w - 2)
        masks[i, y0 : y0 + rng.integers(1, h), x0 : x0 + rng.integers(1, w)] = True
    masks[3] = rng.random((h, w)) < 0.3  # a ragged one
    masks[5] = False  # an empty one
    logits = rng.normal(size=(n, c)) * 2
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    got = semantic_map(masks, probs, granularity)
    assert got.dtype == np.int32 and got.shape == (h, w)
    np.testing.assert_array_equal(got, _loops(masks, probs, granularity))
    assert (got == -1).any() or granularity < 1.0
    assert len(np.unique(got[got >= 0])) >= 2


def test_semantic_map_refuses_mismatched_inputs():
    from maskadapter.errors import InputError

    with pytest.raises(InputError, match="same N"):
        semantic_map(np.zeros((2, 4, 4), bool), np.ones((3, 5)), 0.8)
    with pytest.raises(InputError, match="granularity"):
        semantic_map(np.zeros((2, 4, 4), bool), np.ones((2, 5)), 0.0)


# ---------------------------------------------------------------------------- "others"


def _controlled(segmenter, monkeypatch, probs: list[list[float]]):
    """Three masks of a 40x60 image (left, middle, right bands) and their probabilities;
    returns what the classifier was asked to classify."""
    h, w = 40, 60
    masks = torch.zeros(3, h, w, dtype=torch.bool)
    masks[0, :, :20], masks[1, :, 20:40], masks[2, :, 40:] = True, True, True
    found = MaskSet(
        masks=masks,
        iou=torch.full((3,), 0.9),
        stability=torch.full((3,), 0.95),
        areas=masks.flatten(1).sum(1),
        boxes=torch.tensor([[0, 0, 20, 40], [20, 0, 40, 40], [40, 0, 60, 40]]),
    )
    asked = []

    def probabilities(session, m, vocabulary, progress=None, method="adapter"):
        asked.append(vocabulary.labels)
        return torch.tensor(probs, dtype=torch.float32)

    monkeypatch.setattr(segmenter, "automatic_masks", lambda session, settings, progress=None: found)
    monkeypatch.setattr(segmenter, "mask_probabilities", probabilities)
    return asked


@pytest.mark.parametrize("mode", ["semantic", "per_mask"])
def test_one_class_vocabulary_gets_others_that_labels_nothing(segmenter, monkeypatch, mode):
    from maskadapter.render import overlay

    image = np.full((40, 60, 3), 128, dtype=np.uint8)
    # cat wins the left band, "others" the middle one, the right one is cat again but weakly
    asked = _controlled(segmenter, monkeypatch, [[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    result = segmenter.segment_automatic(image, build_vocabulary("cat"), AutoMaskSettings(), mode=mode)
    assert asked == [["cat", "others"]]
    assert result.labels == ["cat"]
    label_map = result.label_map
    assert (label_map[:, 20:40] == -1).all()  # pixels "others" wins stay unlabelled
    assert (label_map[:, :20] == 0).all()
    if mode == "semantic":  # kept: masks 0 (best for cat) ... mask 2 scores 0.6 < 0.8 x 0.9
        assert (label_map[:, 40:] == -1).all()
        assert [s.label for s in result.segments] == ["cat"]
    else:
        assert (label_map[:, 40:] == 0).all()
        assert [s.label for s in result.segments] == ["cat", "cat"]
    for seg in result.segments:
        assert [label for label, _ in seg.top5] == ["cat"]
    text = json.dumps(segments_to_dict(result))
    assert "others" not in text
    picture = overlay(image, result)
    assert picture.shape[1] == 60  # drawn with a legend of "cat" only (no exception, no "others")

    # a vocabulary of two classes gets no extra class
    asked.clear()
    monkeypatch.setattr(
        segmenter,
        "mask_probabilities",
        lambda s, m, v, p=None, method=None: asked.append(v.labels) or torch.full((3, 2), 0.5),
    )
    segmenter.segment_automatic(image, build_vocabulary("cat, dog"), AutoMaskSettings(), mode=mode)
    assert asked == [["cat", "dog"]]


def test_others_is_a_real_text_class(segmenter, image):
    """Without controlled probabilities: "others" is encoded from the same templates and
    takes part in the softmax (the single class no longer has probability 1)."""
    result = segmenter.segment_automatic(
        image, build_vocabulary("cat"), AutoMaskSettings(points_per_side=4, pred_iou_thresh=0, stability_score_thresh=0)
    )
    assert result.mode == "semantic"  # the default
    assert result.labels == ["cat"]
    assert all(0.0 < s.score < 1.0 for s in result.segments)
    embeddings, class_index = segmenter.text_embeddings(build_vocabulary("cat, others"))
    assert len(embeddings) == 2


def test_default_mode_is_the_semantic_map(tmp_path):
    import inspect

    from maskadapter.__main__ import build_parser
    from maskadapter.segmenter import Segmenter

    assert inspect.signature(Segmenter.segment_automatic).parameters["mode"].default == "semantic"
    assert inspect.signature(SegmentationService.automatic).parameters["mode"].default == "semantic"
    args = build_parser().parse_args(["x.png", "--vocab", "cat", "--out", str(tmp_path)])
    assert args.mode == "semantic"


# ---------------------------------------------------------------------------- Mask-Adapter vs mask pooling


def test_compare_classifies_the_same_masks_two_ways(segmenter, image, synthetic_sam):
    vocabulary = build_vocabulary("cat, wall, floor, table")
    settings = AutoMaskSettings(points_per_side=6)
    found = segmenter.compare(image, vocabulary, settings)
    assert segmenter.stats["mask_generations"] == 1 and segmenter.stats["clip_image_encodings"] == 1
    assert found.adapter.mode == found.pooling.mode == "semantic"
    session = segmenter.session(image)
    masks = segmenter.automatic_masks(session, settings).masks
    adapter = segmenter.mask_probabilities(session, masks, vocabulary, method="adapter")
    pooling = segmenter.mask_probabilities(session, masks, vocabulary, method="pooling")
    assert found.masks == len(masks) > 3
    changed = sum(int(a.argmax()) != int(b.argmax()) for a, b in zip(adapter, pooling, strict=True))
    assert found.changed == changed
    # each side is what segment_automatic gives with that method
    for method, result in (("adapter", found.adapter), ("pooling", found.pooling)):
        again = segmenter.segment_automatic(session, vocabulary, settings, method=method)
        np.testing.assert_array_equal(again.label_map, result.label_map)
    assert not np.array_equal(adapter.numpy(), pooling.numpy())
    assert segmenter.stats["mask_generations"] == 1  # nothing was computed twice


def test_cli_compare_writes_both_pictures(tmp_path):
    import subprocess
    import sys

    from conftest import ROOT, small_image
    from PIL import Image

    Image.fromarray(small_image("coffee.png", 120)).save(tmp_path / "coffee.png")
    out = tmp_path / "out"
    args = ["--vocab", "cup, table, saucer", "--out", str(out), "--tiny-random", "--compare"]
    args += ["--points-per-side", "4", "--pred-iou-thresh", "0", "--stability-score-thresh", "0"]
    env = {**__import__("os").environ, "MASKADAPTER_CACHE_DIR": str(tmp_path / "cache")}
    run = subprocess.run(
        [sys.executable, "-m", "maskadapter", str(tmp_path / "coffee.png"), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    changed = __import__("re").search(r"(\d+) of (\d+) (masks?) changed label with plain mask pooling", run.stdout)
    assert changed and changed.group(3) == ("mask" if changed.group(2) == "1" else "masks")  # plural
    side = Image.open(out / "coffee_compare.png")
    single = Image.open(out / "coffee_overlay.png")
    assert side.width > 2 * single.width and side.height > single.height  # two pictures under titles
    pooling = json.loads((out / "coffee_pooling_segments.json").read_text())
    assert pooling["labels"] == ["cup", "table", "saucer"]


@pytest.mark.parametrize("mode", ["semantic", "per_mask"])
def test_no_mask_gives_an_empty_result(segmenter, image, mode):
    """Random weights with the demo's filters: SAM-2 keeps no mask; nothing is labelled."""
    strict = AutoMaskSettings(points_per_side=4, pred_iou_thresh=0.999, stability_score_thresh=0.999)
    result = segmenter.segment_automatic(image, build_vocabulary("cat, wall"), strict, mode=mode)
    assert result.segments == [] and (result.label_map == -1).all()
    assert result.label_map.shape == image.shape[:2]
    assert segments_to_dict(result)["segments"] == []
