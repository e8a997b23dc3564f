"""The Gradio app: real headless Chromium (Debian's chromium via Playwright), the
named API through gradio_client, per-session state and image-encoding reuse.

The browser tests run the app in this process (so encoder calls can be counted);
the API test starts `python app.py --tiny-random` as the README says.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from maskadapter.output.export import decode_rle

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-quic",
    "--no-first-run",
    "--disable-sync",
]
TIMEOUT_MS = 180_000
ROWS = "[role=row][data-index]"  # body rows of a Gradio 6 Dataframe

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {seconds} s")


# ---------------------------------------------------------------------------- in-process app


class Counter:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, *args) -> None:
        self.calls += 1


@pytest.fixture(scope="module")
def app_server(tmp_path_factory):
    """The app with tiny random models, served from this process; yields (url, counters)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    sys.path.insert(0, str(ROOT))
    import app
    from maskadapter.service import SegmentationService
    from maskadapter.settings import Settings
    from maskadapter.ui import events

    service = SegmentationService(
        Settings(
            tiny_random=True,
            device="cpu",
            cache_dir=str(tmp_path_factory.mktemp("cache")),
            short_side=320,
            max_size=480,
        )
    )
    service.start(background=False)
    models = service.wait().models
    # the sliders start at an 8 x 8 SAM-2 grid: these tests are about the page, not the grid
    fast = dataclasses.replace(service.default_mask_settings(), points_per_side=8)
    service.default_mask_settings = lambda: fast
    counters = {"sam": Counter(), "clip": Counter()}
    hooks = [
        models.sam2.image_encoder.register_forward_hook(lambda *a: counters["sam"]()),
        models.clip.visual.trunk.stem.register_forward_hook(lambda *a: counters["clip"]()),
    ]
    demo = app.build_demo(service)
    events.queue(demo, 1)
    port = _free_port()
    demo.launch(
        server_name="127.0.0.1",
        server_port=port,
        prevent_thread_lock=True,
        css=app.CSS,
        allowed_paths=[str(ROOT / "examples")],
    )
    url = f"http://127.0.0.1:{port}/"
    _wait_http(url)
    yield url, counters
    for hook in hooks:
        hook.remove()
    demo.close()


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (see .ci/run)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()


class Page:
    """A page with its console errors recorded."""

    def __init__(self, browser, url: str) -> None:
        self.context = browser.new_context(viewport={"width": 1400, "height": 1100})
        self.page = self.context.new_page()
        self.page.set_default_timeout(TIMEOUT_MS)
        self.errors: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.goto(url)
        self.page.locator("#vocabulary textarea").wait_for()

    def screenshot(self, name: str) -> None:
        ARTIFACTS.mkdir(exist_ok=True)
        self.page.wait_for_timeout(800)  # let the result's fade-in finish
        self.page.screenshot(path=str(ARTIFACTS / name), full_page=True)

    def open_point_tab(self, image: Path) -> None:
        page = self.page
        page.get_by_role("tab", name="Point prompt").click()
        page.locator("#point-image input[type=file]").set_input_files(str(image))
        page.locator("#point-image img").wait_for()
        page.get_by_text("Click on an object to add a point.").wait_for()

    def click_image(self, fx: float, fy: float, kind: str) -> None:
        """Click at a fraction (fx, fy) of the shown image, with the given click kind."""
        page = self.page
        page.locator("#click-kind").get_by_text(kind).click()
        before = self.points()
        img = page.locator("#point-image img")
        box = img.bounding_box()
        img.click(position={"x": box["width"] * fx, "y": box["height"] * fy})
        page.wait_for_function(
            "([sel, before]) => document.querySelector(sel).value !== before",
            arg=["#points-text textarea", before],
        )

    def points(self) -> str:
        return self.page.locator("#points-text textarea").input_value()

    def close(self) -> None:
        self.context.close()


def _small_copy(tmp_path: Path, name: str, width: int) -> Path:
    with Image.open(ROOT / "examples" / name) as im:
        im = im.convert("RGB")
        small = im.resize((width, round(im.height * width / im.width)))
    path = tmp_path / name.replace(".jpg", ".png")
    small.save(path)
    return path


def test_both_tabs_in_chromium(app_server, browser, tmp_path):
    url, counters = app_server
    view = Page(browser, url)
    page = view.page
    assert "Random weights" in page.locator("#banner").inner_text()

    # Automatic: upload, vocabulary, Segment -> overlay and table
    page.locator("#auto-image input[type=file]").set_input_files(str(_small_copy(tmp_path, "chelsea.png", 240)))
    page.locator("#auto-image img").wait_for()
    page.locator("#vocabulary textarea").fill("cat | kitten, blanket, wall")
    page.locator("#segment").click()
    page.locator("#auto-output img").wait_for()
    page.locator("#auto-table").get_by_text("alternatives (top 3)").wait_for()
    page.wait_for_function(f"() => document.querySelectorAll('#auto-table {ROWS}').length > 0")
    first_label = page.locator('#auto-table [data-testid="cell-0-0"]').inner_text().strip()
    assert first_label in {"cat", "blanket", "wall"}
    assert "segment" in page.locator("#auto-message").inner_text()
    view.screenshot("automatic.png")

    # Point prompt: two clicks, the second negative -> a labelled mask
    view.open_point_tab(_small_copy(tmp_path, "coffee.png", 300))
    view.click_image(0.5, 0.5, "positive point")
    page.get_by_text("alternatives:").wait_for()
    view.click_image(0.1, 0.1, "negative point")
    page.get_by_text("alternatives:").wait_for()
    points = json.loads(view.points())
    assert [p[2] for p in points] == [1, 0]
    assert abs(points[0][0] - 150) <= 3 and abs(points[1][0] - 30) <= 3
    message = page.locator("#point-message").inner_text()
    assert message.split(" (")[0].strip() in {"cat", "kitten", "blanket", "wall"}
    page.wait_for_function(f"() => document.querySelectorAll('#point-table {ROWS}').length === 1")
    view.screenshot("point_prompt.png")

    # Undo removes the negative point, Clear removes everything
    page.locator("#undo").click()
    page.wait_for_function("() => JSON.parse(document.querySelector('#points-text textarea').value).length === 1")
    page.locator("#clear").click()
    page.wait_for_function("() => document.querySelector('#points-text textarea').value === '[]'")

    # bad input: an empty vocabulary is a short message, and the points survive it
    view.click_image(0.5, 0.5, "positive point")
    page.locator("#vocabulary textarea").fill(" , ")
    page.locator("#relabel").click()
    page.get_by_text("the vocabulary is empty").first.wait_for()
    assert len(json.loads(view.points())) == 1
    assert view.errors == [], view.errors
    view.close()


def test_second_click_does_not_reencode(app_server, browser, tmp_path):
    url, counters = app_server
    view = Page(browser, url)
    view.open_point_tab(_small_copy(tmp_path, "rocket.jpg", 280))
    sam_before, clip_before = counters["sam"].calls, counters["clip"].calls
    view.click_image(0.5, 0.4, "positive point")
    view.page.get_by_text("alternatives:").wait_for()
    assert counters["sam"].calls == sam_before + 1
    assert counters["clip"].calls == clip_before + 1
    view.click_image(0.3, 0.7, "positive point")
    view.click_image(0.8, 0.2, "negative point")
    view.page.locator("#vocabulary textarea").fill("rocket, sky, smoke")
    view.page.locator("#relabel").click()
    view.page.wait_for_function("() => document.querySelector('#point-message').innerText.includes('alternatives')")
    assert len(json.loads(view.points())) == 3
    assert counters["sam"].calls == sam_before + 1  # same image: nothing re-encoded
    assert counters["clip"].calls == clip_before + 1
    assert view.errors == []
    view.close()


def test_two_sessions_do_not_share_state(app_server, browser, tmp_path):
    url, _ = app_server
    first, second = Page(browser, url), Page(browser, url)
    first.open_point_tab(_small_copy(tmp_path, "chelsea.png", 200))
    second.open_point_tab(_small_copy(tmp_path, "coffee.png", 320))
    first.click_image(0.5, 0.5, "positive point")
    second.click_image(0.2, 0.3, "positive point")
    second.click_image(0.7, 0.6, "negative point")
    first.page.get_by_text("alternatives:").wait_for()
    second.page.get_by_text("alternatives:").wait_for()
    a, b = json.loads(first.points()), json.loads(second.points())
    assert len(a) == 1 and len(b) == 2
    assert abs(a[0][0] - 100) <= 3  # half of the 200-pixel-wide image
    assert abs(b[0][0] - 64) <= 3 and b[1][2] == 0
    # each page still shows its own image (sizes differ), once the picture with the points has loaded
    loaded = (
        "() => { const img = document.querySelector('#point-image img');"
        " return img !== null && img.complete && img.naturalWidth > 0; }"
    )
    for view in (first, second):
        view.page.wait_for_function(loaded)
    sizes = [v.page.evaluate("() => document.querySelector('#point-image img').naturalWidth") for v in (first, second)]
    assert sizes == [200, 320]
    first.page.locator("#undo").click()
    first.page.wait_for_function("() => document.querySelector('#points-text textarea').value === '[]'")
    assert len(json.loads(second.points())) == 2
    assert first.errors == [] and second.errors == []
    first.close()
    second.close()


def test_compare_tab_shows_both_methods(app_server, browser, tmp_path):
    url, _ = app_server
    view = Page(browser, url)
    page = view.page
    page.get_by_role("tab", name="Compare").click()
    page.locator("#compare-image input[type=file]").set_input_files(str(_small_copy(tmp_path, "coffee.png", 240)))
    page.locator("#compare-image img").wait_for()
    page.locator("#vocabulary textarea").fill("cup | mug, saucer, table, spoon")
    page.locator("#compare").click()
    page.locator("#compare-message").get_by_text("changed label").wait_for()
    for key in ("adapter", "pooling"):
        page.locator(f"#compare-{key} img").wait_for()
        page.wait_for_function(f"() => document.querySelectorAll('#compare-{key}-table {ROWS}').length > 0")
    sources = {page.locator(f"#compare-{key} img").get_attribute("src") for key in ("adapter", "pooling")}
    assert len(sources) == 2  # two pictures
    assert "Mask-Adapter" in page.locator("#compare-adapter").inner_text()
    assert "mask pooling" in page.locator("#compare-pooling").inner_text()
    view.screenshot("compare.png")
    assert view.errors == [], view.errors
    view.close()


def _no_error_badge(page, selector: str) -> None:
    """The component is shown normally: no error status in place of its content."""
    text = page.locator(selector).inner_text()
    assert "Error" not in text, (selector, text)
    assert page.locator(f"{selector} .error").count() == 0, selector


def test_errors_keep_the_photo_points_and_result(app_server, browser, tmp_path):
    url, _ = app_server
    view = Page(browser, url)
    page = view.page
    vocabulary = page.locator("#vocabulary textarea")

    # Automatic: a result, then a failed run (empty vocabulary), then a new run
    page.locator("#auto-image input[type=file]").set_input_files(str(_small_copy(tmp_path, "chelsea.png", 240)))
    page.locator("#auto-image img").wait_for()
    vocabulary.fill("cat, wall")
    page.locator("#segment").click()
    page.wait_for_function(f"() => document.querySelectorAll('#auto-table {ROWS}').length > 0")
    rows = page.locator(f"#auto-table {ROWS}").count()
    overlay = page.locator("#auto-output img").get_attribute("src")
    vocabulary.fill(" , | ")
    page.locator("#segment").click()
    page.locator("#auto-message").get_by_text("the vocabulary is empty").wait_for()
    assert page.locator("#auto-image img").is_visible() and page.locator("#auto-output img").is_visible()
    assert page.locator("#auto-output img").get_attribute("src") == overlay  # the previous result stays
    assert page.locator(f"#auto-table {ROWS}").count() == rows
    for selector in ("#auto-image", "#auto-output", "#auto-table"):
        _no_error_badge(page, selector)
    view.screenshot("automatic_error.png")
    vocabulary.fill("cat, wall, floor")
    page.locator("#segment").click()
    page.locator("#auto-message").get_by_text("segment").wait_for()
    page.wait_for_function("() => !document.querySelector('#auto-message').innerText.includes('empty')")

    # Point prompt: a result, then an empty vocabulary and a zero-size box (bad clicks)
    view.open_point_tab(_small_copy(tmp_path, "coffee.png", 300))
    view.click_image(0.5, 0.5, "positive point")
    page.get_by_text("alternatives:").wait_for()
    page.wait_for_function(f"() => document.querySelectorAll('#point-table {ROWS}').length === 1")

    def click_and_wait_for(fx: float, fy: float, kind: str, message: str) -> None:
        page.locator("#click-kind").get_by_text(kind).click()
        img = page.locator("#point-image img")
        box = img.bounding_box()
        img.click(position={"x": box["width"] * fx, "y": box["height"] * fy})
        page.locator("#point-message").get_by_text(message).wait_for()

    vocabulary.fill(" , ")
    click_and_wait_for(0.3, 0.3, "positive point", "the vocabulary is empty")
    assert len(json.loads(view.points())) == 1  # the refused click was not added
    assert page.locator(f"#point-table {ROWS}").count() == 1  # the previous result stays
    for selector in ("#point-image", "#point-table"):
        _no_error_badge(page, selector)
    assert page.locator("#point-image img").is_visible()
    vocabulary.fill("mug, table")
    click_and_wait_for(0.2, 0.2, "box corner", "alternatives")  # first corner: added (the message was the error)
    click_and_wait_for(0.2, 0.2, "box corner", "pixel")  # the same spot again: an empty box
    assert [p[2] for p in json.loads(view.points())] == [1]
    _no_error_badge(page, "#point-image")
    view.screenshot("point_error.png")
    view.click_image(0.6, 0.6, "positive point")  # clicking still works after the errors
    page.wait_for_function("() => document.querySelector('#point-message').innerText.includes('alternatives')")
    assert [p[2] for p in json.loads(view.points())] == [1, 1]
    assert view.errors == [], view.errors
    view.close()


# ---------------------------------------------------------------------------- the README's way


@pytest.fixture(scope="module")
def app_process(tmp_path_factory):
    """`python app.py --tiny-random` as a separate process, as a user starts it."""
    port = _free_port()
    env = {
        **os.environ,
        "MASKADAPTER_CACHE_DIR": str(tmp_path_factory.mktemp("cache")),
        "MASKADAPTER_SHORT_SIDE": "320",
        "MASKADAPTER_MAX_SIZE": "480",
        "GRADIO_ANALYTICS_ENABLED": "False",
    }
    log = tmp_path_factory.mktemp("log") / "app.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "app.py", "--tiny-random", "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_http(f"http://127.0.0.1:{port}/")
        yield f"http://127.0.0.1:{port}/"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        assert "Traceback" not in log.read_text(), log.read_text()[-3000:]


def test_api_through_gradio_client(app_process, tmp_path):
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    client = Client(app_process, verbose=False)
    api = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert {"/segment_automatic", "/segment_points", "/compare"} <= set(api)
    params = [p["parameter_name"] for p in api["/segment_automatic"]["parameters"]]
    assert params[:2] == ["image", "vocabulary"]
    assert all(p["parameter_has_default"] for p in api["/segment_automatic"]["parameters"][1:])
    assert [p["parameter_name"] for p in api["/segment_points"]["parameters"]][:3] == ["image", "points", "vocabulary"]

    photo = _small_copy(tmp_path, "chelsea.png", 225)
    w, h = Image.open(photo).size
    overlay, message, table, files, segments = client.predict(
        handle_file(str(photo)), "cat | kitten, wall, floor", points_per_side=6, api_name="/segment_automatic"
    )
    picture = np.asarray(Image.open(overlay))
    assert picture.shape[1] == w and picture.shape[0] > h  # overlay with a legend below
    assert segments["image"]["width"] == w and segments["labels"] == ["cat", "wall", "floor"]
    assert len(segments["segments"]) >= 1 and len(table["data"]) == len(segments["segments"])
    for seg in segments["segments"]:
        assert seg["label"] in segments["labels"]
        assert decode_rle(seg["segmentation"]).shape == (h, w)
    assert sorted(Path(f).suffix for f in files) == [".json", ".png"]
    assert json.loads(Path(next(f for f in files if f.endswith(".json"))).read_text())["labels"] == segments["labels"]

    overlay, segments = client.predict(
        handle_file(str(photo)), json.dumps([[110, 75, 1], [10, 10, 0]]), "cat, wall", api_name="/segment_points"
    )
    assert np.asarray(Image.open(overlay)).shape[:2] == (h, w)
    assert len(segments["segments"]) == 1
    seg = segments["segments"][0]
    assert seg["label"] in ("cat", "wall") and len(seg["top5"]) == 2
    assert decode_rle(seg["segmentation"]).shape == (h, w)

    adapter, pooling, message, adapter_table, pooling_table, adapter_segments, pooling_segments = client.predict(
        handle_file(str(photo)), "cat | kitten, wall, floor", points_per_side=6, api_name="/compare"
    )
    assert "changed label" in message
    assert np.asarray(Image.open(adapter)).shape[1] == np.asarray(Image.open(pooling)).shape[1] == w
    for segments, table in ((adapter_segments, adapter_table), (pooling_segments, pooling_table)):
        assert segments["labels"] == ["cat", "wall", "floor"] and len(table["data"]) == len(segments["segments"])

    with pytest.raises(AppError, match="outside the 225x150 image"):
        client.predict(handle_file(str(photo)), "[[900, 10, 1]]", "cat", api_name="/segment_points")
    with pytest.raises(AppError, match="points must be JSON"):
        client.predict(handle_file(str(photo)), "[[1, 2", "cat", api_name="/segment_points")
