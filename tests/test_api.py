"""The app as its API users reach it: `python app.py --tiny-random` started as the README
says (with the MCP server on), driven by gradio_client and by the official `mcp` client.

- The named endpoints: their parameters and results (overlay, table, files, segments).
- Every kind of bad (and odd but valid) input: images, vocabularies, points and boxes,
  and attempts to read server files. Each request returns a result or a one-line error
  without a traceback or internal text, and the app keeps answering. The app runs with a
  cache directory it cannot create, so every text-embedding cache write fails on the way.
- The MCP server over streamable HTTP, as an AI assistant would use it: tool list,
  descriptions, calls and a refusal.

One app process serves every test here (starting one costs seconds of imports).
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import re
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from conftest import AppProcess, small_image
from PIL import Image

from maskadapter.output.export import decode_rle

pytestmark = pytest.mark.slow

FAST = {"points_per_side": 4}  # a 4x4 SAM-2 grid: the checks are about inputs, not masks


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    work = tmp_path_factory.mktemp("app")
    blocker = work / "not-a-directory"
    blocker.write_text("a file where the cache directory should be")
    env = {"MASKADAPTER_CACHE_DIR": str(blocker / "cache"), "MASKADAPTER_MAX_UPLOAD_MB": "4", "MASKADAPTER_MCP": "1"}
    with AppProcess(work, env) as proc:
        yield proc
    # its own start-up line: the URL, and the app's --share flag (not Gradio's launch(share=True))
    assert f"Running on {proc.url.rstrip('/')}" in proc.log, proc.log[-3000:]
    assert "--share" in proc.log and "share=True" not in proc.log
    # the only tracebacks in the server's log are Gradio's own refusals of forged file
    # payloads (test_server_files_cannot_be_read); no error of ours is unexpected
    for block in proc.log.split("Traceback (most recent call last):")[1:]:
        last = [line for line in block.splitlines() if line and not line.startswith(" ")][0]
        assert last.startswith(("gradio.exceptions.InvalidPathError", "pydantic_core")), block[-2000:]


@pytest.fixture(scope="module")
def client(app):
    from gradio_client import Client

    return Client(app.url, verbose=False)


def _photo(width: int = 120) -> Image.Image:
    """The example cat photo ``width`` pixels wide, as a PIL image to save in any format."""
    return Image.fromarray(small_image("chelsea.png", width))


def _clean_error(err: Exception) -> str:
    """The message of a refused request, checked to be one short line of our own."""
    text = str(err).strip()
    assert "\n" not in text and len(text) < 400, text
    for leak in ("Traceback", 'File "', "Exception", "Could not preprocess", "error id", "&#x27;", "&amp;", "&lt;"):
        assert leak not in text, text
    return text


def _call(client, *args, api_name: str, **kwargs):
    """(result, None) or (None, message) of one request."""
    from gradio_client.exceptions import AppError

    try:
        return client.predict(*args, api_name=api_name, **kwargs), None
    except AppError as err:
        return None, _clean_error(err)


def _automatic(client, path: Path, vocabulary: str = "cat, wall, floor", **kwargs):
    from gradio_client import handle_file

    return _call(client, handle_file(str(path)), vocabulary, **{**FAST, **kwargs}, api_name="/segment_automatic")


def _points(client, path: Path, points: str, vocabulary: str = "cat, wall", box: str = ""):
    from gradio_client import handle_file

    return _call(client, handle_file(str(path)), points, vocabulary, box=box, api_name="/segment_points")


def _still_answers(client, tmp_path: Path) -> None:
    path = tmp_path / "check.png"
    _photo(90).save(path)
    result, error = _automatic(client, path)
    assert error is None and result[4]["image"]["width"] == 90


# ---------------------------------------------------------------------------- the endpoints


def test_named_endpoints(client, tmp_path):
    """The three image endpoints as gradio_client sees and calls them."""
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    api = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert {"/segment_automatic", "/segment_points", "/compare"} <= set(api)
    params = [p["parameter_name"] for p in api["/segment_automatic"]["parameters"]]
    assert params[:2] == ["image", "vocabulary"]
    assert all(p["parameter_has_default"] for p in api["/segment_automatic"]["parameters"][1:])
    assert [p["parameter_name"] for p in api["/segment_points"]["parameters"]][:3] == ["image", "points", "vocabulary"]

    photo = tmp_path / "chelsea.png"
    _photo(225).save(photo)
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


def test_automatic_endpoint_yields_each_step_and_ends_with_the_clis_result(client, tmp_path):
    """``/segment_automatic`` is a generator endpoint: a labelled result after each step of
    the 16 x 16 grid (16, 64, then 256 points), the last one the CLI's one-shot segments."""
    from gradio_client import handle_file
    from test_cli import _run

    photo = tmp_path / "chelsea.png"
    _photo(160).save(photo)
    vocabulary = "cat, wall, floor"
    job = client.submit(
        handle_file(str(photo)), vocabulary, points_per_side=16, mode="per_mask", api_name="/segment_automatic"
    )
    job.result()
    steps = job.outputs()
    assert len(steps) >= 2 and all(len(step[4]["segments"]) for step in steps)
    assert "of 256 points" in steps[0][1] and "of 256 points" not in steps[-1][1]
    out = tmp_path / "cli"
    cli = [str(photo), "--vocab", vocabulary, "--mode", "per_mask", "--points-per-side", "16", "--out", str(out)]
    clip_input = ["--short-side", "320", "--max-size", "480"]  # the app's (AppProcess)
    assert _run([*cli, *clip_input, "--tiny-random"], tmp_path).returncode == 0
    expected = json.loads((out / "chelsea_segments.json").read_text())
    last = steps[-1][4]
    assert last["labels"] == expected["labels"]
    assert [(s["label"], s["score"], s["segmentation"]) for s in last["segments"]] == [
        (s["label"], s["score"], s["segmentation"]) for s in expected["segments"]
    ]


# ---------------------------------------------------------------------------- images


def _image_files(tmp: Path) -> dict[str, tuple[Path, tuple[int, int] | str]]:
    """name -> (file, expected (width, height) of the result, or a fragment of the refusal)."""
    rgb = _photo(120)  # 120 x 80
    w, h = rgb.size
    files: dict[str, tuple[Path, tuple[int, int] | str]] = {}

    def save(name: str, im: Image.Image, expect, **kwargs) -> None:
        path = tmp / name
        im.save(path, **kwargs)
        files[name] = (path, expect)

    save("gray.png", rgb.convert("L"), (w, h))
    rgba = rgb.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize((w, h)))
    save("rgba.png", rgba, (w, h))
    save("palette.png", rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16), (w, h))
    gray16 = np.asarray(rgb.convert("L"), dtype=np.uint16) * 257
    save("gray16.png", Image.fromarray(gray16), (w, h))
    save("cmyk.jpg", rgb.convert("CMYK"), (w, h), quality=90)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown rotated 90 degrees: portrait
    save("exif6.jpg", rgb, (h, w), exif=exif, quality=90)
    save("one-pixel.png", Image.new("RGB", (1, 1), (200, 10, 10)), "too small")
    save("wide.png", rgb.resize((1200, 12)), (1200, 12))
    save("tall.png", rgb.resize((12, 1200)), (12, 1200))
    save("needle.png", Image.new("RGB", (30000, 8)), "too elongated")
    save("large.jpg", rgb.resize((3000, 2000)), (3000, 2000), quality=80)
    save("too-many-pixels.png", Image.new("L", (9000, 5000)), "too large")
    (tmp / "text.png").write_text("this is not a picture\n" * 20)
    files["text.png"] = (tmp / "text.png", "not an image file")
    (tmp / "empty.jpg").write_bytes(b"")
    files["empty.jpg"] = (tmp / "empty.jpg", "not an image file")
    for name, source in (("truncated.png", "gray.png"), ("truncated.jpg", "cmyk.jpg")):
        data = files[source][0].read_bytes()
        (tmp / name).write_bytes(data[: len(data) // 3])
        files[name] = (tmp / name, "not an image file")
    return files


def test_images(client, app, tmp_path):
    # one click per image (every endpoint reads its image with the same component)
    files = _image_files(tmp_path)
    for name, (path, expect) in files.items():
        click = [expect[0] // 2, expect[1] // 2, 1] if isinstance(expect, tuple) else [0, 0, 1]
        result, error = _points(client, path, json.dumps([click]))
        if isinstance(expect, tuple):
            assert error is None, (name, error)
            segments = result[1]
            assert (segments["image"]["width"], segments["image"]["height"]) == expect, name
            assert Image.open(result[0]).size == expect, name  # the overlay too
        else:
            assert result is None and expect in error.lower(), (name, error)
    # an upload over the app's size cap (4 MB here) is refused before anything reads it
    noise = np.random.default_rng(0).integers(0, 256, (1200, 1600, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "noise.png")
    assert (tmp_path / "noise.png").stat().st_size > 4_500_000
    with pytest.raises(ValueError, match="exceeds the maximum file size"):  # gradio_client checks first
        _automatic(client, tmp_path / "noise.png")
    assert _raw_upload(app.url, tmp_path / "noise.png") >= 400  # and the server refuses it anyway
    # orientation applied in the automatic endpoint too
    path, _ = files["exif6.jpg"]
    result, error = _automatic(client, path)
    assert error is None and (result[4]["image"]["width"], result[4]["image"]["height"]) == (80, 120), error
    assert Image.open(result[0]).size[0] == 80  # the overlay (a legend below it)
    _still_answers(client, tmp_path)


# ---------------------------------------------------------------------------- vocabularies


def test_vocabularies(client, tmp_path):
    path = tmp_path / "cat.png"
    _photo(100).save(path)
    for text in ("", "   ", ", ,\n | ,|", "\u200b, \t"):
        result, error = _automatic(client, path, text)
        assert result is None and "vocabulary is empty" in error, (text, error)
    assert "e.g. 'car, road, tree | bush'" in error  # plain text: no HTML entities for API clients

    result, error = _automatic(client, path, "cat, Cat, CAT | kitten, cat")
    assert error is None and result[4]["labels"] == ["cat"]

    names = ["猫", "café", "cafe\u0301", "🐱 cat", "שָׁלוֹם", "<b>bold</b>", "**star**", "$x^2$", "[a](http://x.y)"]
    result, error = _automatic(client, path, ", ".join(names))
    assert error is None, error
    labels = result[4]["labels"]
    assert labels == [n for n in names if n != "cafe\u0301"]  # the same name composed and decomposed
    for row in result[2]["data"]:
        assert row[0] in labels  # the table holds the names as typed
    assert "<b>" not in result[1] or "&lt;b&gt;" in result[1]  # the message escapes markup

    long_name = "a very long class name " * 30
    result, error = _automatic(client, path, f"cat, {long_name}")
    assert error is None, error
    assert len(result[4]["labels"]) == 2 and len(result[4]["labels"][1]) < len(long_name.strip())
    assert "cut" in result[1] or "truncat" in result[1], result[1]  # the message says so

    # a long vocabulary comes back whole (2,500 classes in batches: test_vocabulary_inputs)
    many = ", ".join(f"class number {i}" for i in range(400))
    result, error = _automatic(client, path, many)
    assert error is None and len(result[4]["labels"]) == 400, error
    result, error = _automatic(client, path, ", ".join(f"c{i}" for i in range(3001)))
    assert result is None and "3000" in error
    _still_answers(client, tmp_path)


# ---------------------------------------------------------------------------- points and boxes


def test_points_and_boxes(client, tmp_path):
    path = tmp_path / "cat.png"
    _photo(120).save(path)  # 120 x 80
    good = [
        ("[[60, 40, 1]]", ""),
        ("[[60, 40, 1], [5, 5, 0]]", ""),
        ("[]", "[10, 10, 100, 70]"),
        ("[]", "[100, 70, 10, 10]"),  # corners in any order
        ("[]", "[100, 10, 10, 70]"),
        ("[[60, 40, 0]]", "[10, 10, 100, 70]"),  # a negative point with a box
    ]
    boxes = []
    for points, box in good:
        result, error = _points(client, path, points, box=box)
        assert error is None, (points, box, error)
        # one named mask (random SAM-2 weights give a large one for every prompt here)
        (segment,) = result[1]["segments"]
        assert segment["label"] in ("cat", "wall") and result[1]["labels"] == ["cat", "wall"]
        mask = decode_rle(segment["segmentation"])
        assert mask.shape == (80, 120) and segment["area"] == int(mask.sum()) > 0
        if box:
            boxes.append(result[1])
    assert boxes[0]["segments"] == boxes[1]["segments"] == boxes[2]["segments"]
    bad = [
        ("[[500, 10, 1]]", "", "outside"),
        ("[[-1, 10, 1]]", "", "outside"),
        ("[[1, 2", "", "json"),
        ('{"x": 1}', "", "point"),
        ("[[1, 2]]", "", "point"),
        ("[[1, 2, 3, 4]]", "", "point"),
        ("[1, 2, 1]", "", "point"),
        ('[["a", 2, 1]]', "", "point"),
        ("[[NaN, 2, 1]]", "", ""),
        ("[[Infinity, 2, 1]]", "", ""),
        ("[[10, 20, 0.5]]", "", "label"),
        ("[]", "", "positive"),
        ("[[10, 20, 0]]", "", "positive"),
        (json.dumps([[1 + i % 100, 1 + i % 70, 1] for i in range(65)]), "", "64"),
        ("[]", "[1, 2, 3]", "box"),
        ("[]", "[10, 10, 10, 70]", "box"),
        ("[]", "[10, 10, 500, 70]", "box"),
        ("[]", "[NaN, 1, 2, 3]", "box"),
        ("[]", "not json", "box"),
    ]
    for points, box, fragment in bad:
        result, error = _points(client, path, points, box=box)
        assert result is None and fragment in error.lower(), (points, box, error)
    _still_answers(client, tmp_path)


# ---------------------------------------------------------------------------- safety


def _raw_upload(url: str, path: Path) -> int:
    """HTTP status of a plain multipart upload of ``path`` to the app."""
    import urllib.error
    import urllib.request

    boundary = "maskadapter-test-boundary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{path.name}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + path.read_bytes()
        + f"\r\n--{boundary}--\r\n".encode()
    )
    request = urllib.request.Request(
        f"{url}gradio_api/upload", data=body, headers={"Content-Type": f"multipart/form-data; boundary={boundary}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code


def _raw_call(url: str, endpoint: str, data: list) -> tuple[str, str]:
    """One request through Gradio's plain HTTP API (no client-side file handling, so a
    path is sent as is): (event, data) of the final server-sent event."""
    import urllib.request

    body = json.dumps({"data": data}).encode()
    request = urllib.request.Request(
        f"{url}gradio_api/call/{endpoint}", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        event_id = json.loads(response.read())["event_id"]
    with urllib.request.urlopen(f"{url}gradio_api/call/{endpoint}/{event_id}", timeout=120) as response:
        text = response.read().decode()
    events = re.findall(r"^event: (\w+)\ndata: (.*)$", text, flags=re.MULTILINE)
    return events[-1]


def test_server_files_cannot_be_read(client, app, tmp_path):
    secret = tmp_path / "secret.png"  # a valid image on the server's disk, outside its uploads
    _photo(64).save(secret)
    values = [
        str(secret),
        {"path": str(secret), "meta": {"_type": "gradio.FileData"}},
        {"path": str(secret), "url": None, "orig_name": "x.png", "meta": {"_type": "gradio.FileData"}},
        {"path": "/etc/passwd", "meta": {"_type": "gradio.FileData"}},
        "/etc/passwd",
    ]
    for value in values:
        inputs = [value, "cat", [], "tiny-random", 4, 0.0, 0.0, "per_mask", 0.0, 0.8, 0.5]
        event, data = _raw_call(app.url, "segment_automatic", inputs)
        assert event == "error", (value, event, data[:200])  # never decoded, never segmented
        assert "root:" not in data and "Traceback" not in data
    # the same file uploaded by the client is fine: it is the client's file
    result, error = _automatic(client, secret, "cat")
    assert error is None and result[4]["image"]["width"] == 64
    _still_answers(client, tmp_path)


# ---------------------------------------------------------------------------- MCP

TOOLS = {"segment_automatic", "segment_points", "compare", "segment_video"}


def _data_url(pixels) -> str:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _clip_url(tmp_path) -> str:
    from test_video import write_clip

    write_clip(tmp_path / "clip.mp4", 4)
    return "data:video/mp4;base64," + base64.b64encode((tmp_path / "clip.mp4").read_bytes()).decode("ascii")


async def _list_and_call(server: str, arguments: dict, video: dict):
    from mcp import ClientSession
    from mcp.client.streamable_http import streamablehttp_client

    async with streamablehttp_client(server) as (read, write, _):
        async with ClientSession(read, write) as session:
            await session.initialize()
            tools = (await session.list_tools()).tools
            result = await session.call_tool("segment_points", arguments)
            refused = await session.call_tool("segment_points", {**arguments, "vocabulary": " , "})
            tracked = await session.call_tool("segment_video", video)
            return tools, result, refused, tracked


def test_mcp_tools_over_streamable_http(app, tmp_path):
    """The MCP server, turned on by MASKADAPTER_MCP=1 (``--mcp`` is the same setting's
    flag): its schema, the tools, calls and a refusal."""
    pixels = small_image("chelsea.png", 225)
    h, w = pixels.shape[:2]
    prompts = json.dumps([[110, 75, 1], [10, 10, 0]])
    arguments = {"image": _data_url(pixels), "points": prompts, "vocabulary": "cat, wall"}
    assert schema_tools(app.url) == (200, TOOLS)
    video = {"video": _clip_url(tmp_path), "vocabulary": "ball, box", "points_per_side": 4}
    tools, result, refused, tracked = asyncio.run(
        asyncio.wait_for(_list_and_call(app.url + "gradio_api/mcp/", arguments, video), 180)
    )

    by_name = {tool.name: tool for tool in tools}
    assert set(by_name) == TOOLS  # the UI's private events are no tools
    for tool in by_name.values():
        assert "`|` between synonyms" in tool.description and "car, road, tree | bush" in tool.description
        clip = tool.name == "segment_video"
        assert ("data:video/mp4;base64" if clip else "data:image/png;base64") in tool.description
        assert tool.inputSchema["required"] == ["video" if clip else "image"]
    points = by_name["segment_points"]
    assert "[[x, y, label], ...]" in points.description and "label 1 positive" in points.description
    assert "[x0, y0, x1, y1]" in points.inputSchema["properties"]["box"]["description"]
    assert list(points.inputSchema["properties"])[:3] == ["image", "points", "vocabulary"]
    modes = by_name["segment_automatic"].inputSchema["properties"]["mode"]
    assert modes["enum"] == ["semantic", "per_mask"] and modes["default"] == "semantic"

    assert not result.isError, result.content
    images = [c for c in result.content if c.type == "image"]
    texts = [c.text for c in result.content if c.type == "text"]
    assert len(images) == 1 and images[0].mimeType == "image/png"
    overlay = Image.open(io.BytesIO(base64.b64decode(images[0].data)))
    assert overlay.size == (w, h)
    segments = json.loads(texts[-1])  # the segments as JSON, after the overlay's URL
    assert segments["image"]["width"] == w and segments["labels"] == ["cat", "wall"]
    assert len(segments["segments"]) == 1
    seg = segments["segments"][0]
    assert seg["label"] in ("cat", "wall") and seg["segmentation"]["size"] == [h, w]

    # a clip as a data URL: tracked, the tracks JSON last
    assert not tracked.isError, tracked.content
    tracks = json.loads([c.text for c in tracked.content if c.type == "text"][-1])
    assert tracks["video"]["frames"] == 4 and tracks["labels"] == ["ball", "box"]

    # a refusal arrives as the package's own text, not HTML-escaped
    assert refused.isError
    text = " ".join(c.text for c in refused.content if c.type == "text")
    assert "e.g. 'car, road, tree | bush'" in text and "&#x27;" not in text, text


def schema_tools(url: str) -> tuple[int, set[str]]:
    """(HTTP status, tool names) of the app's MCP schema; (404, set()) when it serves none
    (the app without the setting: tests/test_app.py asks its app)."""
    try:
        with urllib.request.urlopen(url + "gradio_api/mcp/schema", timeout=30) as response:
            return response.status, {tool["name"] for tool in json.load(response)}
    except urllib.error.HTTPError as err:
        return err.code, set()
