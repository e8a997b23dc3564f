"""Many users at once through the running app's API: concurrent requests on distinct
photos all succeed, and what the app keeps stays bounded over many photos (counted in
the session store, which holds everything an image costs)."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from conftest import EXAMPLES, array_bytes, held_arrays
from PIL import Image
from test_concurrency import _serve

from maskadapter.engine.session import TABLES
from maskadapter.service import SegmentationService
from maskadapter.settings import Settings

pytestmark = pytest.mark.slow

BUDGET_MB = 6
PHOTOS = 9


def _distinct_photos(tmp_path, count: int, width: int = 160) -> list:
    """``count`` different photos: crops of the examples at varying offsets."""
    sources = [np.asarray(Image.open(p).convert("RGB")) for p in sorted(EXAMPLES.glob("*.png"))]
    paths = []
    for i in range(count):
        src = sources[i % len(sources)]
        h, w = src.shape[:2]
        y, x = (37 * i) % (h // 3), (53 * i) % (w // 3)
        crop = Image.fromarray(src[y : y + 2 * h // 3, x : x + 2 * w // 3])
        crop = crop.resize((width, round(crop.height * width / crop.width)))
        paths.append(tmp_path / f"photo-{i}.png")
        crop.save(paths[-1])
    return paths


def _held_bytes(store) -> int:
    """Bytes of every array and tensor the store's sessions hold, walked here."""
    sessions = list(store._sessions.values())
    return array_bytes(held_arrays([[s.image, *(getattr(s, t) for t in TABLES)] for s in sessions]))


def test_concurrent_and_sequential_requests(tmp_path):
    from gradio_client import Client, handle_file

    settings = Settings(
        tiny_random=True, device="cpu", cache_dir=str(tmp_path / "cache"), short_side=320, max_size=480,
        session_cache_mb=BUDGET_MB, concurrency=3,
    )  # fmt: skip
    service = SegmentationService(settings)
    service.start(background=False)
    store = service.wait().store
    demo, url = _serve(service)
    photos = _distinct_photos(tmp_path, PHOTOS)
    try:
        results: dict[int, object] = {}

        def request(i: int) -> None:
            client = Client(url, verbose=False, httpx_kwargs={"timeout": 600})
            try:
                out = client.predict(
                    handle_file(str(photos[i])), "cat, wall, floor", points_per_side=6, api_name="/segment_automatic"
                )
                results[i] = out[4]["image"]["width"]
            except Exception as err:  # reported below
                results[i] = err

        threads = [threading.Thread(target=request, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=600)
        assert results == {i: 160 for i in range(6)}, results

        client = Client(url, verbose=False, httpx_kwargs={"timeout": 600})
        held = []
        for path in photos[6:]:
            out = client.predict(
                handle_file(str(path)), "cat, wall, floor", points_per_side=6, api_name="/segment_automatic"
            )
            assert out[4]["segments"]
            held.append((store.nbytes, _held_bytes(store), len(store)))
    finally:
        demo.close()
    # the store's count is what its sessions really hold, and it stays within the budget
    assert all(counted == walked for counted, walked, _ in held), held
    assert max(counted for counted, _, _ in held) <= BUDGET_MB * 2**20
    # older photos lost their embeddings and results first; all 9 photos (9 x 160 x 107
    # x 3 bytes, 0.5 MB) fit, so none had to leave
    assert store.trimmed >= 1 and store.evictions == 0 and held[-1][2] == PHOTOS
    costly = [s for s in store._sessions.values() if any(getattr(s, t) for t in TABLES)]
    assert 1 <= len(costly) < PHOTOS
