"""The Gradio app: real headless Chromium (Debian's chromium via Playwright), the
named API through gradio_client, per-session state and image-encoding reuse.

The browser tests run the app in this process (so encoder calls can be counted);
the API test starts `python app.py --tiny-random` as the README says.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import socket
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SyntheticSAM
from PIL import Image
from playwright.sync_api import TimeoutError as PlaywrightTimeout

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
SCREENSHOTS = ROOT / "docs" / "screenshots"  # README's and docs' pictures, taken here from the running app
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

    port = _free_port()
    settings = Settings(
        tiny_random=True,
        device="cpu",
        cache_dir=str(tmp_path_factory.mktemp("cache")),
        short_side=320,
        max_size=480,
        host="127.0.0.1",
        port=port,
    )
    service = SegmentationService(settings)
    service.start(background=False)
    models = service.wait().models
    # the sliders start at an 8 x 8 SAM-2 grid: these tests are about the page, not the grid
    fast = dataclasses.replace(service.default_mask_settings(), points_per_side=8)
    service.default_mask_settings = lambda: fast
    counters = {"sam": Counter(), "clip": Counter(), "decoder": Counter()}
    slow = threading.Event()  # set: each SAM-2 decoder call takes 0.1 s more (a long run to cancel)

    def decoder_hook(*args):
        counters["decoder"]()
        if slow.is_set():
            time.sleep(0.1)

    hooks = [
        models.sam2.image_encoder.register_forward_hook(lambda *a: counters["sam"]()),
        models.clip.visual.trunk.stem.register_forward_hook(lambda *a: counters["clip"]()),
        models.sam2.sam_prompt_encoder.register_forward_hook(decoder_hook),  # once per decoder call
    ]
    counters["slow"] = slow
    counters["models"] = models  # for SyntheticSAM (varied masks) in a test
    demo = app.build_demo(service)
    events.queue(demo, 1)
    demo.launch(**app.launch_options(settings))  # as app.main launches it (no MCP: not asked for)
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


def _same_picture(path: Path, png: bytes) -> bool:
    """Whether the picture at ``path`` has the size of ``png`` and differs from it in under
    1% of its pixels (the timings of status lines, a caret): the committed screenshot is
    then kept, so a test run leaves the checkout as it was."""
    if not path.is_file():
        return False
    with Image.open(path) as old, Image.open(io.BytesIO(png)) as new:
        a, b = np.asarray(old.convert("RGB")), np.asarray(new.convert("RGB"))
    return a.shape == b.shape and float((a != b).any(-1).mean()) < 0.01


# records every ETA Gradio shows ("1.2/105.3s": elapsed / expected) in window.etas
ETA_WATCH = """
window.etas = [];
new MutationObserver(() => {
  for (const el of document.querySelectorAll('.progress-text')) {
    const text = el.textContent.trim();
    if (/\\d\\/\\d+(\\.\\d+)?s/.test(text) && !window.etas.includes(text)) window.etas.push(text);
  }
}).observe(document, {subtree: true, childList: true, characterData: true});
"""


class Page:
    """A page with its console errors (and any ETA shown, ``etas``) recorded."""

    def __init__(self, browser, url: str, width: int = 1400) -> None:
        height = 1100 if width > 800 else 844
        self.context = browser.new_context(viewport={"width": width, "height": height})
        self.page = self.context.new_page()
        self.page.set_default_timeout(int(os.environ.get("BROWSER_TIMEOUT_MS", TIMEOUT_MS)))
        self.errors: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.add_init_script(ETA_WATCH)
        self.page.goto(url)
        self.page.locator("#vocabulary textarea").wait_for()

    def screenshot(self, name: str, docs: bool = False) -> None:
        """The whole page as test-artifacts/NAME, and as docs/screenshots/NAME (``docs``)
        unless the picture there already shows the same page (``_same_picture``)."""
        self.page.wait_for_timeout(800)  # let the result's fade-in finish
        png = self.page.screenshot(full_page=True)
        ARTIFACTS.mkdir(exist_ok=True)
        (ARTIFACTS / name).write_bytes(png)
        if docs and not _same_picture(SCREENSHOTS / name, png):
            (SCREENSHOTS / name).write_bytes(png)

    def segment(self, image: Path, vocabulary: str) -> None:
        """Automatic tab: upload, vocabulary, Segment, and wait for the table's rows."""
        page = self.page
        page.locator("#auto-image input[type=file]").set_input_files(str(image))
        page.locator("#auto-image img").wait_for()
        page.locator("#vocabulary textarea").fill(vocabulary)
        page.locator("#segment").click()
        self.wait_for_final()

    def wait_for_final(self) -> None:
        """Until the Automatic tab shows a run's last picture (its rows; no step before the last)."""
        self.page.wait_for_function(
            f"() => document.querySelectorAll('#auto-table {ROWS}').length > 0"
            " && !document.querySelector('#auto-message').innerText.includes('refining')"
        )
        self.page.locator("#auto-output img.base-image").wait_for()

    def clipped_cells(self, selector: str) -> list[str]:
        """The texts of the table's cells (headers too) that do not fit their cell."""
        return self.page.evaluate(
            """(sel) => [...document.querySelectorAll(sel + ' td, ' + sel + ' th')]
                 .filter((c) => c.offsetParent !== null && c.scrollWidth > c.clientWidth + 1)
                 .map((c) => c.innerText)""",
            selector,
        )

    def overlapping_messages(self) -> list[str]:
        """Pairs of visible message boxes, progress bars and toasts whose boxes overlap."""
        return self.page.evaluate(
            """() => {
                const els = [...document.querySelectorAll('.status-line, .toast-body, .progress-bar-wrap, .eta-bar')]
                  .filter((e) => e.offsetParent !== null);
                const out = [];
                for (let i = 0; i < els.length; i++) for (let j = i + 1; j < els.length; j++) {
                  if (els[i].contains(els[j]) || els[j].contains(els[i])) continue;
                  const a = els[i].getBoundingClientRect(), b = els[j].getBoundingClientRect();
                  if (a.left < b.right && b.left < a.right && a.top < b.bottom && b.top < a.bottom)
                    out.push(els[i].className + ' / ' + els[j].className);
                }
                return out;
            }"""
        )

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
        self.settled_picture()
        img = page.locator("#point-image img")
        box = img.bounding_box()
        img.click(position={"x": box["width"] * fx, "y": box["height"] * fy})
        page.wait_for_function(
            "([sel, before]) => document.querySelector(sel).value !== before",
            arg=["#points-text textarea", before],
        )

    def settled_picture(self) -> None:
        """Until the point tab's picture is loaded and has not changed for 0.7 s: each
        answer (and the upload) replaces it, and a click that lands while the browser
        swaps it is lost in the page itself."""
        self.page.wait_for_function(
            """() => new Promise((done) => {
                const img = () => document.querySelector('#point-image img');
                const src = img() && img().src;
                setTimeout(() => done(!!src && img().src === src && img().complete && img().naturalWidth > 0), 700);
            })"""
        )

    def points(self) -> str:
        return self.page.locator("#points-text textarea").input_value()

    def etas(self) -> list[str]:
        """Every ETA the page has shown (Gradio's "elapsed/expected s")."""
        return self.page.evaluate("() => window.etas")

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

    # Automatic: upload, vocabulary, Segment -> the explorable picture and the table
    view.segment(_small_copy(tmp_path, "chelsea.png", 240), "cat | kitten, blanket, wall")
    page.locator("#auto-table").get_by_text("alternatives (top 3)").wait_for()
    first_label = page.locator('#auto-table [data-testid="cell-0-0"]').inner_text().strip()
    assert first_label in {"cat", "blanket", "wall"}
    assert "segment" in page.locator("#auto-message").inner_text()
    rows = page.locator(f"#auto-table {ROWS}").count()
    assert page.locator("#auto-output img.mask").count() == page.locator("#auto-output .legend-item").count() == rows

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
    legend = page.locator("#point-legend").inner_text()
    assert message.split(" (")[0].strip() in legend  # the point tab has a legend too

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

    # five quick clicks, each made while earlier ones are processed: all five applied
    page = view.page
    page.locator("#click-kind").get_by_text("positive point").click()
    spots = [(0.1 + 0.2 * k, 0.45) for k in range(5)]
    # five clicks in one go, before any answer (each answer replaces the picture); first
    # the last answer's picture, loaded and no longer changing
    view.settled_picture()
    page.evaluate(
        """(spots) => {
            const img = document.querySelector('#point-image img'), r = img.getBoundingClientRect();
            for (const [fx, fy] of spots)
              img.dispatchEvent(new MouseEvent('click', {bubbles: true, clientX: r.left + r.width * fx,
                                                         clientY: r.top + r.height * fy}));
        }""",
        spots,
    )
    try:
        page.wait_for_function(
            "() => JSON.parse(document.querySelector('#points-text textarea').value).length === 8", timeout=60_000
        )
    except PlaywrightTimeout:
        message = page.locator("#point-message").inner_text()
        raise AssertionError(f"points {view.points()}, message {message!r}") from None
    points = json.loads(view.points())[3:]
    # all five applied; their order is the order their requests reached the server, which
    # the page does not keep for clicks sent together
    assert sorted(round(p[0] / 280, 1) for p in points) == [round(fx, 1) for fx, _ in spots]
    assert all(p[2] == 1 for p in points)
    assert view.etas() == []  # no ETA from the earlier clicks' times (the first one encoded the photo)
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


def test_compare_slider_and_changed_masks(app_server, browser, tmp_path):
    url, _ = app_server
    view = Page(browser, url)
    page = view.page
    page.get_by_role("tab", name="Compare").click()
    page.locator("#compare-image input[type=file]").set_input_files(str(_small_copy(tmp_path, "coffee.png", 240)))
    page.locator("#compare-image img").wait_for()
    page.locator("#vocabulary textarea").fill("cup | mug, saucer, table, spoon")
    page.locator("#compare").click()
    page.locator("#compare-message").get_by_text("changed label").wait_for()
    page.wait_for_function("() => document.querySelectorAll('#compare-slider img').length === 2")
    pictures = page.locator("#compare-slider img")
    sources = {pictures.nth(i).get_attribute("src") for i in range(2)}
    assert len(sources) == 2  # Mask-Adapter's and plain pooling's overlays, one over the other
    for i in range(2):  # the same photo size: the slider wipes one over the other
        page.wait_for_function("(i) => document.querySelectorAll('#compare-slider img')[i].complete", arg=i)
    sizes = page.evaluate(
        "() => [...document.querySelectorAll('#compare-slider img')]"
        ".map(i => [i.naturalWidth, i.naturalHeight])"
    )
    assert sizes[0] == sizes[1] and sizes[0][0] == 240

    # the changed masks are listed, as many as the message counts
    changed = int(page.locator("#compare-message").inner_text().split(" of ")[0].split()[-1])
    # (a long table is virtualised: only the rows in view are in the page)
    shown = f"document.querySelectorAll('#compare-changes {ROWS}').length"
    page.wait_for_function(f"(n) => {{ const k = {shown}; return n ? k > 0 && k <= n : !k; }}", arg=changed)

    # move the slider: the top picture's visible part follows the handle
    clip = "() => [...document.querySelectorAll('#compare-slider img')].map(i => getComputedStyle(i).clipPath).join()"
    before = page.evaluate(clip)
    handle = page.locator('#compare-slider [data-testid="slider"]')
    box = handle.bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(x - 80, y, steps=8)
    page.mouse.up()
    page.wait_for_function(f"(before) => ({clip})() !== before", arg=before)
    view.screenshot("compare_slider.png")
    names = page.locator("#compare-files").inner_text()
    assert "compare-" in names and names.count(".json") == 2  # the side-by-side PNG, both segments JSON
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
    overlay = page.locator("#auto-output img.base-image").get_attribute("src")
    vocabulary.fill(" , | ")
    page.locator("#segment").click()
    page.locator("#auto-message").get_by_text("the vocabulary is empty").wait_for()
    assert page.locator("#auto-image img").is_visible() and page.locator("#auto-output img.base-image").is_visible()
    assert page.locator("#auto-output img.base-image").get_attribute("src") == overlay  # the previous result stays
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


@contextlib.contextmanager
def varied_results(models):
    """SyntheticSAM's varied masks, each named a different class in turn: random CLIP
    weights give every mask the same class, and these tests are about the page, so they
    need a result with several segments to tell apart."""
    from maskadapter.engine.segmenter import Segmenter

    original = Segmenter._probabilities

    def varied(self, *args, **kwargs):
        probs = original(self, *args, **kwargs)  # (N, C)
        return torch.stack([row.roll(i % probs.shape[1]) for i, row in enumerate(probs)]) if len(probs) else probs

    with SyntheticSAM(models.sam2), pytest.MonkeyPatch.context() as mp:
        mp.setattr(Segmenter, "_probabilities", varied)
        yield


def _point_at(page, selector: str, fx: float, fy: float) -> dict:
    """Move the mouse to a fraction (fx, fy) of the element; its page coordinates."""
    box = page.locator(selector).bounding_box()
    spot = {"x": box["x"] + box["width"] * fx, "y": box["y"] + box["height"] * fy}
    page.mouse.move(spot["x"], spot["y"])
    return spot


def _solid_spot(page) -> tuple[float, float, int]:
    """A point of the picture, as fractions (fx, fy), whose 7 x 7 pixels all show the same
    topmost layer (the mouse lands within a pixel or two of where it is aimed), and that
    layer's index; read here from the layers' PNGs."""
    return page.evaluate(
        """() => {
            const layers = [...document.querySelectorAll('#auto-output img.mask')];
            const w = layers[0].naturalWidth, h = layers[0].naturalHeight;
            const alpha = layers.map((img) => {
              const c = document.createElement('canvas'); c.width = w; c.height = h;
              const ctx = c.getContext('2d'); ctx.drawImage(img, 0, 0);
              return ctx.getImageData(0, 0, w, h).data;
            });
            const top = (x, y) => {
              for (let i = layers.length - 1; i >= 0; i--) if (alpha[i][4 * (y * w + x) + 3] > 0) return i;
              return -1;
            };
            for (let fy = 0.1; fy < 0.9; fy += 0.05) for (let fx = 0.1; fx < 0.9; fx += 0.05) {
              const x = Math.floor(fx * w), y = Math.floor(fy * h), i = top(x, y);
              let same = i >= 0;
              for (let dy = -3; dy <= 3 && same; dy++) for (let dx = -3; dx <= 3 && same; dx++)
                same = top(x + dx, y + dy) === i;
              if (same) return [(x + 0.5) / w, (y + 0.5) / h, i];
            }
            return null;
        }"""
    )


def test_explore_a_segment(app_server, browser, tmp_path):
    url, counters = app_server
    view = Page(browser, url)
    page = view.page
    # a photo no other test segments (the store would give back its random masks)
    with varied_results(counters["models"]):  # several segments to tell apart
        view.segment(_small_copy(tmp_path, "astronaut.png", 240), "person | astronaut, flag, rocket, wall")
    page.wait_for_function(
        "() => [...document.querySelectorAll('#auto-output img.mask')].every(i => i.complete && i.naturalWidth)"
    )
    names = [x.strip() for x in page.locator("#auto-output .legend-item").all_inner_texts()]
    assert names and len(set(names)) == len(names)  # one legend entry per segment, each its own name

    # hover a segment in the picture: it is highlighted (the others fade), as its legend entry would do
    fx, fy, index = _solid_spot(page)
    spot = (fx, fy)
    _point_at(page, "#auto-output img.base-image", *spot)
    page.wait_for_function(
        "(i) => document.querySelectorAll('#auto-output img.mask')[i].classList.contains('active')", arg=index
    )
    # click it: its details (name, score, area, top 5) are shown
    page.mouse.click(*_point_at(page, "#auto-output img.base-image", *spot).values())
    details = page.locator("#auto-details")
    details.get_by_text(names[index]).first.wait_for()
    text = details.inner_text()
    assert "score" in text and "% of the photo" in text and "Top 5:" in text, text

    # the legend and the table name a segment too
    last = names[-1]
    page.locator("#auto-output .legend-item").nth(len(names) - 1).click()
    page.wait_for_function("(n) => document.querySelector('#auto-details').innerText.startsWith(n + ':')", arg=last)
    page.locator('#auto-table [data-testid="cell-0-0"]').click()
    page.wait_for_function("(n) => document.querySelector('#auto-details').innerText.startsWith(n + ':')", arg=names[0])

    # show one class alone (a semantic map: one segment per class): only its layer stays
    assert len(names) > 1
    page.locator("#auto-show input").click()
    page.get_by_role("option", name=names[-1], exact=True).click()
    page.wait_for_function("() => document.querySelectorAll('#auto-output img.mask').length === 1")
    assert [x.strip() for x in page.locator("#auto-output .legend-item").all_inner_texts()] == [names[-1]]
    assert view.errors == [], view.errors
    view.close()


def _set_grid(page, n: int) -> None:
    """Advanced's points per side set to ``n``, and seen on the slider itself."""
    number = page.locator("#points-per-side input[type=number]")
    for _ in range(5):
        number.fill(str(n))
        number.press("Enter")
        number.blur()
        try:
            page.wait_for_function(
                "(n) => document.querySelector('#points-per-side input[type=range]').value === String(n)",
                arg=n,
                timeout=5000,
            )
            return
        except Exception:  # the page had not taken it yet: type it again
            continue
    raise AssertionError(f"points per side did not become {n}")


def test_cancel_a_long_run(app_server, browser, tmp_path):
    url, counters = app_server
    view = Page(browser, url)
    page = view.page
    view.segment(_small_copy(tmp_path, "chelsea.png", 200), "cat, wall")
    previous = page.locator("#auto-output img.base-image").get_attribute("src")
    rows = page.locator(f"#auto-table {ROWS}").count()

    # a long run: 64 x 64 points (64 batches), each decoder call slowed down
    page.get_by_text("Advanced").click()
    _set_grid(page, 64)  # checked: else Segment could run the cached 8 x 8 result
    counters["slow"].set()
    try:
        started = counters["decoder"].calls
        page.locator("#segment").click()
        deadline = time.monotonic() + 120
        # under way, and stopped long before its first step (256 points, 16 to 64 calls) is done:
        # a stopped run that showed no step of its own leaves the previous result
        while counters["decoder"].calls < started + 2:
            assert time.monotonic() < deadline, "the long run did not start"
            time.sleep(0.2)
        page.locator("#auto-stop").click()
        page.locator("#auto-message").get_by_text("Stopped.").wait_for()
        at_stop = counters["decoder"].calls
        settled = at_stop
        while True:  # the work ends at the next point batch's progress report
            time.sleep(0.5)  # five slowed decoder calls
            if counters["decoder"].calls == settled:
                break
            settled = counters["decoder"].calls
        from maskadapter.engine.point_decoder import _chosen

        batch = 64 // min(_chosen.values())  # decoder calls per point batch of 64 prompts (the probe's choice)
        assert settled - at_stop <= batch, (at_stop, settled, _chosen)
        assert settled - started < 64 * 64 // 4 // 2  # far from the whole run's 1024 calls
    finally:
        counters["slow"].clear()
    # the previous result and the inputs stay
    assert page.locator("#auto-output img.base-image").get_attribute("src") == previous
    assert page.locator(f"#auto-table {ROWS}").count() == rows
    assert page.locator("#auto-image img").is_visible()
    # the next request is served at once, not after the stopped run's remaining batches
    _set_grid(page, 8)
    page.locator("#segment").click()
    page.wait_for_function(
        "(src) => { const i = document.querySelector('#auto-output img.base-image');"
        " return i && i.getAttribute('src') !== src; }",
        arg=previous,
    )
    assert counters["decoder"].calls - started < 64 * 64 // 4 // 2
    assert view.errors == [], view.errors
    view.close()


def _goes_idle(counter: Counter, within: float) -> None:
    """Within ``within`` seconds, ``counter`` stops moving for a whole second (the
    server's run ended: each slowed decoder call takes 0.1 s)."""
    deadline = time.monotonic() + within
    while True:
        before = counter.calls
        time.sleep(1.0)
        if counter.calls == before:
            return
        assert time.monotonic() < deadline, f"still computing {within} s after the stop"


def _message_has(page, text: str) -> None:
    page.wait_for_function("(t) => document.querySelector('#auto-message').innerText.includes(t)", arg=text)


def _picture(page) -> str | None:
    return page.locator("#auto-output img.base-image").get_attribute("src")


def test_first_picture_replaced_by_the_final_one_and_stop_keeps_a_step(app_server, browser, tmp_path):
    """The Automatic tab shows a labelled picture after the grid's first step and replaces it
    at each step; Stop after a step leaves that step's picture, table and downloads."""
    url, counters = app_server
    view = Page(browser, url)
    page = view.page
    page.locator("#auto-image input[type=file]").set_input_files(str(_small_copy(tmp_path, "coffee.png", 180)))
    page.locator("#auto-image img").wait_for()
    page.locator("#vocabulary textarea").fill("cup, table, saucer")
    page.get_by_text("Advanced").click()
    _set_grid(page, 24)  # steps of 36, 144 and 576 points; each decoder call (4 points) slowed by 0.1 s
    counters["slow"].set()
    try:
        page.locator("#segment").click()
        _message_has(page, "From 36 of 576 points")
        first = _picture(page)
        assert first and page.locator(f"#auto-table {ROWS}").count() > 0
        counters["slow"].clear()  # seen: the rest at full speed
        view.wait_for_final()
        assert _picture(page) != first

        _set_grid(page, 20)  # steps of 25, 100 and 400 points: masks not made yet
        counters["slow"].set()
        page.locator("#segment").click()
        _message_has(page, "From 25 of 400 points")
        step = _picture(page)
        rows = page.locator(f"#auto-table {ROWS}").count()
        page.locator("#auto-stop").click()
        page.locator("#auto-message").get_by_text("Stopped.").wait_for()
        time.sleep(1.5)  # longer than the next step would take to arrive
        assert _picture(page) == step and page.locator(f"#auto-table {ROWS}").count() == rows > 0
        assert len(page.locator("#auto-files a").all()) >= 2  # the step's label map and JSON
    finally:
        counters["slow"].clear()
    assert view.errors == [], view.errors
    view.close()


def test_non_images_are_refused_at_upload_in_every_tab(app_server, browser, tmp_path):
    url, _ = app_server
    view = Page(browser, url)
    page = view.page
    fake = tmp_path / "notes.png"
    fake.write_text("this is not a picture")
    photo = _small_copy(tmp_path, "coffee.png", 200)
    for tab, image, message, ready in (
        ("Automatic", "#auto-image", "#auto-message", None),
        ("Point prompt", "#point-image", "#point-message", "Click on an object to add a point."),
        ("Compare", "#compare-image", "#compare-message", None),
    ):
        page.get_by_role("tab", name=tab).click()
        # the server's answer to the photo comes first: arriving after the refusal's, it
        # would clear the refusal's message (two uploads within milliseconds: only a test)
        with page.expect_response(lambda r: "/gradio_api/run/" in r.url or "/queue/join" in r.url):
            page.locator(f"{image} input[type=file]").set_input_files(str(photo))
        page.locator(f"{image} img").wait_for()
        if ready:
            page.locator(message).get_by_text(ready).wait_for()
        page.locator(f"{image} input[type=file]").set_input_files(str(fake))
        page.locator(message).get_by_text("not an image").wait_for()  # at once, before any run
        page.wait_for_function(
            "(sel) => { const i = document.querySelector(sel + ' img');"
            " return i && i.complete && i.naturalWidth > 0; }",
            arg=image,
        )  # the previous photo is back, no broken picture
    assert page.locator(".toast-body").count() == 0  # the message box only: one place for messages
    view.close()


def test_box_with_two_clicks(app_server, browser, tmp_path):
    url, _ = app_server
    view = Page(browser, url)
    page = view.page
    view.open_point_tab(_small_copy(tmp_path, "coffee.png", 300))
    page.locator("#click-kind").get_by_text("box corner").click()
    img = page.locator("#point-image img")
    box = img.bounding_box()
    img.click(position={"x": box["width"] * 0.2, "y": box["height"] * 0.25})
    page.locator("#point-message").get_by_text("Click the opposite corner of the box.").wait_for()
    assert page.locator("#box-text textarea").input_value().startswith("first corner (60, ")
    assert json.loads(view.points()) == []  # a corner is not a point
    img.click(position={"x": box["width"] * 0.7, "y": box["height"] * 0.8})
    page.get_by_text("alternatives:").wait_for()
    x0, y0, x1, y1 = json.loads(page.locator("#box-text textarea").input_value())
    assert (x0, x1) == (60, 210) and y0 < y1
    view.close()


@pytest.mark.parametrize("width", [1400, 390])
def test_every_tab_at_desktop_and_phone_width(app_server, browser, tmp_path, width):
    """Screenshots of every tab with a result (docs/screenshots at 1400 px): no table
    column cut, no message overlapping another (look at them too)."""
    url, counters = app_server
    view = Page(browser, url, width=width)
    page = view.page
    suffix = "" if width == 1400 else "-phone"
    with varied_results(counters["models"]):  # a picture with several segments
        view.segment(_small_copy(tmp_path, "coffee.png", 320), "coffee cup | mug, saucer, spoon, wooden table")
    assert view.clipped_cells("#auto-table") == []
    assert view.overlapping_messages() == []
    view.screenshot(f"automatic{suffix}.png", docs=True)

    view.open_point_tab(_small_copy(tmp_path, "coffee.png", 320))
    view.click_image(0.5, 0.55, "positive point")
    page.get_by_text("alternatives:").wait_for()
    assert view.clipped_cells("#point-table") == []
    assert view.overlapping_messages() == []
    view.screenshot(f"point_prompt{suffix}.png", docs=True)

    page.get_by_role("tab", name="Compare").click()
    page.locator("#compare-image input[type=file]").set_input_files(str(_small_copy(tmp_path, "coffee.png", 320)))
    page.locator("#compare-image img").wait_for()
    page.locator("#compare").click()
    page.locator("#compare-message").get_by_text("changed label").wait_for()
    page.wait_for_function("() => document.querySelectorAll('#compare-slider img').length === 2")
    assert view.clipped_cells("#compare-changes") == []
    assert view.overlapping_messages() == []
    view.screenshot(f"compare{suffix}.png", docs=True)
    assert view.errors == [], view.errors
    view.close()


def test_missing_weights_said_once(browser, tmp_path, monkeypatch):
    """Without model files the banner lists them (one list item each, no glyph a font
    may lack); a run says so in one short line, and no toast repeats it."""
    from huggingface_hub import constants

    import app
    from maskadapter.service import SegmentationService
    from maskadapter.settings import Settings
    from maskadapter.ui import events

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    port = _free_port()
    settings = Settings(device="cpu", cache_dir=str(tmp_path / "cache"), host="127.0.0.1", port=port)
    service = SegmentationService(settings)
    service.start(background=False)
    demo = app.build_demo(service)
    events.queue(demo, 1)
    demo.launch(**app.launch_options(settings))
    try:
        view = Page(browser, f"http://127.0.0.1:{port}/")
        page = view.page
        banner = page.locator("#banner")
        banner.get_by_text("The models could not be loaded.").wait_for()
        assert banner.locator("li").count() == 3  # SAM-2, CLIP and Mask-Adapter files, one per line
        assert not any(ord(c) > 0x2000 for c in banner.inner_text())  # no emoji or symbol glyphs
        page.locator("#auto-image input[type=file]").set_input_files(str(_small_copy(tmp_path, "coffee.png", 120)))
        page.locator("#auto-image img").wait_for()
        page.locator("#segment").click()
        page.locator("#auto-message").get_by_text("the message at the top of the page says why").wait_for()
        assert "sam2.1_hiera" not in page.locator("#auto-message").inner_text()  # the list is only in the banner
        assert page.locator(".toast-body").count() == 0
        view.screenshot("missing_weights.png")
        view.close()
    finally:
        demo.close()


def test_no_mcp_server_without_the_setting(app_server):
    """Launched as app.main launches it without MCP asked for (the setting's default),
    the app serves no MCP schema (tests/test_api.py asks the app started with it)."""
    from test_api import schema_tools

    url, _ = app_server
    assert schema_tools(url) == (404, set())


def test_video_tab_tracks_a_clicked_object_and_stops(app_server, browser, tmp_path):
    """Upload a clip, click an object on a frame, Track, watch the result; a long run is
    stopped and the previous result stays; the endpoint answers gradio_client."""
    from gradio_client import Client, handle_file
    from test_video import H, W, write_clip

    url, counters = app_server
    clip = tmp_path / "squares.mp4"
    write_clip(clip, 8)
    view = Page(browser, url)
    page = view.page
    page.get_by_role("tab", name="Video").click()
    page.locator("#video-clip input[type=file]").set_input_files(str(clip))
    page.locator("#video-message").get_by_text("8 frames, 160x120, 10 fps").wait_for()
    page.locator("#video-clicks").get_by_text("Click objects on a frame").click()
    picture = page.locator("#video-picture img")
    picture.wait_for()
    box = picture.bounding_box()
    picture.click(position={"x": box["width"] * 25 / W, "y": box["height"] * 35 / H})  # the red square
    page.wait_for_function("() => document.querySelector('#video-prompts textarea').value.includes('points')")
    prompts = json.loads(page.locator("#video-prompts textarea").input_value())
    assert [(p["frame"], p["object"], len(p["points"])) for p in prompts] == [(0, 1, 1)]
    x, y, label = prompts[0]["points"][0]
    assert abs(x - 25) <= 3 and abs(y - 35) <= 3 and label == 1

    # an object number below 1 is refused in the message line; the prompts stay
    page.locator("#video-object input").fill("-2")
    picture.click(position={"x": box["width"] * 60 / W, "y": box["height"] * 60 / H})
    page.locator("#video-message").get_by_text("Object must be a whole number of 1 or more").wait_for()
    assert json.loads(page.locator("#video-prompts textarea").input_value()) == prompts
    page.locator("#video-object input").fill("1")

    page.locator("#track").click()
    page.locator("#video-message").get_by_text("tracked through 8 frames").wait_for()
    page.wait_for_function(f"() => document.querySelectorAll('#video-table {ROWS}').length === 1")
    played = page.evaluate(
        """async () => {
            const v = document.querySelector('#video-output video');
            v.muted = true;
            await v.play();
            await new Promise((done) => setTimeout(done, 500));
            return [v.videoWidth, v.videoHeight, v.currentTime > 0];
        }"""
    )
    assert played == [W, H, True]
    assert ".json" in page.locator("#video-files").inner_text()
    assert view.clipped_cells("#video-table") == [] and view.overlapping_messages() == []
    view.screenshot("video.png", docs=True)
    previous = page.locator("#video-output video").get_attribute("src")

    # a long run (objects found automatically, each decoder call slowed), stopped
    page.locator("#video-prompts textarea").fill("[]")
    counters["slow"].set()
    try:
        started = counters["decoder"].calls
        page.locator("#track").click()
        deadline = time.monotonic() + 120
        while counters["decoder"].calls < started + 3:
            assert time.monotonic() < deadline, "the long run did not start"
            time.sleep(0.2)
        page.locator("#video-stop").click()
        page.locator("#video-message").get_by_text("Stopped.").wait_for()
        _goes_idle(counters["decoder"], within=5)  # the server's work ended too
    finally:
        counters["slow"].clear()
    assert page.locator("#video-output video").get_attribute("src") == previous
    assert view.errors == [], view.errors
    view.close()

    # an API client's cancel ends the server's work as well
    client = Client(url, verbose=False)
    counters["slow"].set()
    try:
        started = counters["decoder"].calls
        job = client.submit(
            handle_file(str(clip)), "ball, box", points_per_side=16, prompts="", api_name="/segment_video"
        )
        deadline = time.monotonic() + 120
        while counters["decoder"].calls < started + 3:
            assert time.monotonic() < deadline, "the API run did not start"
            time.sleep(0.2)
        job.cancel()
        _goes_idle(counters["decoder"], within=5)
    finally:
        counters["slow"].clear()
    overlay, message, table, tracks = client.predict(
        handle_file(str(clip)), "ball, box", points_per_side=4, every=3, prompts="", api_name="/segment_video"
    )
    assert "tracked through 3 frames" in message  # frames 0, 3 and 6
    assert tracks["video"]["processed"] == 3 and tracks["labels"] == ["ball", "box"]
    assert len(table["data"]) == len(tracks["objects"])
    assert Path(overlay["video"] if isinstance(overlay, dict) else overlay).suffix == ".mp4"
