"""MaskGenerator against sam2's SAM2AutomaticMaskGenerator, and its building blocks
(point grid, stability scores, boxes, low-res bounds, NMS certainty) and WorkingFrame
against straightforward recomputations written here."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import sam2.utils.misc as sam2_misc
import torch
import torch.nn.functional as F
from conftest import SyntheticSAM, small_image
from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator
from sam2.utils.amg import batched_mask_to_box, build_point_grid, calculate_stability_score
from torchvision.ops import nms

from maskadapter.engine.bounded_nms import boxes_for_nms
from maskadapter.engine.generator import MaskGenerator, point_grid
from maskadapter.engine.low_res_masks import FrameBounds, small_regions, stability_scores
from maskadapter.engine.point_decoder import PointDecoder
from maskadapter.engine.sam2_internals import prompt_frame
from maskadapter.engine.transforms import WorkingFrame, inclusive_boxes, mask_boxes

# ----------------------------------------------------------------- equivalence with sam2

SETTINGS = {
    "default": {},  # pred_iou_thresh 0.8, stability_score_thresh 0.95, box_nms_thresh 0.7
    "no-filters": {"pred_iou_thresh": 0.0, "stability_score_thresh": 0.0, "box_nms_thresh": 0.7},
    "no-nms": {"pred_iou_thresh": 0.0, "stability_score_thresh": 0.0, "box_nms_thresh": 1.0},
    # the demo's settings: holes and specks of up to 100 low-res pixels removed (on
    # decoder outputs that have both); sam2 labels each mask on its own (see below)
    "small-regions": {"stability_score_thresh": 0.7, "min_mask_region_area": 100},
}


def per_mask_components(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A straightforward stand-in for sam2's compiled ``get_connected_components``
    (absent from CPU installs): (N, 1, H, W) -> labels and the area of each pixel's
    8-connected component (0 outside), one OpenCV call per mask."""
    labels = torch.zeros(mask.shape, dtype=torch.int32)
    areas = torch.zeros(mask.shape, dtype=torch.int32)
    for i, m in enumerate(mask[:, 0].to(torch.uint8).cpu().numpy()):
        _, lab, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
        area = stats[:, cv2.CC_STAT_AREA].copy()
        area[0] = 0
        labels[i, 0] = torch.from_numpy(lab)
        areas[i, 0] = torch.from_numpy(area[lab].astype(np.int32))
    return labels.to(mask.device), areas.to(mask.device)


# a working frame smaller than the photo: WorkingFrame((150, 226), max_side=150).work_hw
FRAME = (100, 150)
# an 8 x 8 prompt grid in batches of 16: 192 candidates, four batches
PHOTO_HW = (150, 226)
GRID = 8


def _float16_outputs(mp: pytest.MonkeyPatch, sam2_model) -> None:
    """The decoder's logits rounded to float16 values (kept in float32). MaskGenerator
    keeps candidates as float16 logits (documented), sam2 keeps float32: on arbitrary
    float32 logits a handful of frame pixels whose upsampled value lies within float16
    rounding of 0 differ (5 pixels of the 546 masks of "no-filters" here). On values
    float16 holds exactly both upsample the same numbers, so every pixel must agree."""
    inner, inner_points = sam2_model.sam_mask_decoder.forward, PointDecoder.decode

    def decoder(*args, **kwargs):
        low_res, iou, tokens, obj = inner(*args, **kwargs)
        return low_res.to(torch.float16).to(low_res.dtype), iou, tokens, obj

    def point_decoder(*args, **kwargs):
        low_res, iou = inner_points(*args, **kwargs)
        return low_res.to(torch.float16).to(low_res.dtype), iou

    mp.setattr(sam2_model.sam_mask_decoder, "forward", decoder)
    mp.setattr(PointDecoder, "decode", point_decoder)


def _output_in_frame(predictor, frame_hw: tuple[int, int]) -> None:
    """sam2's predictor upsamples its low-res logits to the size its ``set_image`` saw;
    after this, to ``frame_hw`` instead (prompts are still read in image pixels)."""
    set_image = predictor.set_image

    def set_image_in_frame(image):
        set_image(image)
        prompt_frame(predictor, frame_hw)

    predictor.set_image = set_image_in_frame


def _decoder_logits(sam2_model, image: np.ndarray, points: list[tuple[float, float]]) -> dict:
    """point -> (3, 256, 256) low-res logits the decoder gives for that point prompt
    (through sam2's own predictor, before its clamp), in batches of 16 points."""
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    predictor = SAM2ImagePredictor(sam2_model)
    predictor.set_image(image)
    seen: list[torch.Tensor] = []
    inner = sam2_model.sam_mask_decoder.forward

    def capture(*args, **kwargs):
        out = inner(*args, **kwargs)
        seen.append(out[0].detach().float().clone())
        return out

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sam2_model.sam_mask_decoder, "forward", capture)
        for start in range(0, len(points), 16):
            part = np.array(points[start : start + 16], dtype=np.float32)[:, None, :]  # (b, 1, 2)
            predictor.predict(point_coords=part, point_labels=np.ones(part.shape[:2], int), multimask_output=True)
    logits = torch.cat(seen)
    assert logits.shape == (len(points), 3, 256, 256)
    return dict(zip(points, logits, strict=True))


@pytest.fixture(scope="module")
def generated(tiny_models):
    """(name, frame) -> (our records, sam2's records, low-res logits per prompt point of
    ours when small regions are removed) on the example photo at its own size (226 px
    wide), with varied synthetic decoder outputs (float16 values, see _float16_outputs);
    frame None: masks at the photo's size, else in a working frame of that size (sam2's
    predictor then upsamples to it). Each case is computed once."""
    image = small_image("chelsea.png", 226)
    assert image.shape[:2] == PHOTO_HW
    done: dict = {}

    def run(name: str, frame: tuple[int, int] | None = None):
        if (name, frame) not in done:
            kwargs = {"points_per_side": GRID, "points_per_batch": 16, **SETTINGS[name]}
            speckle = kwargs.get("min_mask_region_area", 0) > 0
            synthetic = SyntheticSAM(tiny_models.sam2, sharpness=(0.4, 3.0), speckle=speckle)
            with synthetic, pytest.MonkeyPatch.context() as mp:
                mp.setattr(sam2_misc, "get_connected_components", per_mask_components)
                _float16_outputs(mp, tiny_models.sam2)
                # frame None: at the photo's size; else the masks in the frame (points stay photo pixels)
                ours = MaskGenerator(tiny_models.sam2, **kwargs).generate(image, frame_hw=frame)
                reference = SAM2AutomaticMaskGenerator(tiny_models.sam2, output_mode="binary_mask", **kwargs)
                if frame is not None:
                    _output_in_frame(reference.predictor, frame)
                theirs = reference.generate(image)
                low_res = None
                if speckle:
                    points = list(dict.fromkeys(_point(r) for r in ours))
                    low_res = _decoder_logits(tiny_models.sam2, image, points)
            done[name, frame] = (ours, theirs, low_res)
        return done[name, frame]

    return run


def _point(record: dict) -> tuple[float, float]:
    (x, y) = record["point_coords"][0]
    return (float(x), float(y))


def _differing_pixels(ours: list[dict], theirs: list[dict]) -> list[tuple[tuple[float, float], int]]:
    """Records matched one to one, each of ours with the sam2 record of the same prompt
    point whose mask differs from it in the fewest pixels; (point, that count) for every
    record of ours, and (point, -1) for a record with no partner left."""
    by_point: dict[tuple[float, float], list[dict]] = {}
    for r in theirs:
        by_point.setdefault(_point(r), []).append(r)
    out = []
    for r in ours:
        others = by_point.get(_point(r), [])
        if not others:
            out.append((_point(r), -1))
            continue
        counts = [int(np.count_nonzero(r["segmentation"] != o["segmentation"])) for o in others]
        best = int(np.argmin(counts))
        out.append((_point(r), counts[best]))
        r["_partner"] = others.pop(best)
    return out


def _xywh_inclusive(mask: np.ndarray) -> list[int]:
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return [0, 0, 0, 0]
    return [int(xs.min()), int(ys.min()), int(xs.max() - xs.min()), int(ys.max() - ys.min())]


# in the frame: the demo's settings (every filter, NMS and small-region removal)
CASES = [(name, None) for name in SETTINGS] + [("small-regions", FRAME)]


@pytest.mark.slow  # sam2's generator and ours, five cases: a few minutes on 2 CPU cores
@pytest.mark.parametrize("name,frame", CASES, ids=[f"{n}-{'frame' if f else 'photo'}" for n, f in CASES])
def test_masks_equal_sam2_automatic_mask_generator(generated, name, frame):
    ours, theirs, _ = generated(name, frame)
    ours = [dict(r) for r in ours]  # _differing_pixels notes partners in the records
    assert len(theirs) > 0
    assert len(ours) == len(theirs)
    # every mask equals sam2's for the same prompt point, pixel for pixel
    differences = _differing_pixels(ours, theirs)
    assert [d for d in differences if d[1] != 0] == []
    hw = frame or PHOTO_HW
    for mine in ours:
        other = mine.pop("_partner")
        assert mine["segmentation"].shape == other["segmentation"].shape == hw
        assert mine["segmentation"].dtype == bool
        assert mine["point_coords"] == other["point_coords"]
        assert mine["predicted_iou"] == other["predicted_iou"]
        assert mine["stability_score"] == other["stability_score"]
    for record in ours + theirs:  # bbox and area follow each record's own mask
        seg = record["segmentation"]
        assert int(record["area"]) == int(seg.sum())
        assert [int(v) for v in record["bbox"]] == _xywh_inclusive(seg)


def _greedy_nms_records(records: list[dict], threshold: float) -> list[int]:
    """Indices of ``records`` kept by plain greedy NMS on their XYXY boxes (sam2's inclusive
    max pixel), best predicted IoU first."""
    boxes = np.array([[x, y, x + w, y + h] for x, y, w, h in (r["bbox"] for r in records)], dtype=np.float64)
    scores = np.array([r["predicted_iou"] for r in records], dtype=np.float32)
    return _greedy_nms(boxes, scores, threshold)


@pytest.mark.slow
def test_filters_and_nms_keep_the_masks_sam2s_candidates_give(generated):
    """The expected masks of each setting, derived here from sam2's unfiltered candidates
    (the "no-nms" run: every mask of the 8 x 8 grid, 3 per point): sam2's filters
    (predicted IoU > 0.8, stability >= 0.95, compared in float32 as sam2 does) then
    plain greedy box NMS at 0.7."""
    _, candidates, _ = generated("no-nms")
    assert len(candidates) == GRID * GRID * 3  # nothing filtered, NMS at 1.0 drops nothing
    iou_ok = np.float32([r["predicted_iou"] for r in candidates]) > np.float32(0.8)
    stable = np.float32([r["stability_score"] for r in candidates]) >= np.float32(0.95)
    passing = [r for r, a, b in zip(candidates, iou_ok, stable, strict=True) if a and b]
    expected = {
        "no-nms": candidates,
        "no-filters": [candidates[i] for i in _greedy_nms_records(candidates, 0.7)],
        "default": [passing[i] for i in _greedy_nms_records(passing, 0.7)],
    }
    assert 0 < len(expected["default"]) < len(expected["no-filters"]) < len(expected["no-nms"])

    def keys(records):
        return sorted((_point(r), r["segmentation"].tobytes()) for r in records)

    for name, want in expected.items():
        ours = generated(name)[0]
        assert len(ours) == len(want), name
        assert keys(ours) == keys(want), name


def _remove_small_regions(logits: torch.Tensor, max_area: int) -> torch.Tensor:
    """sam2's hole filling on one (256, 256) low-res mask, written with OpenCV: on the
    mask as given (logits > 0), background components (8-connected) of at most
    ``max_area`` pixels set to +10, foreground ones to -10."""
    mask = (logits > 0).numpy().astype(np.uint8)
    out = logits.clone()
    for target, value in ((1 - mask, 10.0), (mask, -10.0)):
        _, labels, stats, _ = cv2.connectedComponentsWithStats(target, connectivity=8)
        small = stats[:, cv2.CC_STAT_AREA] <= max_area
        small[0] = False  # outside the components
        out[torch.from_numpy(small[labels])] = value
    return out


@pytest.mark.slow
@pytest.mark.parametrize("frame", [None, FRAME], ids=["photo", "frame"])
def test_small_regions_are_removed_from_the_masks(generated, frame):
    """With min_mask_region_area 100 every mask is one of its prompt's three decoder
    outputs with holes and specks of up to 100 low-res pixels removed, then upsampled
    (bilinear) to the frame, recomputed here; the squares SyntheticSAM flipped make the
    removal change many masks, both ways (holes filled, specks removed)."""
    ours, _, low_res = generated("small-regions", frame)
    hw = frame or PHOTO_HW
    assert ours
    filled = cleared = 0
    for record in ours:
        logits = low_res[_point(record)]  # (3, 256, 256)
        removed = torch.stack([_remove_small_regions(x, 100) for x in logits])
        up = F.interpolate(removed[:, None], size=hw, mode="bilinear", align_corners=False)[:, 0] > 0
        matches = [k for k in range(3) if np.array_equal(up[k].numpy(), record["segmentation"])]
        assert matches, _point(record)
        k = matches[0]
        plain = (F.interpolate(logits[k, None, None], size=hw, mode="bilinear", align_corners=False)[0, 0] > 0).numpy()
        filled += bool((record["segmentation"] & ~plain).any())
        cleared += bool((plain & ~record["segmentation"]).any())
    assert filled > 0 and cleared > 0


# ----------------------------------------------------------------- building blocks


@pytest.mark.parametrize("n", [1, 4, 32])
def test_point_grid_is_sam2s(n):
    got = point_grid(n)
    expected = build_point_grid(n)
    assert got.shape == expected.shape == (n * n, 2)
    np.testing.assert_array_equal(got, expected)


def _components_by_flood_fill(mask: np.ndarray) -> list[list[tuple[int, int]]]:
    """8-connected components of a 2-D bool array, by breadth-first search."""
    seen = np.zeros_like(mask)
    out = []
    for start in zip(*np.nonzero(mask), strict=True):
        if seen[start]:
            continue
        seen[start] = True
        queue, component = [start], []
        while queue:
            y, x = queue.pop()
            component.append((y, x))
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    v, u = y + dy, x + dx
                    if 0 <= v < mask.shape[0] and 0 <= u < mask.shape[1] and mask[v, u] and not seen[v, u]:
                        seen[v, u] = True
                        queue.append((v, u))
        out.append(component)
    return out


@pytest.mark.parametrize("max_area", [0, 3, 12, 40])
def test_small_regions_match_flood_fill_per_mask(max_area):
    rng = np.random.default_rng(max_area)
    # blobs of every size; components touching the top / bottom rows of neighbouring
    # masks must not join (the masks are labelled together in one image)
    masks = rng.uniform(size=(9, 23, 31)) < rng.uniform(0.2, 0.7, (9, 1, 1))
    masks[:, 0] |= rng.uniform(size=(9, 31)) < 0.5
    masks[:, -1] |= rng.uniform(size=(9, 31)) < 0.5
    expected = np.zeros_like(masks)
    for i, mask in enumerate(masks):
        for component in _components_by_flood_fill(mask):
            if len(component) <= max_area:
                ys, xs = zip(*component, strict=True)
                expected[i, list(ys), list(xs)] = True
    got = small_regions(masks, max_area)
    np.testing.assert_array_equal(got, expected)
    assert expected.any() == (max_area > 0)


def test_stability_scores_match_recomputation():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 40, 50, generator=g) * 3
    logits[2] = -5 - torch.rand(40, 50, generator=g)  # empty even at -offset: NaN, as in sam2
    logits[3] = 5 + torch.rand(40, 50, generator=g)  # full: 1
    logits[4, :20] += 6  # half the mask certain
    arr = logits.numpy()
    for offset, threshold in ((1.0, 0.0), (2.0, 0.5), (0.25, -1.0)):
        inner = (arr > threshold + offset).sum((1, 2))
        outer = (arr > threshold - offset).sum((1, 2))
        with np.errstate(invalid="ignore", divide="ignore"):
            expected = inner / outer
        got = stability_scores(logits, offset, threshold).numpy()
        assert got.shape == (6,)
        assert np.isnan(got[2]) and got[3] == 1.0
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=0)
        sam2s = calculate_stability_score(logits, threshold, offset).numpy()
        np.testing.assert_allclose(got, sam2s, rtol=1e-6, atol=0)


def test_mask_boxes_match_recomputation():
    g = torch.Generator().manual_seed(1)
    masks = torch.rand(8, 30, 40, generator=g) > 0.995  # specks
    masks[1] = False  # empty
    masks[2] = False
    masks[2, 29, 39] = True  # one pixel in the last corner
    masks[3] = True  # full
    masks[4, 5:17, 9:33] = True
    masks[5] = False
    masks[5, 0, 0] = True
    expected = []  # x2/y2 exclusive: one past the last pixel
    for m in masks.numpy():
        ys, xs = np.nonzero(m)
        expected.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1] if len(xs) else [0, 0, 0, 0])
    got = mask_boxes(masks)
    assert got.dtype == torch.int64
    np.testing.assert_array_equal(got.numpy(), np.array(expected))
    assert got[2].tolist() == [39, 29, 40, 30] and got[1].tolist() == [0, 0, 0, 0]
    assert got[5].tolist() == [0, 0, 1, 1] and got[3].tolist() == [0, 0, 40, 30]
    # sam2's convention (the last pixel) for its NMS and records
    np.testing.assert_array_equal(inclusive_boxes(got).numpy(), batched_mask_to_box(masks).numpy())
    assert mask_boxes(torch.zeros(0, 30, 40, dtype=torch.bool)).shape == (0, 4)


def _inclusive_xyxy(mask: np.ndarray) -> np.ndarray | None:
    ys, xs = np.nonzero(mask)
    return None if len(xs) == 0 else np.array([xs.min(), ys.min(), xs.max(), ys.max()])


@pytest.mark.parametrize("hw", [(160, 107), (300, 451), (768, 1024)])
def test_frame_bounds_contain_the_upsampled_counts_and_boxes(hw):
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(6, 256, 256, generator=g) * 3
    ys, xs = torch.meshgrid(torch.arange(256.0), torch.arange(256.0), indexing="ij")
    for k, (cy, cx, r) in enumerate([(100, 150, 40), (30, 200, 25), (180, 60, 70)], start=2):
        dist = ((ys - cy) ** 2 + (xs - cx) ** 2).sqrt()
        logits[k] = 10 * (r - dist) / r + torch.randn(256, 256, generator=g) * 3  # blob with a noisy edge
    logits[1] = -3.0  # small patches of a few cells
    for y, x, size in [(7, 250, 2), (40, 3, 1), (128, 128, 3), (254, 100, 2)]:
        logits[1, y : y + size, x : x + size] = 3.0
    logits[5] = -torch.rand(256, 256, generator=g) - 0.1  # nothing
    up = F.interpolate(logits[:, None], size=hw, mode="bilinear", align_corners=False)[:, 0].numpy()
    bounds = FrameBounds(hw, torch.device("cpu"))
    rows, cols = bounds.rows.numpy(), bounds.cols.numpy()
    for t in (-1.0, 0.0, 1.0):
        all_above, any_above = FrameBounds.cells_above(logits, t)
        # each frame pixel is above t if all sources of its cell are, only if one is
        cell_all = all_above.numpy()[:, rows[:, None], cols[None, :]]
        cell_any = any_above.numpy()[:, rows[:, None], cols[None, :]]
        assert (~cell_all | (up > t)).all() and (~(up > t) | cell_any).all()
        exact = (up > t).sum((1, 2))
        lo, hi = bounds.count(all_above).numpy(), bounds.count(any_above).numpy()
        assert (lo <= exact).all() and (exact <= hi).all(), (t, lo, exact, hi)
        assert (lo < hi).any()  # the bounds are not trivially equal
    inside, touched = FrameBounds.cells_above(logits, 0.0)
    # pixels known to be in the mask: each cell's first pixel, where clearly positive
    first_row, first_col = bounds.first_row.numpy(), bounds.first_col.numpy()
    has = (first_row >= 0)[:, None] & (first_col >= 0)[None, :]
    picked = up[:, first_row.clip(0)[:, None], first_col.clip(0)[None, :]]
    sampled = torch.from_numpy((picked > 1e-3) & has)
    inner = bounds.inner_box(logits).numpy()
    outer = bounds.outer_box(logits).numpy()
    inner_count, outer_count = bounds.count(inside).numpy(), bounds.count(touched).numpy()
    inner_known = sampled.flatten(1).any(1).numpy()
    checked = 0
    for k in range(len(logits)):
        box = _inclusive_xyxy(up[k] > 0)
        if outer_count[k] == 0:
            assert box is None and (outer[k] == 0).all()
            continue
        if box is None:
            assert not inner_known[k]
            continue
        o = outer[k]
        assert o[0] <= box[0] and o[1] <= box[1] and o[2] >= box[2] and o[3] >= box[3], (k, o, box)
        if inner_known[k]:
            i = inner[k]
            assert box[0] <= i[0] <= i[2] <= box[2] and box[1] <= i[1] <= i[3] <= box[3], (k, i, box)
            # ... and reaches every first pixel that is clearly positive
            rs, cs = np.nonzero(sampled[k].numpy())
            xs, ys = first_col[cs], first_row[rs]
            assert i[0] <= xs.min() and i[1] <= ys.min() and i[2] >= xs.max() and i[3] >= ys.max(), (k, i)
            checked += 1
    assert checked >= 3
    assert inner_count[5] == outer_count[5] == 0


def _iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    w = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    h = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = w * h
    return inter / (area_a[:, None] + area_b[None, :] - inter)


def _greedy_nms(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> list[int]:
    """Plain greedy NMS: best score first, drop boxes whose IoU with a kept one exceeds threshold."""
    iou = _iou_matrix(boxes, boxes)
    kept: list[int] = []
    for i in np.argsort(-scores, kind="stable"):
        if all(iou[k, i] <= threshold for k in kept):
            kept.append(int(i))
    return kept


@pytest.mark.parametrize("threshold", [0.5, 0.7, 0.9])
def test_nms_on_bounded_boxes_decides_as_on_exact_boxes(threshold):
    rng = np.random.default_rng(3)
    base = np.concatenate([rng.uniform(0, 300, (40, 2)), rng.uniform(40, 160, (40, 2))], 1)
    base[:, 2:] += base[:, :2]
    jitter = np.repeat(rng.uniform(0.2, 8, (40, 1)), 6, 0)  # clusters of boxes, tight to loose
    exact = np.repeat(base, 6, 0) + rng.uniform(-1, 1, (240, 4)) * jitter
    inner = exact + rng.uniform(0, 1, exact.shape) * np.array([1, 1, -1, -1])
    outer = exact + rng.uniform(0, 1, exact.shape) * np.array([-1, -1, 1, 1])
    scores = rng.uniform(0, 1, len(exact))
    asked: list[int] = []

    def exact_box(index):
        asked.extend(index.tolist())
        return torch.tensor(exact[index.numpy()], dtype=torch.float32)

    boxes, refined = boxes_for_nms(
        torch.tensor(inner, dtype=torch.float32),
        torch.tensor(outer, dtype=torch.float32),
        torch.tensor(scores, dtype=torch.float32),
        threshold,
        exact_box,
    )
    expected = _greedy_nms(exact, scores, threshold)
    assert nms(boxes, torch.tensor(scores, dtype=torch.float32), threshold).tolist() == expected
    assert refined == len(asked) == len(set(asked))  # each box made exact at most once
    assert refined < len(exact)  # bounds decide some pairs (test below: which boxes are made exact)
    assert 1 < len(expected) < len(exact)  # NMS both keeps and drops


def test_nms_makes_exact_only_the_boxes_of_pairs_that_matter():
    """Box 0 is surely kept; its IoUs with boxes 1 and 3 straddle the threshold (those
    three are made exact); box 2 is surely suppressed by box 0, so its open pair with
    box 3 does not matter; box 4 is far from everything. Exact: 0 keeps 1 (IoU 0.685)
    and suppresses 2 (0.95); 1 suppresses 3 (0.97)."""
    exact = np.array(
        [[0, 0, 10, 10], [0, 0, 10, 14.6], [0, 0, 10, 10.5], [0, 0, 10, 15], [50, 50, 60, 60]], dtype=np.float32
    )
    margin = np.array([0.1, 0.1, -0.1, -0.1], dtype=np.float32)
    inner, outer = exact + margin, exact - margin
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5], dtype=np.float32)
    asked: list[int] = []

    def exact_box(index):
        asked.extend(index.tolist())
        return torch.tensor(exact[index.numpy()])

    boxes, refined = boxes_for_nms(torch.tensor(inner), torch.tensor(outer), torch.tensor(scores), 0.7, exact_box)
    assert sorted(asked) == [0, 1, 3] and refined == 3
    assert nms(boxes, torch.tensor(scores), 0.7).tolist() == _greedy_nms(exact, scores, 0.7) == [0, 1, 4]


# ----------------------------------------------------------------- WorkingFrame


def _nearest(out_len: int, in_len: int) -> np.ndarray:
    """src = floor((i + 0.5) * in / out), in exact integer arithmetic."""
    return ((2 * np.arange(out_len) + 1) * in_len) // (2 * out_len)


@pytest.mark.parametrize("orig_hw,work_hw", [((2000, 3000), (683, 1024)), ((300, 451), (300, 451))])
def test_working_frame_maps_masks_areas_and_boxes_back(orig_hw, work_hw):
    frame = WorkingFrame(orig_hw, max_side=1024)
    assert frame.work_hw == work_hw
    assert frame.identity == (orig_hw == work_hw)
    h, w = work_hw
    g = torch.Generator().manual_seed(4)
    masks = torch.rand(5, h, w, generator=g) > 0.9995  # specks
    masks[0, h // 5 : h // 2, w // 3 : w - 7] = True
    masks[1] = False  # empty
    masks[2] = False
    masks[2, h - 1, w - 1] = True  # one pixel in the last corner
    masks[3] = True  # full
    rows, cols = _nearest(orig_hw[0], h), _nearest(orig_hw[1], w)
    expected = masks.numpy()[:, rows[:, None], cols[None, :]]
    assert expected.shape == (5, *orig_hw)

    np.testing.assert_array_equal(frame.to_original(masks), expected)
    np.testing.assert_array_equal(frame.to_original(masks.numpy()), expected)
    np.testing.assert_array_equal(frame.areas(masks).numpy(), expected.sum((1, 2)))
    boxes = []
    for m in expected:
        ys, xs = np.nonzero(m.any(1))[0], np.nonzero(m.any(0))[0]
        boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1] if len(xs) else [0, 0, 0, 0])
    got = frame.boxes(masks)
    assert got.dtype == torch.int64
    np.testing.assert_array_equal(got.numpy(), np.array(boxes))
    assert got[3].tolist() == [0, 0, orig_hw[1], orig_hw[0]]
