"""End to end on the tiny models: photo -> SAM-2 masks -> segments -> overlay and JSON."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from maskadapter.engine.mask_settings import AutoMaskSettings
from maskadapter.engine.segmenter import Segmenter
from maskadapter.engine.session import ImageSession
from maskadapter.engine.transforms import ImageTransform
from maskadapter.engine.vocabulary import build_vocabulary
from maskadapter.errors import InputError, VocabularyError
from maskadapter.output.export import decode_rle, label_map_image, save_label_map, segments_json, segments_to_dict
from maskadapter.output.render import class_colors, overlay

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
    _check_segments(result, image, voc)
    # semantic mode: exactly one segment per class in the label map, its pixels those of the class
    present = sorted(int(c) for c in np.unique(result.label_map) if c >= 0)
    assert present and sorted(s.class_id for s in result.segments) == present
    for seg in result.segments:
        np.testing.assert_array_equal(seg.mask, result.label_map == seg.class_id)
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
    _check_segments(per_mask, image, voc)
    # one segment per mask (no score threshold, no "others"), in the masks' order, each
    # labelled with its most probable class
    found = segmenter.automatic_masks(session, AutoMaskSettings(points_per_side=8))  # kept in the session
    probs = segmenter.mask_probabilities(session, found.masks, voc)
    assert len(found.masks) > 5  # the demo's default filters let varied masks through
    assert len(per_mask.segments) == len(found.masks)
    for seg, mask, row in zip(per_mask.segments, found.masks.numpy(), probs, strict=True):
        np.testing.assert_array_equal(seg.mask, mask)
        assert seg.class_id == int(row.argmax()) and seg.score == pytest.approx(float(row.max()), abs=1e-6)
    # smaller masks are painted over larger ones: every segment's last pixel shows its class
    areas = [s.area for s in per_mask.segments]
    assert areas == sorted(areas, reverse=True)
    smallest = per_mask.segments[-1]
    assert (per_mask.label_map[smallest.mask] == smallest.class_id).all()

    semantic = segmenter.segment_automatic(session, voc, AutoMaskSettings(points_per_side=8))  # the default
    assert semantic.mode == "semantic"
    _check_segments(semantic, image, voc)
    np.testing.assert_array_equal(semantic.label_map, demo_semantic_map(found.masks, probs, 0.8))
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


def test_segments_made_in_a_smaller_working_frame_are_at_the_original_size(tiny_models, image, synthetic_sam, tmp_path):
    """Masks made in a working frame smaller than the image (``mask_side`` 97): the
    masks' ``MaskSet`` is in that frame, largest first in original pixels; segments,
    areas and boxes come back at the original size, in both modes and for points."""
    transform = ImageTransform(short_side=224, max_size=320)
    small = Segmenter(tiny_models, "cpu", transform, str(tmp_path / "cache"), mask_side=97)
    voc, settings = build_vocabulary(VOCAB), AutoMaskSettings(points_per_side=8)
    session = small.session(image)
    frame = small.frame(session)
    assert max(frame.work_hw) == 97 and frame.orig_hw == image.shape[:2]
    for mode in ("semantic", "per_mask"):
        result = small.segment_automatic(session, voc, settings, mode)
        assert result.segments
        _check_segments(result, image, voc)
    found = small.automatic_masks(session, settings)
    assert tuple(found.masks.shape[1:]) == frame.work_hw
    assert found.areas.tolist() == found.masks.flatten(1).sum(1).tolist()  # working-frame pixels
    original = frame.areas(found.masks).tolist()
    assert original == sorted(original, reverse=True)
    assert [s.area for s in result.segments] == original  # per_mask: one segment per mask, in their order
    h, w = image.shape[:2]
    clicked = small.segment_points(session, [[w / 2, h / 2, 1]], voc)
    _check_segments(clicked, image, voc)


def demo_semantic_map(masks, probs, granularity: float) -> np.ndarray:
    """The Mask-Adapter demo's semantic map (OVSeg's SAM visualisation), written from it:
    below granularity 1 a mask is selected when its probability for some class exceeds
    granularity x that class's best; at 1, the best mask of each class. Selected masks
    add their probability rows per pixel; each pixel takes the argmax, and -1 where the
    first class's sum is 0 (no selected mask)."""
    masks = torch.as_tensor(np.asarray(masks)).to(torch.float64)
    probs = torch.as_tensor(np.asarray(probs)).to(torch.float64)
    if granularity < 1:
        selected = (probs > granularity * probs.max(0).values).any(1)
    else:
        selected = torch.zeros(len(probs), dtype=torch.bool)
        selected[probs.max(0).indices] = True
    semseg = torch.einsum("qc,qhw->chw", torch.where(selected[:, None], probs, 0.0), masks)
    labels = semseg.argmax(0)
    labels[semseg[0] == 0] = -1
    return labels.numpy().astype(np.int32)


def test_semantic_granularity_keeps_fewer_masks_when_higher(segmenter, image, synthetic_sam):
    voc = build_vocabulary(VOCAB)
    session = ImageSession.from_image(image)
    settings = AutoMaskSettings(points_per_side=8)
    loose = segmenter.segment_automatic(session, voc, settings, "semantic", granularity=0.0)
    tight = segmenter.segment_automatic(session, voc, settings, "semantic", granularity=1.0)
    found = segmenter.automatic_masks(session, settings)  # kept in the session
    masks = found.masks.numpy()
    probs = segmenter.mask_probabilities(session, found.masks, voc)
    # granularity 0 keeps every mask: every pixel of a mask is labelled
    np.testing.assert_array_equal(loose.label_map >= 0, masks.any(0))
    np.testing.assert_array_equal(loose.label_map, demo_semantic_map(masks, probs, 0.0))
    # granularity 1 keeps only the best mask of each class
    best = sorted(set(probs.argmax(0).tolist()))
    assert len(best) < len(masks)
    np.testing.assert_array_equal(tight.label_map >= 0, masks[best].any(0))
    np.testing.assert_array_equal(tight.label_map, demo_semantic_map(masks, probs, 1.0))
    assert (tight.label_map >= 0).sum() < (loose.label_map >= 0).sum()


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


@pytest.mark.parametrize("precision", ["float32", "bf16"])
def test_points_with_real_tiny_sam(tiny_models, image, tmp_path, precision):
    """A click through the segmenter gives sam2's own predictor's mask, pixel for pixel,
    in the precision stated (bf16 forced: sam2's predictor then runs under the same
    autocast), so this holds on CPUs with and without native bf16."""
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    transform = ImageTransform(short_side=224, max_size=320)
    segmenter = Segmenter(tiny_models, "cpu", transform, str(tmp_path / "cache"), precision=precision)
    voc = build_vocabulary(VOCAB)
    result = segmenter.segment_points(image, [[80, 50, 1], [10, 10, 0]], voc)
    _check_segments(result, image, voc)
    # sam2's own predictor on the same points: two points ask for one mask
    predictor = SAM2ImagePredictor(segmenter.models.sam2)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        predictor.set_image(image)
        coords, labels = np.array([[80, 50], [10, 10]], np.float32), np.array([1, 0])
        masks, ious, _ = predictor.predict(point_coords=coords, point_labels=labels, multimask_output=False)
    expected = masks[0] > 0
    assert expected.any()  # so one segment: its mask is sam2's, pixel for pixel
    assert len(result.segments) == 1
    np.testing.assert_array_equal(result.segments[0].mask, expected)
    np.testing.assert_array_equal(result.label_map >= 0, expected)
    assert result.segments[0].sam_iou == pytest.approx(float(ious[0]), abs=1e-6)


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


# ViLD's prompt templates, as FC-CLIP and Mask-Adapter use them
VILD_PROMPTS = (
    "a photo of a {}.",
    "This is a photo of a {}",
    "There is a {} in the scene",
    "There is the {} in the scene",
    "a photo of a {} in the scene",
    "a photo of a small {}.",
    "a photo of a medium {}.",
    "a photo of a large {}.",
    "This is a photo of a small {}.",
    "This is a photo of a medium {}.",
    "This is a photo of a large {}.",
    "There is a small {} in the scene.",
    "There is a medium {} in the scene.",
    "There is a large {} in the scene.",
)


def _reference_text(models, classes) -> tuple[torch.Tensor, list[int]]:
    """Text rows written from FC-CLIP's recipe: every synonym in every VILD template
    through open_clip's tokenizer and ``encode_text``, each prompt normalised, the
    mean over templates normalised again. Returns (K, D) rows and the class of each."""
    rows, owners = [], []
    for c, synonyms in enumerate(classes):
        for name in synonyms:
            tokens = models.tokenizer([t.format(name) for t in VILD_PROMPTS])
            per_prompt = models.clip.encode_text(tokens).float()
            per_prompt = per_prompt / per_prompt.norm(dim=-1, keepdim=True)
            mean = per_prompt.mean(0)
            rows.append(mean / mean.norm())
            owners.append(c)
    return torch.stack(rows), owners


def _reference_probabilities(models, image, masks, classes, method):
    """(N, C) class probabilities of (N, H, W) masks of a (106, 160) image, from the
    spec, with plain torch ops and the models' own layers.

    CLIP frame (short side 224, long side at most 320): scale min(224 / 106, 320 / 160)
    = 2, so 212 x 320, padded to 224 x 320. The masks are enlarged exactly 2x, where
    bilinear coverage (weights 0.75 / 0.25 per axis, 0.5625 on the nearest pixel)
    thresholded at 0.5 equals the nearest mask pixel: each pixel becomes a 2 x 2 block.
    CLIP's trunk gives (C, 7, 10) raw features; dense features are the trunk head's
    channel LayerNorm and the projection head at every position.

    adapter: the head's maps over the 7 x 10 grid, softmax over positions of
    log-sigmoid(map), the raw features pooled with those weights, each pooled vector
    through the LayerNorm and the projection head, the mean over the maps.
    pooling: each CLIP-frame mask resized bilinearly to 7 x 10 (align_corners False:
    cell (i, j) reads rows 32i+15, 32i+16 and columns 32j+15, 32j+16 with weight 1/4
    each) and binarised (> 0.5: 3 or 4 of those pixels), raw features averaged inside
    (a zero vector for an empty one), then the LayerNorm and the projection head.
    Logits: min(exp(logit_scale), 100) x cosine with the text rows, max over a class's
    synonyms; softmax over classes.
    """
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    assert image.shape == (106, 160, 3)
    visual, trunk = models.clip.visual, models.clip.visual.trunk
    resized = np.asarray(Image.fromarray(image).resize((320, 212), Image.BILINEAR), dtype=np.float32)
    mean, std = np.array(OPENAI_DATASET_MEAN) * 255, np.array(OPENAI_DATASET_STD) * 255
    x = torch.zeros(1, 3, 224, 320)
    x[0, :, :212] = torch.from_numpy(((resized - mean) / std).astype(np.float32)).permute(2, 0, 1)
    frame = torch.zeros(len(masks), 224, 320)
    frame[:, :212] = torch.from_numpy(np.repeat(np.repeat(masks, 2, axis=1), 2, axis=2)).float()

    def norm_and_project(v: torch.Tensor) -> torch.Tensor:  # (..., C) -> (..., D)
        ln = trunk.head.norm
        return visual.head(F.layer_norm(v, v.shape[-1:], ln.weight, ln.bias, ln.eps))

    raw = trunk.forward_features(x)[0]  # (C, 7, 10)
    assert raw.shape[1:] == (7, 10)
    flat = raw.flatten(1).T  # (70, C)
    if method == "adapter":
        dense = norm_and_project(raw.permute(1, 2, 0)).permute(2, 0, 1)  # (D, 7, 10)
        maps = models.adapter(dense[None], frame[None])[0]  # (N * M, 7, 10)
        m = models.adapter.num_output_maps
        weights = torch.log(torch.sigmoid(maps.flatten(1))).softmax(-1)  # (N * M, 70)
        emb = norm_and_project(weights @ flat).reshape(len(masks), m, -1).mean(1)
    else:
        taps = [15, 16]
        rows = torch.tensor([32 * i + t for i in range(7) for t in taps])
        cols = torch.tensor([32 * j + t for j in range(10) for t in taps])
        blocks = frame[:, rows][:, :, cols].reshape(len(masks), 7, 2, 10, 2)
        inside = (blocks.sum((2, 4)) >= 3).float().flatten(1)  # (N, 70)
        emb = norm_and_project((inside @ flat) / inside.sum(1, keepdim=True).clamp(min=1))
    text, owners = _reference_text(models, classes)
    scale = min(float(models.clip.logit_scale.exp()), 100.0)
    sims = scale * (emb / emb.norm(dim=-1, keepdim=True)) @ text.T  # (N, K)
    owners = torch.tensor(owners)
    logits = torch.stack([sims[:, owners == c].max(1).values for c in range(len(classes))], 1)
    return logits.softmax(-1)


def test_probabilities_equal_a_recomputation_from_the_spec(segmenter, image):
    voc = build_vocabulary(VOCAB)
    session = segmenter.session(image)
    h, w = session.hw
    masks = np.zeros((4, h, w), bool)
    masks[0, : h // 2] = True
    masks[1, 20:60, 40:120] = True
    masks[2, 5:8, 5:8] = True  # vanishes at the features' resolution (one of 4 pixels of cell (0, 0))
    masks[3, :, w // 3 :] = True
    adapter = segmenter.mask_probabilities(session, masks, voc)
    encodings = segmenter.stats["clip_image_encodings"]
    pooling = segmenter.mask_probabilities(session, masks, voc, method="pooling")
    assert segmenter.stats["clip_image_encodings"] == encodings == 1  # the cached features serve both
    assert segmenter.stats["pooling_runs"] == segmenter.stats["adapter_runs"] == 1
    with torch.no_grad():
        want_adapter = _reference_probabilities(segmenter.models, image, masks, voc.classes, "adapter")
        want_pooling = _reference_probabilities(segmenter.models, image, masks, voc.classes, "pooling")
    for got, want in ((adapter, want_adapter), (pooling, want_pooling)):
        assert got.shape == (4, len(voc)) and got.dtype == torch.float32
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    assert (pooling - adapter).abs().max() > 1e-4  # another method, other probabilities
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

    from maskadapter.engine import segmenter as segmenter_module
    from maskadapter.engine.mask_settings import default_mask_settings

    opened = AutoMaskSettings(pred_iou_thresh=0.0, stability_score_thresh=0.0)
    assert default_mask_settings(real_weights=False) == opened
    assert default_mask_settings(real_weights=True) == AutoMaskSettings()
    assert not segmenter.real_weights and segmenter.default_mask_settings() == opened
    small_grid = dataclasses.replace(opened, points_per_side=4)  # the test's speed only
    monkeypatch.setattr(segmenter_module, "default_mask_settings", lambda real_weights: small_grid)
    session = ImageSession.from_image(image)
    with caplog.at_level(logging.WARNING, logger="maskadapter.engine.segmenter"):
        result = segmenter.segment_automatic(session, build_vocabulary(VOCAB))
        segmenter.compare(session, build_vocabulary("dog, sky"))
    # the defaults are exactly small_grid: the same masks and picture as when it is given
    explicit = segmenter.segment_automatic(session, build_vocabulary(VOCAB), small_grid)
    np.testing.assert_array_equal(result.label_map, explicit.label_map)
    assert len(result.segments) == len(explicit.segments) >= 1
    assert all(key[1] == small_grid for key in segmenter.store.get(session.key).masks)
    assert sum("quality filters are opened" in r.getMessage() for r in caplog.records) == 1


def test_each_request_hashes_the_photo_once(segmenter, image, monkeypatch):
    """The photo's pixels are hashed (its session key) once per request, not again by
    SAM-2's predictor or the mask generator."""
    import hashlib

    real, hashed = hashlib.sha1, []

    def counting(data=b"", *args, **kwargs):
        hashed.append(memoryview(data).nbytes)
        return real(data, *args, **kwargs)

    monkeypatch.setattr(hashlib, "sha1", counting)
    vocabulary, settings = build_vocabulary(VOCAB), AutoMaskSettings(points_per_side=4)
    requests = [
        lambda: segmenter.segment_points(image, [[80, 50, 1]], vocabulary),
        lambda: segmenter.segment_automatic(image, vocabulary, settings),
        lambda: list(segmenter.segment_automatic_steps(image, vocabulary, settings)),
        lambda: segmenter.compare(image, vocabulary, settings),
        lambda: segmenter.segment_points(image, [[20, 30, 1], [90, 60, 0]], vocabulary),
    ]
    for request in requests:
        hashed.clear()
        request()
        assert hashed.count(image.nbytes) == 1
