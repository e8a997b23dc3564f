"""How failures reach people: the app's error wrappers (short messages, an id for the
unexpected, user state untouched), out-of-memory retries with smaller chunks, and
output files that can't be written."""

from __future__ import annotations

import dataclasses
import logging
import re

import gradio as gr
import numpy as np
import pytest
import torch

from maskadapter.engine.mask_settings import AutoMaskSettings
from maskadapter.engine.point_decoder import PointDecoder
from maskadapter.engine.vocabulary import build_vocabulary
from maskadapter.errors import InputError, ResourceError
from maskadapter.service import SegmentationService
from maskadapter.settings import Settings
from maskadapter.ui.events import friendly, gentle
from maskadapter.ui.present import automatic_message, plain

OPEN = AutoMaskSettings(points_per_side=8, pred_iou_thresh=0.0, stability_score_thresh=0.0)


def _broken(*args):
    raise RuntimeError("secret internal detail at /srv/models/x.pt")


def _refused(*args):
    raise InputError("the vocabulary is empty: type <b>class</b> names")


def test_api_errors_are_short_and_unexpected_ones_get_an_id(caplog):
    with pytest.raises(gr.Error) as err:
        friendly(_refused)()
    assert err.value.message == "the vocabulary is empty: type <b>class</b> names"  # plain text for API clients

    with caplog.at_level(logging.ERROR, logger="app"), pytest.raises(gr.Error) as err:
        friendly(_broken)()
    message = err.value.message
    assert "secret" not in message and "RuntimeError" not in message and "/srv" not in message
    ref = re.search(r"error id ([0-9a-f]{8})", message).group(1)
    logged = [r for r in caplog.records if ref in r.getMessage()]
    assert len(logged) == 1 and logged[0].exc_info is not None  # the traceback is in the log, under the id


def test_ui_errors_leave_every_output_and_state_alone(monkeypatch):
    toasts = []
    monkeypatch.setattr(gr, "Warning", lambda message, *a, **k: toasts.append(message))
    messages = []
    for fn, expected in ((_refused, "the vocabulary is empty"), (_broken, "error id")):
        result = gentle(4, 1)(fn)("photo", "state")
        assert len(result) == 4
        assert [r for i, r in enumerate(result) if i != 1] == [gr.skip()] * 3  # nothing else changes
        assert expected in result[1] and result[1].startswith("**Error:** ")
        messages.append(result[1])
    assert toasts == []  # one place for messages: the tab's message box, no toast over the result
    assert "&lt;b&gt;" in messages[0] and "<b>" not in messages[0]
    # an error the banner shows in full: a short line pointing there instead
    result = gentle(2, 1, shown=lambda err: "see the banner")(_refused)("photo", "state")
    assert result[1] == "**Error:** see the banner"
    # restore: the previous photo comes back when a new upload fails
    result = gentle(3, 1, restore=lambda image, state: {0: f"picture of {state}"})(_refused)("bad", "old")
    assert result[0] == "picture of old" and result[2] == gr.skip()


def test_plain_shows_markup_literally():
    for text in ("<b>x</b>", "**bold**", "[a](http://b)", "$x^2$", "a_b_c", "`code`", "# title", "| t |", "\\"):
        escaped = plain(text)
        assert "<" not in escaped and ">" not in escaped
        # every Markdown punctuation character is escaped, so none of it is markup
        unescaped = re.sub(r"\\(.)", r"\1", escaped)
        assert unescaped.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&") == text


def test_out_of_memory_retries_with_smaller_chunks(segmenter, image, monkeypatch):
    import maskadapter.engine.generator as generator
    import maskadapter.engine.segmenter as segmenter_module

    vocabulary = build_vocabulary("cat, wall")
    expected = segmenter.segment_automatic(image, vocabulary, OPEN)
    segmenter.store = type(segmenter.store)(segmenter.store.budget_bytes)  # recompute everything

    decode, embed = PointDecoder.decode, segmenter_module.mask_embeddings_from_features
    sizes = {"points": [], "masks": [], "decoded": []}

    def per_call(sam_model, features, dtype, limit):  # as if 16 prompts per call were fastest here
        sizes["points"].append(limit)
        return min(16, limit)

    def small_batches(self, coords, *args):
        sizes["decoded"].append(len(coords))
        if len(coords) > 4:  # a device too small for decoder calls of more than 4 points
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return decode(self, coords, *args)

    def small_chunks(clip, adapter, raw, dense, masks):
        sizes["masks"].append(masks.shape[1])
        if masks.shape[1] > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return embed(clip, adapter, raw, dense, masks)

    monkeypatch.setattr(generator, "prompts_per_call", per_call)
    monkeypatch.setattr(PointDecoder, "decode", small_batches)
    monkeypatch.setattr(segmenter_module, "mask_embeddings_from_features", small_chunks)
    got = segmenter.segment_automatic(image, vocabulary, OPEN)
    assert sizes["points"] == [64, 32, 16, 8, 4]  # points per batch halved until the calls fit
    # each decoder call within its batch: the grid's steps (coarse_to_fine) have 4, 12 and 48
    # points, and the first call too large is the second step's 12 points
    assert max(sizes["decoded"]) == 12 and sizes["decoded"][-1] <= 4
    assert sizes["masks"][-1] <= 2
    np.testing.assert_array_equal(got.label_map, expected.label_map)
    assert [s.label for s in got.segments] == [s.label for s in expected.segments]
    np.testing.assert_allclose([s.score for s in got.segments], [s.score for s in expected.segments], atol=1e-5)

    def never(*args):
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(segmenter_module, "mask_embeddings_from_features", never)
    with pytest.raises(ResourceError, match="ran out of memory in Mask-Adapter"):
        segmenter.segment_automatic(image, build_vocabulary("dog"), OPEN)


def test_unwritable_output_directory_still_gives_the_result(tiny_files, tmp_path, image):
    service = SegmentationService(Settings(tiny_random=True, device="cpu", cache_dir=str(tmp_path / "cache")))
    service.start(background=False)
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    service.output_dir = blocker / "outputs"  # cannot be created, even by root
    out, _ = service.automatic(image, "cat, wall", mask_settings=OPEN)
    assert out.label_map_path is None and out.json_path is None
    assert out.segments["segments"] and "Downloads are unavailable" in automatic_message(out)
    state = service.open_point_image(image)  # the photo lives in the session store, not on disk
    state.add(80, 50, "positive")
    assert service.points(state, "cat, wall").segments["segments"]


class _Payload:
    """Unpickling this would run code: weights_only loading must refuse it."""

    def __reduce__(self):
        return (exec, ("import pathlib; pathlib.Path(__import__('os').environ['PWNED']).write_text('ran')",))


def test_checkpoints_with_code_are_refused(tiny_files, tmp_path, monkeypatch):
    from maskadapter.engine.weights import build_models
    from maskadapter.errors import CheckpointError

    marker = tmp_path / "pwned"
    monkeypatch.setenv("PWNED", str(marker))
    state = torch.load(tiny_files.adapter_checkpoint, weights_only=True)
    evil = tmp_path / "adapter.pth"
    torch.save({**state, "extra": _Payload()}, evil)
    files = dataclasses.replace(tiny_files, adapter_checkpoint=evil)
    with pytest.raises(CheckpointError, match="cannot read"):
        build_models(files, "cpu")
    assert not marker.exists()


def test_a_sam2_size_loading_does_not_block_other_requests(tmp_path, image, monkeypatch):
    import threading

    import maskadapter.service as service_module

    service = SegmentationService(Settings(tiny_random=True, device="cpu", cache_dir=str(tmp_path / "cache")))
    service.start(background=False)
    base = service.wait()
    monkeypatch.setattr(SegmentationService, "sam_sizes", property(lambda self: ["tiny-random", "small"]))
    release, started = threading.Event(), threading.Event()

    def slow_download(settings, size, report):
        started.set()
        assert release.wait(60), "never released"
        return "small.pt"

    monkeypatch.setattr(service_module, "resolve_sam2_file", slow_download)
    monkeypatch.setattr(service_module, "build_sam2_model", lambda path, device, config: base.models.sam2)
    monkeypatch.setattr(service_module, "sam2_config_for", lambda settings, size: None)
    loaded = {}
    loader = threading.Thread(target=lambda: loaded.setdefault("small", service.segmenter("small")))
    loader.start()
    assert started.wait(30)
    # while "small" downloads, a request on the loaded size runs to the end
    out, _ = service.automatic(image, "cat, wall", mask_settings=OPEN, sam_size="tiny-random")
    assert out.segments["segments"] and loader.is_alive()
    release.set()
    loader.join(30)
    assert loaded["small"] is service.segmenter("small") and loaded["small"] is not base
