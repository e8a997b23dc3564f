"""The app as an MCP server (`python app.py --mcp`), driven by the official `mcp` client
over streamable HTTP as an AI assistant would: tool list, descriptions, one call."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import urllib.error
import urllib.request

import pytest
from conftest import AppProcess, small_image
from PIL import Image

pytestmark = pytest.mark.slow

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


def test_tools_over_streamable_http(tmp_path):
    """The MCP server, turned on by MASKADAPTER_MCP=1 (``--mcp`` is the same setting's
    flag): its schema, the three tools, a call and a refusal."""
    app = AppProcess(tmp_path, {"MASKADAPTER_MCP": "1"})
    pixels = small_image("chelsea.png", 225)
    h, w = pixels.shape[:2]
    prompts = json.dumps([[110, 75, 1], [10, 10, 0]])
    arguments = {"image": _data_url(pixels), "points": prompts, "vocabulary": "cat, wall"}
    with app:
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
    assert "Traceback" not in app.log, app.log[-3000:]

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
    (the app without the setting: tests/test_api_inputs.py asks its app)."""
    try:
        with urllib.request.urlopen(url + "gradio_api/mcp/schema", timeout=30) as response:
            return response.status, {tool["name"] for tool in json.load(response)}
    except urllib.error.HTTPError as err:
        return err.code, set()
