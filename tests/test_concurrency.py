"""Many users on one photo at once, through the running app's API.

Eleven clients send the same photo together: the automatic path with two vocabularies
and two grids (one request twice), the comparison, and clicks with two vocabularies.
Every answer must equal the same request made alone (by a second service on the same
models), and each stage must have run exactly once per distinct input: SAM-2 and CLIP
encode the photo once, SAM-2 makes masks once per grid, the adapter classifies once
per (grid, vocabulary). The encoders are slowed down, so that a request that checks
"already computed?" without waiting for the one computing would compute again.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import urllib.request
from collections import Counter

import numpy as np
import pytest
from conftest import small_image
from PIL import Image

import app
from maskadapter.engine.generator import coarse_to_fine
from maskadapter.point_prompts import parse_points
from maskadapter.service import SegmentationService
from maskadapter.settings import Settings
from maskadapter.ui import events
from maskadapter.ui.handlers import mask_settings
from maskadapter.ui.present import automatic_message, compare_message, table_rows

pytestmark = pytest.mark.slow

CLICK = "[[80, 50, 1]]"
# (endpoint, vocabulary, points per side or click); the first request is sent twice
REQUESTS = [
    ("automatic", "cat, wall, floor", 6),
    ("automatic", "cat, wall, floor", 6),
    ("automatic", "kitten, blanket", 6),
    ("automatic", "cat, wall, floor", 5),
    ("automatic", "kitten, blanket", 5),
    ("compare", "cat, wall, floor", 6),
    ("compare", "kitten, blanket", 5),
    ("points", "cat, wall, floor", CLICK),
    ("points", "kitten, blanket", CLICK),
    ("points", "cat, wall, floor", "[[30, 90, 1], [120, 20, 0]]"),
    ("automatic", "dog, sofa", 6),
]


def _settings(tmp_path) -> Settings:
    return Settings(
        tiny_random=True, device="cpu", cache_dir=str(tmp_path / "cache"), short_side=224, max_size=320, concurrency=6
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(service: SegmentationService):
    demo = app.build_demo(service)
    events.queue(demo, service.settings.concurrency)
    port = _free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return demo, url
        except OSError:
            assert time.monotonic() < deadline, "the app did not start"
            time.sleep(0.3)


def _slow_counted(module, counter: Counter, name: str, seconds: float):
    """A forward hook that counts the calls of ``module`` and makes each take longer."""

    def hook(*args):
        counter[name] += 1
        time.sleep(seconds)

    return module.register_forward_hook(hook)


def _via_api(client, path: str, kind: str, vocabulary: str, arg) -> dict:
    from gradio_client import handle_file

    image = handle_file(path)
    if kind == "points":
        _, segments = client.predict(image, arg, vocabulary, api_name="/segment_points")
        return {"segments": segments}
    if kind == "compare":
        out = client.predict(image, vocabulary, points_per_side=arg, api_name="/compare")
        return {"message": out[2], "adapter": out[5], "pooling": out[6]}
    out = client.predict(image, vocabulary, points_per_side=arg, api_name="/segment_automatic")
    return {"message": out[1], "rows": out[2]["data"], "segments": out[4]}


def _alone(service: SegmentationService, image, kind: str, vocabulary: str, arg) -> dict:
    """The same request made alone, straight on a service, as the API would answer it."""
    if kind == "points":
        state = service.prompt_state(image, parse_points(arg), None)
        found = {"segments": service.points(state, vocabulary).segments}
    else:
        settings = mask_settings(service.default_mask_settings(), arg, *_open_filters(service))
        if kind == "compare":
            compared = service.compare(image, vocabulary, mask_settings=settings)
            found = {
                "message": compare_message(compared),
                "adapter": compared.adapter.segments,
                "pooling": compared.pooling.segments,
            }
        else:
            out, _ = service.automatic(image, vocabulary, mask_settings=settings)
            found = {"message": automatic_message(out), "rows": table_rows(out.result), "segments": out.segments}
    return json.loads(json.dumps(found))  # as it travels


def _open_filters(service: SegmentationService) -> tuple[float, float]:
    defaults = service.default_mask_settings()
    return defaults.pred_iou_thresh, defaults.stability_score_thresh


def test_one_photo_many_clients(tmp_path):
    from gradio_client import Client

    image = small_image(width=160).copy()
    # a pixel of its own: Gradio's upload folder is shared by every app on this machine and
    # keyed by content, and an app that stops deletes its uploads (a test run beside this one)
    image[0, 0] = np.frombuffer(os.urandom(3), np.uint8)
    path = tmp_path / "photo.png"
    Image.fromarray(image).save(path)

    service = SegmentationService(_settings(tmp_path))
    service.start(background=False)
    segmenter = service.wait()
    calls: Counter = Counter()
    hooks = [
        _slow_counted(segmenter.models.sam2.image_encoder, calls, "sam", 0.6),
        _slow_counted(segmenter.models.clip.visual.trunk.stem, calls, "clip", 0.6),
    ]
    demo, url = _serve(service)
    try:
        # a slow machine (CI, other tests beside this one) answers late, but answers
        clients = [Client(url, verbose=False, httpx_kwargs={"timeout": 600}) for _ in REQUESTS]
        answers: list = [None] * len(REQUESTS)
        start = threading.Barrier(len(REQUESTS))

        def send(i: int) -> None:
            start.wait()
            try:
                answers[i] = _via_api(clients[i], str(path), *REQUESTS[i])
            except Exception as err:  # reported below
                answers[i] = err

        threads = [threading.Thread(target=send, args=(i,)) for i in range(len(REQUESTS))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=600)
    finally:
        for hook in hooks:
            hook.remove()
        demo.close()
    failed = [(REQUESTS[i], a) for i, a in enumerate(answers) if not isinstance(a, dict)]
    assert not failed, failed

    # each stage once per distinct input, whatever the interleaving
    automatic = {(v, g) for kind, v, g in REQUESTS if kind != "points"}  # (vocabulary, grid) pairs
    compared = {(v, g) for kind, v, g in REQUESTS if kind == "compare"}
    clicks = sum(kind == "points" for kind, _, _ in REQUESTS)
    assert calls == {"sam": 1, "clip": 1}
    assert segmenter.stats["sam_image_encodings"] == 1 and segmenter.stats["clip_image_encodings"] == 1
    assert segmenter.stats["mask_generations"] == len({g for _, g in automatic}) == 2
    assert segmenter.stats["adapter_runs"] == len(automatic) + clicks == 5 + 3
    # a request that makes a grid's masks step by step (/segment_automatic; /compare makes
    # them at once) also names the masks of its steps before the last, each step once
    steps_before_last = sum(len(coarse_to_fine(g)) - 1 for g in {g for _, g in automatic})
    assert segmenter.stats["step_adapter_runs"] <= steps_before_last
    assert segmenter.stats["pooling_runs"] == len(compared) == 2
    session = segmenter.store.get(segmenter.session(image).key)
    assert len(segmenter.store) == 1 and len(session.masks) == 2 and len(session.probs) == 5 + 2

    # every answer is the answer the request gets alone
    alone = SegmentationService(_settings(tmp_path / "alone"))
    alone.start(background=False)
    for request, answer in zip(REQUESTS, answers, strict=True):
        expected = _alone(alone, image, *request)
        assert answer == expected, request
    assert any(a["segments"]["segments"] for a in answers if "segments" in a)  # something was found
