"""Many users at once against `python app.py --tiny-random`: concurrent requests all
succeed, and memory stays flat over many distinct images (sessions are evicted from
the bounded store, nothing else accumulates)."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from conftest import EXAMPLES, AppProcess
from PIL import Image

pytestmark = pytest.mark.slow


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


def test_concurrent_and_sequential_requests(tmp_path):
    from gradio_client import Client, handle_file

    # a store of 64 MB holds a few tiny-model sessions, so most of the 30 are evicted
    with AppProcess(tmp_path, {"MASKADAPTER_SESSION_CACHE_MB": "64"}) as app:
        photos = _distinct_photos(tmp_path, 36)
        results: dict[int, object] = {}

        def request(i: int) -> None:
            client = Client(app.url, verbose=False)
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
            t.join(timeout=300)
        assert results == {i: 160 for i in range(6)}, results

        client = Client(app.url, verbose=False)
        rss = []
        for path in photos[6:]:
            out = client.predict(
                handle_file(str(path)), "cat, wall, floor", points_per_side=6, api_name="/segment_automatic"
            )
            assert out[4]["segments"]
            rss.append(app.rss())
        after_fifth, last = rss[4], rss[-1]
        mib = 2**20
        print(f"\nRSS after the 5th request: {after_fifth / mib:.0f} MiB; after the 30th: {last / mib:.0f} MiB")
        assert last <= 1.5 * after_fifth, (after_fifth, last)
        assert max(rss[5:]) <= 1.5 * after_fifth
    assert "Traceback" not in app.log, app.log[-3000:]
