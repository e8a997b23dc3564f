"""The app layer: each shown picture is a file of its own; the explorable picture's
layers; stopping a run; the point tab's box field and legend; the compare table."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from maskadapter.engine.vocabulary import build_vocabulary
from maskadapter.errors import Cancelled
from maskadapter.point_prompts import PointState
from maskadapter.ui.events import Runs, reporter, served, stage
from maskadapter.ui.explore import ALL, explore, segment_names
from maskadapter.ui.present import box_text, legend_html, table_rows


def test_the_same_picture_twice_is_two_files_with_its_pixels(tmp_path):
    picture = np.random.default_rng(0).integers(0, 256, (7, 9, 3), dtype=np.uint8)
    first, second = served(picture, tmp_path / "out"), served(picture, tmp_path / "out")
    assert isinstance(first, str) and isinstance(second, str) and first != second
    for path in (first, second):
        with Image.open(path) as im:
            np.testing.assert_array_equal(np.asarray(im), picture)
    assert served(None, tmp_path) is None


def test_an_unwritable_folder_gives_the_array_back(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    picture = np.zeros((2, 2, 3), np.uint8)
    assert served(picture, blocker / "out") is picture


def test_explored_layers_are_the_segments_masks_in_the_working_frame(segmenter, image, synthetic_sam, tmp_path):
    from maskadapter.engine.mask_settings import AutoMaskSettings
    from maskadapter.output.render import class_colors

    vocabulary = build_vocabulary("cat, wall, floor")
    settings = AutoMaskSettings(points_per_side=6, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    big = np.asarray(Image.fromarray(image).resize((image.shape[1] * 3, image.shape[0] * 3)))
    segmenter.mask_side = 200  # a working frame smaller than the photo
    session = segmenter.session(big)
    result = segmenter.segment_automatic(session, vocabulary, settings, mode="per_mask")
    found = explore(big, result, tmp_path / "out")
    h, w = result.working_label_map.shape
    assert (h, w) != big.shape[:2]  # the layers are at the working size, not the photo's
    with Image.open(found.base) as base:
        assert base.size == (w, h)
    assert len(found.layers) == len(result.segments) > 1
    colors = class_colors(len(result.labels))
    for layer, seg in zip(found.layers, result.segments, strict=True):
        with Image.open(layer.path) as im:
            rgba = np.asarray(im)
        assert rgba.shape == (h, w, 4)
        np.testing.assert_array_equal(rgba[..., 3] > 0, seg.working_mask)  # the layer is the mask
        assert (rgba[seg.working_mask, :3] == colors[seg.class_id]).all()
        r, g, b = (int(v) for v in colors[seg.class_id])
        assert found.colors[layer.name] == f"#{r:02x}{g:02x}{b:02x}"
        assert layer.label == seg.label and found.details[layer.name].startswith(f"**{layer.name}**")
    # names: unique, the label numbered when it has several segments
    labels = [seg.label for seg in result.segments]
    for name, label in zip(segment_names(result), labels, strict=True):
        assert name == label if labels.count(label) == 1 else name.rsplit(" ", 1)[0] == label
    assert len(set(segment_names(result))) == len(labels)
    # one class alone: its layers only, the same files
    cls = labels[0]
    base, shown = found.shown(cls)
    assert base == found.base and [n for _, n in shown] == [x.name for x in found.layers if x.label == cls]
    assert len(found.shown(ALL)[1]) == len(found.layers)
    # the table names rows as the picture does
    assert [row[0] for row in table_rows(result, segment_names(result))] == segment_names(result)


def test_a_stopped_run_raises_at_its_next_progress_report():
    runs, seen = Runs(), []
    with runs.running("session-a", "automatic") as stop:
        report = reporter(lambda fraction, desc: seen.append((fraction, desc)), stop)
        report(0.1, "SAM-2 masks: point batch 1 of 16")
        assert not runs.stop("session-b", "automatic")  # another browser's Stop
        assert not runs.stop("session-a", "points")  # another tab's
        assert runs.stop("session-a", "automatic")
        with pytest.raises(Cancelled):
            report(0.2, "SAM-2 masks: point batch 2 of 16")
    assert seen == [(0.1, "SAM-2 masks")]  # the step, not its own count (the bar shows the whole)
    assert not runs.stop("session-a", "automatic")  # finished: nothing to stop
    assert stage("encoding class names: 391 of 391") == "encoding class names" and stage("painting") == "painting"


def test_a_newer_run_of_the_tab_stops_the_older_and_is_the_one_stop_ends():
    runs = Runs()
    with runs.running("s", "video") as old:
        with runs.running("s", "video") as new:
            assert old.is_set() and not new.is_set()  # the older run ends at its next report
            with runs.running("t", "video") as other:  # another browser's run is not touched
                assert runs.stop("s", "video")
                assert new.is_set() and not other.is_set()


def test_box_field_and_point_legend():
    state = PointState(key="k", hw=(100, 200))
    assert box_text(state) == ""
    state.add(20.4, 30, "box")
    assert box_text(state) == "first corner (20, 30): click the opposite corner"
    state.add(150, 80.6, "box")
    assert box_text(state) == "[20, 30, 150, 81]"
    assert legend_html(None) == ""


@pytest.mark.parametrize(
    "value, expected", [(None, 1), ("", 1), (3, 3), (3.0, 3), ("2", 2), (-2, None), (0, None), (1.5, None), ("x", None)]
)
def test_video_object_field_takes_whole_numbers_from_one(value, expected):
    """The Video tab's "Object" field: -2 (which the field let through) is refused with a
    message for the tab's message box, not a bare "Error" and a server traceback."""
    from maskadapter.errors import InputError
    from maskadapter.ui.video import object_number

    if expected is None:
        with pytest.raises(InputError, match="Object must be a whole number of 1 or more"):
            object_number(value)
    else:
        assert object_number(value) == expected
