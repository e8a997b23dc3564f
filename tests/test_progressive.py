"""Coarse-to-fine automatic masks: each step a complete result for the points so far,
the last one the one-shot result."""

from __future__ import annotations

import numpy as np
import pytest
import sam2.utils.misc as sam2_misc
import torch
from conftest import SyntheticSAM, small_image
from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator
from test_generator import PHOTO_HW, SETTINGS, _differing_pixels, _float16_outputs, per_mask_components

from maskadapter.engine.generator import MaskGenerator, coarse_to_fine, point_grid
from maskadapter.engine.mask_settings import AutoMaskSettings
from maskadapter.engine.results import with_others
from maskadapter.engine.segmenter import Segmenter
from maskadapter.engine.vocabulary import build_vocabulary
from maskadapter.output.export import segments_to_dict


@pytest.mark.parametrize("n", [1, 3, 4, 8, 16, 32])
def test_coarse_to_fine_takes_every_point_once_coarse_first(n):
    steps = coarse_to_fine(n)
    everything = np.concatenate(steps)
    assert sorted(everything.tolist()) == list(range(n * n))  # each point once
    for step in steps:
        assert (np.diff(step) > 0).all()  # row order within a step
    rows, cols = np.divmod(everything, n)
    # recomputed: the level of a point is the coarsest stride (4, 2, 1) whose lattice
    # through the second row and column holds it
    level = [
        0 if (r % 4 == 1 and c % 4 == 1) else 1 if (r % 2 == 1 and c % 2 == 1) else 2
        for r, c in zip(rows, cols, strict=True)
    ]
    present = sorted(set(level))
    assert [len(s) for s in steps] == [level.count(k) for k in present]
    if n == 32:
        assert [len(s) for s in steps] == [64, 192, 768]


def _same_masks(a, b) -> None:
    assert torch.equal(a.masks, b.masks)
    assert torch.equal(a.iou, b.iou) and torch.equal(a.boxes, b.boxes) and torch.equal(a.areas, b.areas)
    assert torch.equal(a.stability.isnan(), b.stability.isnan())
    assert torch.equal(a.stability.nan_to_num(-1), b.stability.nan_to_num(-1))


@pytest.mark.slow  # sam2's generator once per step and case: about a minute on 2 CPU cores
@pytest.mark.parametrize(
    "name,grid,multimask",
    [("default", 8, True), ("small-regions", 12, True), ("no-filters", 8, False)],
)
def test_each_step_is_sam2s_result_for_its_points_and_the_last_is_one_shot(tiny_models, name, grid, multimask):
    """Step k's masks are what sam2's own generator gives for the points of steps 1..k
    (as its ``point_grids``), and the last step's equal ``generate_masks``'s bit for bit."""
    image = small_image("chelsea.png", 226)
    assert image.shape[:2] == PHOTO_HW
    kwargs = {"points_per_batch": 16, "multimask_output": multimask, **SETTINGS[name]}
    speckle = kwargs.get("min_mask_region_area", 0) > 0
    synthetic = SyntheticSAM(tiny_models.sam2, sharpness=(0.4, 3.0), speckle=speckle)
    with torch.inference_mode(), synthetic, pytest.MonkeyPatch.context() as mp:
        mp.setattr(sam2_misc, "get_connected_components", per_mask_components)
        _float16_outputs(mp, tiny_models.sam2)
        generator = MaskGenerator(tiny_models.sam2, points_per_side=grid, **kwargs)
        steps = list(generator.generate_steps(image, PHOTO_HW))
        one_shot = MaskGenerator(tiny_models.sam2, points_per_side=grid, **kwargs).generate_masks(image, PHOTO_HW)
        sizes = [len(s) for s in coarse_to_fine(grid)]
        assert [done for done, _, _ in steps] == np.cumsum(sizes).tolist()
        _same_masks(steps[-1][1], one_shot)
        grid_points = point_grid(grid)
        so_far: list[int] = []
        for (done, found, ids), index in zip(steps, coarse_to_fine(grid), strict=True):
            so_far = sorted([*so_far, *index.tolist()])
            per_point = 3 if multimask else 1
            assert set((ids // per_point).tolist()) <= set(so_far)  # masks of these points only
            reference = SAM2AutomaticMaskGenerator(
                tiny_models.sam2, points_per_side=None, point_grids=[grid_points[so_far]], output_mode="binary_mask",
                **kwargs,
            )  # fmt: skip
            theirs = reference.generate(image)
            ours = [{"segmentation": m.numpy(), "point_coords": [[0, 0]]} for m in found.masks]
            for r, t in zip(ours, theirs, strict=False):  # same order: best predicted IoU first
                r["point_coords"] = t["point_coords"]
            assert len(ours) == len(theirs), f"step of {done} points"
            assert [count for _, count in _differing_pixels(ours, theirs)] == [0] * len(ours)


# ----------------------------------------------------------------- the segmenter's steps

STEPPED = AutoMaskSettings(points_per_side=8, pred_iou_thresh=0.0, stability_score_thresh=0.0)


@pytest.mark.parametrize("mode", ["semantic", "per_mask"])
def test_segmenter_steps_end_with_the_one_shot_result(tiny_models, segmenter, tmp_path, mode):
    """Run with decoder outputs that vary per point (``SyntheticSAM``): each step is a
    complete result; the last equals ``segment_automatic``'s on a segmenter of its own,
    and the masks are made once (a later ``segment_automatic`` reuses them)."""
    image, vocabulary = small_image(), build_vocabulary("cat, grass, wall")
    other = Segmenter(tiny_models, "cpu", segmenter.transform, str(tmp_path / "other"), precision="float32")
    with SyntheticSAM(tiny_models.sam2):
        steps = list(segmenter.segment_automatic_steps(image, vocabulary, STEPPED, mode=mode))
        one_shot = other.segment_automatic(image, vocabulary, STEPPED, mode=mode)
        again = segmenter.segment_automatic(image, vocabulary, STEPPED, mode=mode)
    sizes = np.cumsum([len(s) for s in coarse_to_fine(8)]).tolist()
    assert [(s.points, s.total, s.final) for s in steps] == [(n, 64, n == 64) for n in sizes]
    assert all(len(s.result.segments) for s in steps)  # a complete picture at every step
    assert segments_to_dict(steps[-1].result) == segments_to_dict(one_shot) == segments_to_dict(again)
    assert np.array_equal(steps[-1].result.label_map, one_shot.label_map)
    assert segmenter.stats["mask_generations"] == 1 and segmenter.stats["sam_image_encodings"] == 1
    # the adapter ran for the new masks of each step before the last, then once for the last step
    assert segmenter.stats["adapter_runs"] == 1 and 0 < segmenter.stats["step_adapter_runs"] <= len(steps) - 1


def test_a_step_names_its_masks_as_a_recomputation_does(tiny_models, segmenter):
    """An intermediate step's probabilities (partly carried over from earlier steps) equal
    the adapter run on that step's masks at once."""
    image, vocabulary = small_image(), build_vocabulary("cat, grass, wall")
    with SyntheticSAM(tiny_models.sam2):
        steps = segmenter.segment_automatic_steps(image, vocabulary, STEPPED, mode="per_mask")
        first, second = next(steps), next(steps)
        steps.close()
    for step in (first, second):
        masks = torch.stack([torch.as_tensor(s.mask) for s in step.result.segments])
        probs = segmenter.mask_probabilities(segmenter.session(image), masks, with_others(vocabulary))
        best = probs.argmax(1).tolist()
        labels = [with_others(vocabulary).labels[i] for i in best]
        assert [s.label for s in step.result.segments] == labels
        assert [s.score for s in step.result.segments] == pytest.approx(probs.max(1).values.tolist(), abs=1e-5)


def test_stopping_after_a_step_keeps_no_masks_and_a_later_run_makes_them(tiny_models, segmenter):
    image, vocabulary = small_image(), build_vocabulary("cat, grass")
    with SyntheticSAM(tiny_models.sam2):
        steps = segmenter.segment_automatic_steps(image, vocabulary, STEPPED, mode="per_mask")
        first = next(steps)
        steps.close()  # what a stopped run does
        session = segmenter.session(image)
        assert not first.final and session.peek("masks", segmenter._mask_key(STEPPED)) is None
        assert segmenter.stats["mask_generations"] == 0
        result = segmenter.segment_automatic(session, vocabulary, STEPPED, mode="per_mask")
    assert len(result.segments) and segmenter.stats["mask_generations"] == 1
    assert segmenter.stats["sam_image_encodings"] == 1  # the embedding stayed


def test_masks_already_made_give_one_step(tiny_models, segmenter):
    image, vocabulary = small_image(), build_vocabulary("cat, grass")
    first = segmenter.segment_automatic(image, vocabulary, STEPPED)
    steps = list(segmenter.segment_automatic_steps(image, build_vocabulary("dog, sky"), STEPPED))
    assert len(steps) == 1 and steps[0].final and len(first.segments)
    assert segmenter.stats["mask_generations"] == 1
