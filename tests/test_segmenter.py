"""End to end on the tiny models: photo -> SAM-2 masks -> segments -> overlay and JSON."""

import json

import numpy as np
import pytest
from PIL import Image

from maskadapter.errors import InputError, VocabularyError
from maskadapter.export import decode_rle, label_map_image, save_label_map, segments_json, segments_to_dict
from maskadapter.masks import AutoMaskSettings
from maskadapter.render import class_colors, overlay
from maskadapter.segmenter import ImageSession
from maskadapter.vocabulary import build_vocabulary

VOCAB = "cat | kitten, table | desk, cup, wall, floor | ground"
# SAM-2 with random weights predicts low quality, so its filters are opened up
OPEN_FILTERS = AutoMaskSettings(points_per_side=8, pred_iou_thresh=0.0, stability_score_thresh=0.0)


def _check_segments(result, image, vocabulary):
    h, w = image.shape[:2]
    assert result.image_size == (h, w)
    assert result.label_map.shape == (h, w) and result.label_map.dtype == np.int32
    assert result.labels == vocabulary.labels
    for seg in result.segments:
        assert seg.mask.shape == (h, w) and seg.mask.dtype == bool
        assert seg.area == int(seg.mask.sum()) > 0
        assert seg.label in vocabulary.labels and vocabulary.labels[seg.class_id] == seg.label
        assert 0.0 <= seg.score <= 1.0
        assert len(seg.top5) == min(5, len(vocabulary)) and seg.top5[0][0] == seg.label
        assert [s for _, s in seg.top5] == sorted((s for _, s in seg.top5), reverse=True)
        x0, y0, x1, y1 = seg.box
        assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
        ys, xs = np.nonzero(seg.mask)
        assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == seg.box


def test_automatic_end_to_end_with_real_tiny_sam(segmenter, image, tmp_path):
    voc = build_vocabulary(VOCAB)
    result = segmenter.segment_automatic(image, voc, OPEN_FILTERS)
    assert len(result.segments) >= 1
    _check_segments(result, image, voc)
    picture = overlay(image, result, alpha=0.6)
    assert picture.dtype == np.uint8 and picture.shape[1:] == image.shape[1:]
    assert picture.shape[0] > image.shape[0]  # legend below
    assert not np.array_equal(picture[: image.shape[0]], image)
    data = json.loads(segments_json(result, "chelsea.png"))
    assert data["image"] == {"width": image.shape[1], "height": image.shape[0], "file": "chelsea.png"}
    for seg, entry in zip(result.segments, data["segments"], strict=True):
        np.testing.assert_array_equal(decode_rle(entry["segmentation"]), seg.mask)


def test_automatic_varied_masks_per_mask_and_semantic(segmenter, image, synthetic_sam):
    voc = build_vocabulary(VOCAB)
    session = ImageSession.from_image(image)
    per_mask = segmenter.segment_automatic(session, voc, AutoMaskSettings(points_per_side=8), mode="per_mask")
    assert len(per_mask.segments) > 5  # the demo's default filters let varied masks through
    _check_segments(per_mask, image, voc)
    # smaller masks are painted over larger ones: every segment's last pixel shows its class
    areas = [s.area for s in per_mask.segments]
    assert areas == sorted(areas, reverse=True)
    smallest = per_mask.segments[-1]
    assert (per_mask.label_map[smallest.mask] == smallest.class_id).all()

    semantic = segmenter.segment_automatic(session, voc, AutoMaskSettings(points_per_side=8))  # the default
    assert semantic.mode == "semantic"
    _check_segments(semantic, image, voc)
    assert len({s.class_id for s in semantic.segments}) == len(semantic.segments)  # one per class
    for seg in semantic.segments:
        np.testing.assert_array_equal(seg.mask, semantic.label_map == seg.class_id)
    union = np.any([s.mask for s in per_mask.segments], axis=0)
    assert ((semantic.label_map >= 0) <= union).all()  # nothing outside the masks is labelled

    for mode in ("semantic", "per_mask"):
        strict = segmenter.segment_automatic(
            session, voc, AutoMaskSettings(points_per_side=8), mode, score_threshold=0.999
        )
        assert strict.segments == [] and (strict.label_map == -1).all()
    # the image was encoded once by each model for all three runs
    assert segmenter.stats["sam_image_encodings"] == 1
    assert segmenter.stats["clip_image_encodings"] == 1


def test_semantic_granularity_keeps_fewer_masks_when_higher(segmenter, image, synthetic_sam):
    voc = build_vocabulary(VOCAB)
    session = ImageSession.from_image(image)
    loose = segmenter.segment_automatic(session, voc, AutoMaskSettings(points_per_side=8), "semantic", granularity=0.0)
    tight = segmenter.segment_automatic(session, voc, AutoMaskSettings(points_per_side=8), "semantic", granularity=1.0)
    assert (loose.label_map >= 0).sum() >= (tight.label_map >= 0).sum()


def test_points_give_one_labelled_mask(segmenter, image, synthetic_sam):
    voc = build_vocabulary(VOCAB)
    session = ImageSession.from_image(image)
    result = segmenter.segment_points(session, [[80, 50, 1], [20, 20, 0]], voc)
    assert len(result.segments) == 1
    _check_segments(result, image, voc)
    seg = result.segments[0]
    assert seg.mask[50, 80]  # the disc around the positive point
    np.testing.assert_array_equal(result.label_map >= 0, seg.mask)
    # a second click and a new vocabulary on the same image reuse both encodings
    segmenter.segment_points(session, [[80, 50, 1], [100, 60, 1]], voc)
    segmenter.segment_points(session, [[80, 50, 1]], build_vocabulary("dog, sofa"), box=[40, 20, 140, 90])
    assert segmenter.stats["sam_image_encodings"] == 1
    assert segmenter.stats["clip_image_encodings"] == 1


def test_points_with_real_tiny_sam(segmenter, image):
    voc = build_vocabulary(VOCAB)
    result = segmenter.segment_points(image, [[80, 50, 1], [10, 10, 0]], voc)
    assert len(result.segments) <= 1
    _check_segments(result, image, voc)


def test_bad_input_is_reported(segmenter, image):
    voc = build_vocabulary("cat")
    with pytest.raises(InputError, match="outside"):
        segmenter.segment_points(image, [[500, 5, 1]], voc)
    with pytest.raises(InputError, match="no image"):
        segmenter.segment_points(None, [[5, 5, 1]], voc)
    with pytest.raises(InputError, match="mode"):
        segmenter.segment_automatic(image, voc, mode="panoptic")
    with pytest.raises(InputError, match="granularity"):
        segmenter.segment_automatic(image, voc, granularity=1.5)
    with pytest.raises(InputError, match="points per side"):
        AutoMaskSettings(points_per_side=0)
    with pytest.raises(VocabularyError):
        segmenter.vocabulary(" , ")


def test_exports(segmenter, image, synthetic_sam, tmp_path):
    voc = build_vocabulary(VOCAB)
    result = segmenter.segment_automatic(image, voc, AutoMaskSettings(points_per_side=8), mode="per_mask")
    path = save_label_map(result, tmp_path / "labels.png")
    with Image.open(path) as im:
        stored = np.asarray(im)
    np.testing.assert_array_equal(stored, label_map_image(result))
    np.testing.assert_array_equal(stored.astype(np.int32) - 1, result.label_map)
    data = segments_to_dict(result)
    assert data["labels"] == voc.labels and data["mode"] == "per_mask"
    for seg, entry in zip(result.segments, data["segments"], strict=True):
        assert entry["label"] == seg.label and entry["area"] == seg.area
        x, y, w, h = entry["bbox"]
        assert (x, y, x + w, y + h) == seg.box
        assert len(entry["top5"]) == 5
        from pycocotools import mask as mask_utils

        rle = dict(entry["segmentation"], counts=entry["segmentation"]["counts"].encode())
        assert int(mask_utils.area(rle)) == seg.area
        np.testing.assert_array_equal(mask_utils.decode(rle).astype(bool), seg.mask)


def test_class_colors_are_distinct():
    for n in (1, 5, 20, 21, 150, 362):
        colors = class_colors(n)
        assert colors.shape == (n, 3) and colors.dtype == np.uint8
        assert len({tuple(c) for c in colors}) == n


def test_pooling_probabilities_equal_mask_pooling_logits_from_scratch(segmenter, image):
    import torch

    import maskadapter

    voc = build_vocabulary(VOCAB)
    session = segmenter.session(image)
    h, w = session.hw
    masks = np.zeros((4, h, w), bool)
    masks[0, : h // 2] = True
    masks[1, 20:60, 40:120] = True
    masks[2, 5:8, 5:8] = True  # vanishes at the features' resolution
    masks[3, :, w // 3 :] = True
    adapter = segmenter.mask_probabilities(session, masks, voc)
    encodings = segmenter.stats["clip_image_encodings"]
    got = segmenter.mask_probabilities(session, masks, voc, method="pooling")
    assert segmenter.stats["clip_image_encodings"] == encodings == 1  # the cached features serve both
    assert segmenter.stats["pooling_runs"] == 1
    models = segmenter.models
    with torch.no_grad():
        x = segmenter.transform.image_to_tensor(image)
        m = segmenter.transform.masks_to_tensor(masks, image_hw=(h, w))
        text, class_index = maskadapter.encode_vocabulary(models.clip, models.tokenizer, list(voc.classes))
        want = maskadapter.mask_pooling_logits(models.clip, x, m, text, class_index)[0].softmax(-1)
    assert got.shape == (4, len(voc)) and got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    assert (got - adapter).abs().max() > 1e-4  # another method, other probabilities
    with pytest.raises(InputError, match="method"):
        segmenter.mask_probabilities(session, masks, voc, method="average")


@pytest.mark.parametrize("mode", ["semantic", "per_mask"])
def test_no_mask_passes_the_filters(segmenter, image, mode):
    """Filters nothing passes give an empty result, not an error."""
    voc = build_vocabulary("cat, dog")
    closed = AutoMaskSettings(points_per_side=4, pred_iou_thresh=1.0, stability_score_thresh=1.0)
    result = segmenter.segment_automatic(image, voc, closed, mode=mode)
    assert result.segments == []
    assert (result.label_map == -1).all() and result.label_map.shape == image.shape[:2]


def test_random_weights_open_the_quality_filters_by_default(segmenter, image, monkeypatch, caplog):
    """Random weights predict low quality everywhere: without mask settings the
    Python API opens SAM-2's filters (as the app and the CLI do) and says so once."""
    import dataclasses
    import logging

    from maskadapter import segmenter as segmenter_module
    from maskadapter.masks import default_mask_settings

    opened = AutoMaskSettings(pred_iou_thresh=0.0, stability_score_thresh=0.0)
    assert default_mask_settings(real_weights=False) == opened
    assert default_mask_settings(real_weights=True) == AutoMaskSettings()
    assert not segmenter.real_weights and segmenter.default_mask_settings() == opened
    small_grid = dataclasses.replace(opened, points_per_side=4)  # the test's speed only
    monkeypatch.setattr(segmenter_module, "default_mask_settings", lambda real_weights: small_grid)
    session = ImageSession.from_image(image)
    with caplog.at_level(logging.WARNING, logger="maskadapter.segmenter"):
        result = segmenter.segment_automatic(session, build_vocabulary(VOCAB))
        segmenter.compare(session, build_vocabulary("dog, sky"))
    assert len(result.segments) >= 1
    assert all(key[1] == small_grid for key in segmenter.store.get(session.key).masks)
    assert sum("quality filters are opened" in r.getMessage() for r in caplog.records) == 1
