"""The demo's semantic map (against loops and the Mask-Adapter demo's construction
written here), "others" for one-class vocabularies, and the semantic map as the
default automatic mode."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from maskadapter import semantic_map
from maskadapter.engine.mask_set import MaskSet
from maskadapter.engine.mask_settings import AutoMaskSettings
from maskadapter.engine.painting import semantic_label_map
from maskadapter.engine.segmenter import Segmenter
from maskadapter.engine.vocabulary import build_vocabulary
from maskadapter.output.export import segments_to_dict
from maskadapter.service import SegmentationService


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
    masks, probs = (t.numpy() for t in _random_case(seed, 30, 24, 31, 7))
    h, w = masks.shape[1:]
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


def _demo(masks: torch.Tensor, probs: torch.Tensor, granularity: float, others: bool) -> torch.Tensor:
    """The Mask-Adapter demo's semantic map (OVSeg's ``SAMVisualizationDemo``), as it is
    written there: below granularity 1 the masks whose probability for some class is
    above granularity x the class's best are selected, at 1 the best mask of each class;
    with a last class "others" (a one-class vocabulary) its column selects nothing.
    semseg = einsum("qc,qhw->chw", selected rows, masks); each pixel takes the argmax,
    and is blank (-1 here, 255 there) where the first class's sum is 0. Where the demo
    then paints "others", the package leaves the pixel unlabelled: -1."""
    real = probs[:, :-1] if others else probs
    max_scores, best = real.max(0)
    if granularity < 1:
        selected = (real > granularity * max_scores).any(1)
    else:
        selected = torch.zeros(len(probs), dtype=torch.bool)
        selected[best] = True
    select_cls = torch.where(selected[:, None], probs, torch.zeros_like(probs))
    semseg = torch.einsum("qc,qhw->chw", select_cls, masks.to(probs.dtype))
    labels = semseg.argmax(0)
    labels[semseg[0] == 0] = -1
    if others:
        labels[labels == probs.shape[1] - 1] = -1
    return labels


def _random_case(seed: int, n: int, h: int, w: int, c: int) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, h, w), dtype=bool)
    for i in range(n):  # rectangles of all sizes, overlapping
        y0, x0 = rng.integers(0, h - 2), rng.integers(0, w - 2)
        masks[i, y0 : y0 + rng.integers(1, h), x0 : x0 + rng.integers(1, w)] = True
    masks[3] = rng.random((h, w)) < 0.3  # a ragged one
    masks[5] = False  # an empty one
    masks[:, -1, -1] = False  # a pixel no mask covers
    logits = rng.normal(size=(n, c)) * 2
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return torch.from_numpy(masks), torch.from_numpy(probs)


@pytest.mark.parametrize("granularity", [0.3, 0.8, 1.0])
@pytest.mark.parametrize("classes,others", [(6, False), (1, True)])
def test_semantic_label_map_equals_the_demos_construction(granularity, classes, others):
    masks, probs = _random_case(7, 60, 20, 27, classes + others)
    got, kept = semantic_label_map(masks, probs, granularity, extra_classes=int(others))
    want = _demo(masks, probs, granularity, others)
    assert got.shape == (20, 27) and len(kept) == 60
    np.testing.assert_array_equal(got.numpy(), want.numpy())
    # the kept masks are the demo's selection (no probability ties at the threshold here)
    real = probs[:, :classes]
    if granularity < 1:
        selected = (real > granularity * real.max(0).values).any(1)
    else:
        selected = torch.zeros(60, dtype=torch.bool)
        selected[real.max(0).indices] = True
    np.testing.assert_array_equal(kept.numpy(), selected.numpy())
    # the case is not trivial: labels and blanks both occur
    assert want[-1, -1] == -1 and (want >= 0).any()
    if classes > 1:
        assert len(torch.unique(want[want >= 0])) >= 2
    if granularity == 0.3:  # more than 24 kept masks: the sets are keyed in two steps
        assert int(selected.sum()) > 24
        if others:  # "others" wins some covered pixels, which stay unlabelled
            assert (masks[selected].any(0) & (want == -1)).any()


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
    from maskadapter.output.render import overlay

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


def test_others_is_a_real_text_class(segmenter, image, synthetic_sam):
    """Without controlled probabilities: "others" is encoded from the same templates and
    takes part in the softmax, so a one-class vocabulary is classified as the two-class
    vocabulary "<class>, others". With these random weights every mask scores about 0.81
    for "road" and 0.46 for "chair" against "others": road wins every mask, chair none."""
    session = segmenter.session(image)
    settings = AutoMaskSettings(points_per_side=4)
    masks = segmenter.automatic_masks(session, settings).masks
    assert len(masks) > 1

    road = segmenter.mask_probabilities(session, masks, build_vocabulary("road, others"))[:, 0]
    assert (road > 0.5).all()
    result = segmenter.segment_automatic(session, build_vocabulary("road"), settings)
    assert result.mode == "semantic"  # the default
    assert result.labels == ["road"]
    # one segment: every mask is kept (all score within 0.8 of the best) and road wins every pixel
    assert len(result.segments) == 1
    np.testing.assert_array_equal(result.label_map >= 0, masks.numpy().any(0))
    assert result.segments[0].score == pytest.approx(float(road.max()), abs=1e-6)
    assert result.segments[0].score < 1.0  # "others" took part in the softmax
    per_mask = segmenter.segment_automatic(session, build_vocabulary("road"), settings, "per_mask")
    assert [s.score for s in per_mask.segments] == pytest.approx(road.tolist(), abs=1e-6)

    chair = segmenter.mask_probabilities(session, masks, build_vocabulary("chair, others"))[:, 0]
    assert (chair < 0.5).all()
    for mode in ("semantic", "per_mask"):  # "others" wins every mask and every pixel: nothing is labelled
        result = segmenter.segment_automatic(session, build_vocabulary("chair"), settings, mode)
        assert result.segments == [] and (result.label_map == -1).all()
    embeddings, class_index = segmenter.text_embeddings(build_vocabulary("chair, others"))
    assert len(embeddings) == 2


def test_default_mode_is_the_semantic_map(segmenter, monkeypatch, tmp_path):
    """The Python API, the service and the command line without a mode paint the
    semantic map: with granularity 0.8, masks 0 (cat 0.9) and 1 (dog 0.8) are kept, mask
    2 (cat 0.6 < 0.72, dog 0.4 < 0.64) is not, so the right band stays unlabelled;
    one label per mask would paint it cat."""
    from PIL import Image

    import maskadapter.cli.label as cli
    from maskadapter.settings import Settings

    _controlled(segmenter, monkeypatch, [[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    image = np.full((40, 60, 3), 128, dtype=np.uint8)
    semantic = np.full((40, 60), -1, dtype=np.int32)
    semantic[:, :20], semantic[:, 20:40] = 0, 1
    per_mask = semantic.copy()
    per_mask[:, 40:] = 0
    vocabulary, settings = build_vocabulary("cat, dog"), AutoMaskSettings()

    result = segmenter.segment_automatic(image, vocabulary, settings)
    assert result.mode == "semantic"
    np.testing.assert_array_equal(result.label_map, semantic)
    np.testing.assert_array_equal(
        segmenter.segment_automatic(image, vocabulary, settings, "per_mask").label_map, per_mask
    )

    service = SegmentationService(Settings(tiny_random=True, device="cpu", cache_dir=str(tmp_path / "cache")))
    service.output_dir = tmp_path / "service"
    monkeypatch.setattr(service, "segmenter", lambda size, report=None: segmenter)
    for mode, expected in ((None, semantic), ("semantic", semantic), ("per_mask", per_mask)):
        extra = {} if mode is None else {"mode": mode}
        out, _ = service.automatic(image, "cat, dog", mask_settings=settings, **extra)
        assert out.segments["mode"] == (mode or "semantic")
        with Image.open(out.label_map_path) as im:
            np.testing.assert_array_equal(np.asarray(im).astype(np.int32) - 1, expected)

    Image.fromarray(image).save(tmp_path / "grey.png")
    monkeypatch.setattr(Segmenter, "from_settings", lambda settings, progress: segmenter)
    monkeypatch.setattr(cli, "setup_logging", lambda verbose: None)  # the test process's logging stays as it is
    for mode, expected in ((None, semantic), ("per_mask", per_mask)):
        out = tmp_path / f"cli-{mode}"
        extra = [] if mode is None else ["--mode", mode]
        assert (
            cli.main([str(tmp_path / "grey.png"), "--vocab", "cat, dog", "--out", str(out), "--tiny-random"] + extra)
            == 0
        )
        assert json.loads((out / "grey_segments.json").read_text())["mode"] == (mode or "semantic")
        with Image.open(out / "grey_labels.png") as im:
            np.testing.assert_array_equal(np.asarray(im).astype(np.int32) - 1, expected)


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
    # each changed mask listed: its index, both labels and its area at the photo's size
    expected = [
        (i, vocabulary.labels[int(a.argmax())], vocabulary.labels[int(b.argmax())])
        for i, (a, b) in enumerate(zip(adapter, pooling, strict=True))
        if int(a.argmax()) != int(b.argmax())
    ]
    assert [(c.mask, c.adapter, c.pooling) for c in found.changes] == expected
    frame = segmenter.frame(session)
    for c in found.changes:
        assert c.area == int(frame.to_original(masks[c.mask]).sum())
    # each side is what segment_automatic gives with that method
    for method, result in (("adapter", found.adapter), ("pooling", found.pooling)):
        again = segmenter.segment_automatic(session, vocabulary, settings, method=method)
        np.testing.assert_array_equal(again.label_map, result.label_map)
    assert not np.array_equal(adapter.numpy(), pooling.numpy())
    assert segmenter.stats["mask_generations"] == 1  # nothing was computed twice


def test_cli_compare_writes_both_pictures(tmp_path, capsys):
    from conftest import small_image
    from PIL import Image

    from maskadapter.__main__ import main

    Image.fromarray(small_image("coffee.png", 120)).save(tmp_path / "coffee.png")
    out = tmp_path / "out"
    args = ["--vocab", "cup, table, saucer", "--out", str(out), "--tiny-random", "--compare"]
    args += ["--points-per-side", "4", "--pred-iou-thresh", "0", "--stability-score-thresh", "0"]
    code = main([str(tmp_path / "coffee.png"), *args, "--cache-dir", str(tmp_path / "cache")])
    run = capsys.readouterr()
    assert code == 0, run.err[-3000:]
    changed = __import__("re").search(r"(\d+) of (\d+) (masks?) changed label with plain mask pooling", run.out)
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
