"""A 6000x4000 photo through the automatic path stays within a memory bound."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import cv2, numpy as np
    from PIL import Image
    from maskadapter import AutoMaskSettings, Segmenter, Settings, build_vocabulary
    from maskadapter.export import segments_to_dict
    from maskadapter.render import overlay

    def status(field):
        for line in open("/proc/self/status"):
            if line.startswith(field):
                return int(line.split()[1]) * 1024

    segmenter = Segmenter.from_settings(Settings(tiny_random=True, device="cpu", cache_dir=sys.argv[1]))
    photo = np.asarray(Image.open("examples/rocket.jpg").convert("RGB"))
    image = cv2.resize(photo, (6000, 4000), interpolation=cv2.INTER_CUBIC)
    open("/proc/self/clear_refs", "w").write("5")  # reset the peak to the current RSS
    base = status("VmRSS")
    settings = AutoMaskSettings(pred_iou_thresh=0.0, stability_score_thresh=0.0)
    result = segmenter.segment_automatic(image, build_vocabulary("rocket, sky, smoke, tree"), settings)
    picture = overlay(image, result)
    data = segments_to_dict(result)
    print(json.dumps({
        "base": base, "peak": status("VmHWM"), "label_map": list(result.label_map.shape),
        "overlay": list(picture.shape), "segments": len(data["segments"]),
        "rle_size": data["segments"][0]["segmentation"]["size"] if data["segments"] else None,
    }))
    """
)


@pytest.mark.slow
def test_large_photo_peak_rss_within_2gb_of_loaded_models(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "cache")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    growth = report["peak"] - report["base"]
    print(f"RSS after model load {report['base'] / 2**20:.0f} MiB, peak growth {growth / 2**20:.0f} MiB")
    assert report["label_map"] == [4000, 6000]
    assert report["overlay"][1] == 6000 and report["overlay"][0] >= 4000
    assert report["segments"] >= 1 and report["rle_size"] == [4000, 6000]
    assert growth <= 2 * 2**30
