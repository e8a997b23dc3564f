"""The benchmark command runs end to end on a small case and reports coherent figures."""

import json

from maskadapter import benchmark


def test_benchmark_reports_every_stage_and_the_sam2_ratio(tmp_path, capsys):
    out = tmp_path / "bench.json"
    args = ["--tiny-random", "--width", "160", "--height", "120", "--points-per-side", "4"]
    # hole filling off: sam2 skips it without its compiled extension, so the work is equal
    args += ["--pred-iou-thresh", "0", "--stability-score-thresh", "0", "--min-mask-region-area", "0"]
    args += ["--json", str(out)]
    assert benchmark.main(args + ["--cache-dir", str(tmp_path / "cache")]) == 0
    figures = json.loads(out.read_text())
    stages = figures["stages_s"]
    for name in (
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
    ):
        assert stages[name] >= 0, name
    assert figures["image"] == [120, 160] and figures["masks"] >= 1
    assert figures["ours_masks"] == figures["sam2_masks"]  # the same masks, counted
    assert abs(figures["speedup_vs_sam2"] - figures["sam2_generate_s"] / figures["ours_generate_s"]) < 0.05
    assert 0 <= figures["ours_outside_networks"] <= 1
    assert figures["peak_rss_bytes"] >= figures["rss_after_load_bytes"] > 0
    assert figures["batch_images"] == 3  # the default: three images through the batch engine
    assert abs(figures["batch_images_per_s"] - 3 / figures["batch_s"]) < 0.01
    out = capsys.readouterr().out
    assert "speed-up vs sam2's generator" in out and "batch, local engine" in out
