"""The app's service object, without a browser."""

import json
import re

import numpy as np
import pytest
from markdown_it import MarkdownIt

from maskadapter.engine.mask_settings import AutoMaskSettings
from maskadapter.errors import InputError, MaskAdapterError, WeightsNotFoundError
from maskadapter.point_prompts import PointState, parse_box, parse_points
from maskadapter.service import SegmentationService
from maskadapter.settings import Settings
from maskadapter.ui.events import user_message
from maskadapter.ui.present import automatic_message, points_message, status_markdown, table_rows


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    service = SegmentationService(
        Settings(
            tiny_random=True, device="cpu", cache_dir=str(tmp_path_factory.mktemp("c")), short_side=224, max_size=320
        )
    )
    service.start(background=False)
    return service


def test_status_says_random_weights(service):
    assert service.ready
    status = status_markdown(service.load_status())
    assert "Random weights" in status and "meaningless" in status
    assert service.sam_sizes == ["tiny-random"]
    assert service.default_mask_settings().pred_iou_thresh == 0.0


def test_failed_loading_is_reported_not_raised_at_start(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    broken = SegmentationService(Settings(device="cpu", cache_dir=str(tmp_path)))
    broken.start(background=False)
    assert not broken.ready
    with pytest.raises(WeightsNotFoundError) as err:
        broken.wait()

    # one message, three readings: the log's lines, the toast's one line, the banner's list
    log_lines = str(err.value).splitlines()
    assert log_lines[0].startswith("Model weights missing") and len(log_lines) == 1 + 3 + 1
    assert log_lines[1] == (
        "  - SAM-2.1 large: file sam2.1_hiera_large.pt of hub repo facebook/sam2.1-hiera-large; "
        "a local copy: --sam-checkpoint PATH or MASKADAPTER_SAM_CHECKPOINT=PATH"
    )
    toast = user_message(err.value, "test")
    assert "\n" not in toast and toast.startswith(log_lines[0]) and toast.endswith(log_lines[-1])
    html = MarkdownIt().render(status_markdown(broken.load_status()))
    text = re.sub(r"<[^>]+>", "", html)
    assert "\\" not in text and html.count("<li>") == 3  # no stray escapes; one item per missing file
    assert "The models could not be loaded. " + log_lines[0] in text
    assert log_lines[1].removeprefix("  - ") in text and log_lines[-1] in text


def test_automatic_output(service, image):
    grid = AutoMaskSettings(points_per_side=6, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    out, session = service.automatic(image, "cat, wall", [], None, grid, "per_mask", 0.0, 0.8, 0.5)
    assert out.picture.dtype == np.uint8 and out.picture.shape[1] == image.shape[1]
    count = len(out.segments["segments"])
    assert automatic_message(out) == f"{count} segment{'' if count == 1 else 's'}."
    assert out.label_map_path.exists() and out.json_path.exists()
    assert json.loads(out.json_path.read_text()) == out.segments
    # one table row per segment of the JSON, in its order: label, score, area in percent
    # of the image, the next three labels of its top 5 with their scores
    rows = table_rows(out.result)
    assert len(rows) == len(out.segments["segments"]) > 0
    h, w = image.shape[:2]
    for row, seg in zip(rows, out.segments["segments"], strict=True):
        assert len(row) == 4 and row[0] == seg["label"]
        assert row[1] == pytest.approx(seg["score"], abs=5e-4)
        assert row[2] == pytest.approx(100.0 * seg["area"] / (h * w), abs=5e-3)
        alternatives = [part.rsplit(" (", 1) for part in row[3].split(", ")] if row[3] else []
        assert [label for label, _ in alternatives] == [t["label"] for t in seg["top5"][1:4]]
        for (_, score), top in zip(alternatives, seg["top5"][1:4], strict=True):
            assert float(score.rstrip(")")) == pytest.approx(top["score"], abs=5e-3)
    again, same = service.automatic(image, "dog, sky", ["pascal_voc"], mask_settings=grid)
    assert same == session  # the same pixels keep their stored session
    assert service.open_point_image(image).key == session  # the point tab finds it too
    other, new = service.automatic(image[::-1].copy(), "dog", [], mask_settings=grid)
    assert new != session
    with pytest.raises(InputError, match="SAM-2 size"):
        service.automatic(image, "cat", [], sam_size="large")


def test_point_state_clicks_undo_clear(service, image):
    state = service.open_point_image(image)
    with pytest.raises(InputError, match="outside"):
        state.add(500, 5, "positive")
    state.add(20, 30, "negative")
    assert not state.ready
    hint = service.points(state, "cat", [])
    assert hint.result is None and hint.segments == {} and not hint.downloads
    assert points_message(hint, state) == "Add a positive point (or a box) on the object."
    assert points_message(hint, PointState(key=state.key, hw=state.hw)) == "Click on the object to add a point."
    state.add(80, 50, "positive")
    state.add(10, 10, "box")
    state.add(150, 100, "box")
    assert state.box == [10, 10, 150, 100] and state.corner is None
    out = service.points(state, "cat, wall", [])
    assert out.picture.shape == image.shape
    (seg,) = out.segments["segments"]  # one named mask (random weights: a large one)
    assert seg["label"] in ("cat", "wall") and seg["segmentation"]["size"] == list(image.shape[:2])
    assert table_rows(out.result)[0][0] == seg["label"] and seg["label"] in points_message(out, state)
    assert json.loads(state.points_json()) == [[20, 30, 0], [80, 50, 1]]
    state.undo()  # back to the first corner
    assert state.box is None and state.corner == [10, 10] and len(state.points) == 2
    state.add(5, 5, "box")
    assert state.box == [5, 5, 10, 10]
    state.undo()
    state.undo()
    assert state.corner is None and state.box is None
    state.undo()
    assert state.points == [[20.0, 30.0, 0]]
    copy = state.copy()
    copy.add(40, 40, "positive")
    assert state.points == [[20.0, 30.0, 0]] and copy.key == state.key  # the original is untouched
    state.clear()
    assert state.points == [] and state.box is None
    state.undo()  # a clear is undone too
    assert state.points == [[20.0, 30.0, 0]]
    with pytest.raises(InputError, match="upload an image"):
        PointState().add(1, 1, "positive")


def test_parse_points_and_box():
    assert parse_points("[[1, 2, 1], [3.5, 4, 0]]") == [[1, 2, 1], [3.5, 4, 0]]
    assert parse_points("") == [] and parse_points(None) == []
    for bad in ("[[1, 2", "[1, 2, 3]", '{"x": 1}'):
        with pytest.raises(InputError):
            parse_points(bad)
    assert parse_box("[1, 2, 3, 4]") == [1, 2, 3, 4] and parse_box(" ") is None
    with pytest.raises(InputError):
        parse_box("[1, 2]")
    assert issubclass(InputError, MaskAdapterError)
