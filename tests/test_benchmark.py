"""The benchmark command on a small case: the settings it runs, sam2's generator in a
process of its own on the same masks, the precision comparison, and the CPU figures."""

import json

import numpy as np
import pytest
import torch

from maskadapter import benchmark

STAGES = {
    "sam2_encode",
    "clip_encode",
    "mask_generation",
    "text_encode",
    "adapter_classification",
    "painting_overlay",
    "export",
    "end_to_end",
    "relabel",
    "first_click",
    "later_click",
}


@pytest.mark.slow
def test_benchmark_compares_with_sam2_in_its_own_process(tmp_path, capsys):
    out = tmp_path / "bench.json"
    args = ["--tiny-random", "--width", "160", "--height", "120", "--points-per-side", "4", "--precision", "float32"]
    # hole filling off: sam2 skips it without its compiled extension, so the work is equal
    args += ["--min-mask-region-area", "0", "--compare-precision", "--batch-images", "2", "--json", str(out)]
    assert benchmark.main(args + ["--cache-dir", str(tmp_path / "cache")]) == 0
    figures = json.loads(out.read_text())
    assert set(figures["stages_s"]) == set(figures["stages_cpu_s"]) == STAGES
    assert figures["precision"] == "float32" and figures["image"] == [120, 160]
    # sam2's generator ran elsewhere (its own CPU figures) and found the masks we found
    reference = figures["sam2"]
    assert reference["masks"] == figures["masks"] >= 1
    assert reference["user_s"] > 0 and reference["wall_s"] > 0
    assert figures["speedup_vs_sam2"] == pytest.approx(reference["wall_s"] / figures["stages_s"]["end_to_end"], 0.02)
    # the other precision: bf16 on the same photo, masks matched one to one
    change = figures["precision_change"]
    assert change["precisions"] == ["float32", "bfloat16"]
    assert 1 <= change["matched_masks"] <= min(change["masks"])
    assert 0 <= change["label_map_pixels_changed"] <= 1
    cpu = figures["process_cpu_s"]
    assert cpu["sys_share"] == pytest.approx(cpu["sys"] / cpu["user"], abs=1e-3)
    assert figures["batch_images"] == 2
    printed = capsys.readouterr().out
    assert "sam2's generator alone (own process, float32)" in printed and "float32 vs bfloat16" in printed


def test_benchmark_runs_the_demo_settings_unless_told(tmp_path):
    out = tmp_path / "bench.json"
    args = ["--tiny-random", "--width", "96", "--height", "64", "--points-per-side", "2", "--no-sam2"]
    args += ["--batch-images", "0", "--json", str(out), "--cache-dir", str(tmp_path / "cache")]
    assert benchmark.main(args) == 0
    figures = json.loads(out.read_text())
    # the demo's settings (hole filling included), quality filters opened for random weights
    assert figures["mask_settings"] == {
        "points_per_side": 2,
        "points_per_batch": 64,
        "pred_iou_thresh": 0.0,
        "stability_score_thresh": 0.0,
        "stability_score_offset": 1.0,
        "box_nms_thresh": 0.7,
        "min_mask_region_area": 100,
    }
    assert "sam2" not in figures and "precision_change" not in figures


def test_masks_are_matched_one_to_one_by_iou():
    a = np.zeros((3, 10, 10), dtype=bool)
    a[0, :5], a[1, 5:], a[2, :, :2] = True, True, True
    b = np.zeros((3, 10, 10), dtype=bool)
    b[0, 5:, :9] = True  # IoU 0.9 with a[1]
    b[1, :4] = True  # IoU 0.8 with a[0]
    b[2, 9:] = True  # IoU 0.2 with a[1]: below 0.5, unmatched
    pairs = benchmark.match_masks(torch.from_numpy(a).flatten(1), torch.from_numpy(b).flatten(1))
    assert pairs.tolist() == [[1, 0], [0, 1]]
