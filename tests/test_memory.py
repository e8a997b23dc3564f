"""A 6000x4000 photo through the automatic path: the engine works at its working
resolution, so what the photo's session keeps is counted in the store and is far
smaller than the photo itself; only the outputs are at the original size. (Peak
memory is a benchmark figure: `python -m maskadapter.cli.benchmark` reports it.)"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from conftest import EXAMPLES, array_bytes, held_arrays
from PIL import Image

from maskadapter import AutoMaskSettings, build_vocabulary
from maskadapter.engine.session import TABLES
from maskadapter.output.export import segments_to_dict
from maskadapter.output.render import overlay


@pytest.mark.slow
def test_large_photo_is_kept_at_the_working_resolution(segmenter):
    photo = np.asarray(Image.open(EXAMPLES / "rocket.jpg").convert("RGB"))
    image = cv2.resize(photo, (6000, 4000), interpolation=cv2.INTER_CUBIC)
    settings = AutoMaskSettings(points_per_side=8, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    result = segmenter.segment_automatic(image, build_vocabulary("rocket, sky, smoke, tree"), settings)
    picture = overlay(image, result)
    data = segments_to_dict(result)

    assert result.label_map.shape == (4000, 6000)
    assert picture.shape[1] == 6000 and picture.shape[0] >= 4000
    assert data["segments"] and data["segments"][0]["segmentation"]["size"] == [4000, 6000]

    session = segmenter.store.get(segmenter.session(image).key)
    (found,) = session.masks.values()
    assert tuple(found.masks.shape[1:]) == (683, 1024)  # 4000 x 1024 / 6000 = 682.7 rows
    assert result.working_label_map.shape == (683, 1024)
    tensors = list(held_arrays([getattr(session, name) for name in TABLES]))
    costs = array_bytes(tensors)
    assert segmenter.store.nbytes == image.nbytes + costs  # the store counts all of it
    masks_bytes = found.masks.numel() * found.masks.element_size()
    assert masks_bytes == len(found.masks) * 683 * 1024  # a byte per working pixel (a full-size float mask: 96 MB)
    assert costs - masks_bytes < image.nbytes / 4  # the rest (encodings, features, scores): a fraction of 72 MB
    assert all(t.shape[-2:] != (4000, 6000) for t in tensors)
