"""The session store under threads and budgets, model tokens, and the bound on loaded
SAM-2 sizes."""

from __future__ import annotations

import gc
import threading
import time

import numpy as np
import pytest
import torch

from maskadapter import service as service_module
from maskadapter.engine.runtime import model_token
from maskadapter.engine.session import ImageSession, SessionStore, key_mentions
from maskadapter.engine.weights import TINY_SAM2_CONFIG, build_sam2_model
from maskadapter.service import SegmentationService
from maskadapter.settings import Settings


def _session(key: str, side: int = 10) -> ImageSession:
    return ImageSession(image=np.zeros((side, side, 3), np.uint8), key=key)


def _in_threads(n: int, fn) -> list:
    start, out = threading.Barrier(n), [None] * n

    def run(i: int) -> None:
        start.wait()
        try:
            out[i] = fn(i)
        except Exception as err:  # returned to the caller
            out[i] = err

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return out


def test_once_computes_once_while_others_wait():
    session, calls = _session("a"), []

    def compute():
        calls.append(1)
        time.sleep(0.3)  # the others arrive meanwhile
        return torch.ones(3)

    out = _in_threads(8, lambda i: session.once("masks", "k", compute))
    assert len(calls) == 1
    assert sum(computed for _, computed in out) == 1 and all(value is out[0][0] for value, _ in out)
    assert session.peek("masks", "k") is out[0][0]


def test_a_failed_computation_is_made_again_by_a_waiter():
    session, calls = _session("a"), []

    def compute():
        calls.append(threading.current_thread().name)
        time.sleep(0.2)
        if len(calls) == 1:
            raise RuntimeError("cancelled")
        return "value"

    out = _in_threads(4, lambda i: session.once("probs", "k", compute))
    assert len(calls) == 2  # the first failed; one waiter computed it; the other two took that
    assert sum(isinstance(o, RuntimeError) for o in out) == 1
    assert sorted(o[0] for o in out if not isinstance(o, Exception)) == ["value"] * 3


def test_store_drops_costs_before_photos_and_counts_exactly():
    image_bytes = 10 * 10 * 3
    store = SessionStore(budget_bytes=3 * image_bytes + 400 + 100)
    sessions = [store.adopt(_session(k)) for k in "abc"]
    for session in sessions:  # 400 bytes of costs each (100 float32)
        session.once("clip_cache", "f", lambda: torch.zeros(100))
        store.update(session)
    # a, b, c: photos 900 + costs 1200 > 1400: a's and b's costs go (oldest first), c's stay
    assert store.nbytes == 3 * image_bytes + 400 and store.trimmed == 2 and store.evictions == 0
    assert [s.peek("clip_cache", "f") is None for s in sessions] == [True, True, False]
    assert len(store) == 3 and all(k in store for k in "abc")

    store.get("a")  # a is now the most recently used photo
    for k in "de":  # photos alone: 5 x 300 + c's 400 > 1400: c's costs go, then b leaves (oldest)
        store.adopt(_session(k))
    assert store.nbytes == 4 * image_bytes and store.evictions == 1
    assert "b" not in store and all(k in store for k in "acde")

    one = SessionStore(budget_bytes=10)  # the session in use stays, even alone over budget
    big = one.adopt(_session("big", side=100))
    assert one.get("big") is big and one.nbytes == 100 * 100 * 3


def test_store_count_is_safe_while_sessions_are_written():
    store = SessionStore(budget_bytes=10**9)
    session = store.adopt(_session("a"))

    def write(i: int) -> int:
        for j in range(300):
            session.once("probs", (i, j), lambda: torch.zeros(4))
            store.update(session)
        return i

    assert _in_threads(6, write) == list(range(6))  # no "dictionary changed size during iteration"
    assert store.nbytes == 300 + 6 * 300 * 16


def test_model_tokens_are_never_reused():
    first = torch.nn.Linear(2, 2)
    token = model_token(first)
    assert model_token(first) == token  # stable for the object's life
    del first
    gc.collect()
    seen = [torch.nn.Linear(2, 2) for _ in range(50)]  # Python reuses the address soon
    assert all(model_token(m) != token for m in seen)
    assert len({model_token(m) for m in seen}) == 50


def test_key_mentions():
    token = model_token(torch.nn.Linear(1, 1))
    assert key_mentions(((token, "x"), 3, "v"), token) and key_mentions(token, token)
    assert not key_mentions(((1, "x"), 3), token) and not key_mentions((1, (2, (3,))), token)


def test_sam2_sizes_beyond_the_bound_are_unloaded(tmp_path, monkeypatch, image):
    monkeypatch.setattr(SegmentationService, "sam_sizes", property(lambda self: ["tiny-random", "s1", "s2", "s3"]))
    monkeypatch.setattr(service_module, "resolve_sam2_file", lambda settings, size, report=None: None)
    monkeypatch.setattr(service_module, "sam2_config_for", lambda settings, size: TINY_SAM2_CONFIG)
    build = lambda path, device, config: build_sam2_model(None, device, config)  # noqa: E731
    monkeypatch.setattr(service_module, "build_sam2_model", build)
    service = SegmentationService(Settings(tiny_random=True, device="cpu", cache_dir=str(tmp_path), sam_models=2))
    service.start(background=False)
    base = service.segmenter(None)

    one = service.segmenter("s1")
    session = one.session(image)
    one.sam_embedding(session)
    token = model_token(one.models.sam2)
    assert list(service._by_size) == ["tiny-random", "s1"] and session.peek("sam_cache", token)

    assert service.segmenter("tiny-random") is base
    service.segmenter("s2")  # s1 is the least recently used size other than the base: unloaded
    assert list(service._by_size) == ["tiny-random", "s2"]
    assert session.peek("sam_cache", token) is None  # what s1 computed went with it
    assert service.segmenter("s1") is not one  # loaded again: a new model
    assert list(service._by_size) == ["tiny-random", "s1"]

    with pytest.raises(Exception, match="at least 1"):
        Settings(sam_models=0)


def test_store_stays_consistent_while_photos_arrive_and_leave():
    store = SessionStore(budget_bytes=5 * 300)  # five 10 x 10 photos

    def arrive(i: int) -> int:
        for j in range(200):
            session = store.adopt(_session(f"{i}-{j}"))
            session.once("probs", "p", lambda: torch.zeros(25))  # 100 bytes
            store.update(session)
            if j % 7 == 0:
                store.discard(f"{i}-{j - 1}")
        return i

    assert _in_threads(6, arrive) == list(range(6))  # no KeyError from a session adopted meanwhile
    walked = sum(s.nbytes() for s in store._sessions.values())
    assert store.nbytes == walked <= 5 * 300 + 100 and len(store) == len(store._sizes)


def test_held_sessions_are_neither_trimmed_nor_evicted():
    image_bytes = 10 * 10 * 3
    store = SessionStore(budget_bytes=2 * image_bytes)
    with store.hold(_session("a")) as a:
        a.once("clip_cache", "f", lambda: torch.zeros(100))
        store.update(a)
        for k in "bcd":  # each arrival is over budget: the others go, the held one stays, whole
            store.adopt(_session(k))
        assert "a" in store and a.peek("clip_cache", "f") is not None and store.held("a")
        assert store.nbytes == sum(s.nbytes() for s in store._sessions.values())  # the held one is counted
    assert not store.held("a")  # released: the others made room at once; a, the most recent, stays whole
    assert list(store._sessions) == ["a"] and a.peek("clip_cache", "f") is not None
    store.adopt(_session("e"))  # now a's costs can go too
    assert a.peek("clip_cache", "f") is None and store.nbytes <= 2 * image_bytes


@pytest.mark.parametrize("budget", ["nothing", "photos"])
def test_requests_on_a_tiny_budget_compute_each_stage_once(segmenter, image, budget):
    """Four images compared at once (masks, CLIP features and both classifications
    each made once per request) with a budget that keeps no session's costs (and, for
    "nothing", no photo either): the session a request holds is neither trimmed nor
    evicted before it ends, so nothing is computed twice and the photo stays in the
    store while its request runs."""
    from maskadapter.engine.mask_settings import AutoMaskSettings
    from maskadapter.engine.vocabulary import build_vocabulary

    segmenter.store = SessionStore(budget_bytes=1 if budget == "nothing" else 4 * image.nbytes)
    images = [np.ascontiguousarray(np.roll(image, 7 * k, axis=1)) for k in range(4)]
    vocabulary, settings = build_vocabulary("cat, wall, floor"), AutoMaskSettings(points_per_side=4)
    missing = []

    def run(i: int) -> int:
        session = ImageSession.from_image(images[i])

        def progress(fraction: float, message: str) -> None:
            if session.key not in segmenter.store:  # what the point tab would call "no longer on the server"
                missing.append((i, message))
            time.sleep(0.002)  # let the other requests run between stages

        segmenter.compare(session, vocabulary, settings, progress=progress)
        return i

    assert _in_threads(4, run) == [0, 1, 2, 3]
    stats = segmenter.stats
    assert [stats[k] for k in ("sam_image_encodings", "clip_image_encodings", "mask_generations")] == [4, 4, 4]
    assert stats["adapter_runs"] == stats["pooling_runs"] == 4
    assert missing == []
    assert segmenter.store.nbytes == sum(s.nbytes() for s in segmenter.store._sessions.values())
