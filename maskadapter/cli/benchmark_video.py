"""The benchmark's video figures: tracking speed and peak memory on a synthetic clip.

``video_figures`` writes a clip of moving squares (``frames`` frames of ``width`` x
``height``), starts ``objects`` tracks by clicks on its first frame, and tracks them
through the clip with ``track_clip`` (one naming frame every 20, no automatic
detection: the figure is SAM-2's tracking and Mask-Adapter's naming). It reports the
frames per second, the time per frame and per object, and the process's peak resident
memory after the first tenth of the frames and after all of them (their ratio shows
whether memory grows with the clip's length), with the GPU's peak on CUDA.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import av
import numpy as np
import torch

from maskadapter.engine.segmenter import Segmenter
from maskadapter.engine.video import VideoPrompt, track_clip
from maskadapter.engine.video_source import VideoLimits, open_clip_file
from maskadapter.engine.vocabulary import build_vocabulary

SQUARE = 0.2  # a square's side, as a share of the frame's short side


def _square_xy(k: int, t: int, hw: tuple[int, int]) -> tuple[int, int]:
    """Top-left corner of square ``k`` on frame ``t``: each moves across and back."""
    h, w = hw
    side = int(SQUARE * min(h, w))
    span = max(1, w - side)
    x = (k * span // 3 + 3 * t) % (2 * span)
    x = x if x < span else 2 * span - x
    y = (k * side * 2) % max(1, h - side)
    return x, y


def write_squares_clip(path: Path, frames: int, hw: tuple[int, int], objects: int, fps: int = 25) -> None:
    """An H.264 clip of ``objects`` coloured squares moving over grey."""
    h, w = hw
    side = int(SQUARE * min(h, w))
    colours = np.array([[230, 30, 30], [30, 60, 230], [40, 200, 60], [240, 200, 30]], np.uint8)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for t in range(frames):
            frame = np.full((h, w, 3), 128, np.uint8)
            for k in range(objects):
                x, y = _square_xy(k, t, hw)
                frame[y : y + side, x : x + side] = colours[k % len(colours)]
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def status_bytes(field: str) -> int:
    """A size line of /proc/self/status in bytes: ``"VmRSS"`` (resident now), ``"VmHWM"``
    (its peak); 0 where there is none."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def video_figures(segmenter: Segmenter, frames: int, hw: tuple[int, int], objects: int, side: int) -> dict:
    """Track ``objects`` clicked squares through a ``frames``-frame clip of size ``hw``
    (working size ``side``); the figures (module docstring)."""
    device = segmenter.device
    with tempfile.TemporaryDirectory(prefix="maskadapter-bench-video-") as folder:
        path = Path(folder) / "squares.mp4"
        write_squares_clip(path, frames, hw, objects)
        clip = open_clip_file(path, VideoLimits(max_seconds=1e9, max_frames=10**7, max_side=10**5))
        box = int(SQUARE * min(hw))
        prompts = [VideoPrompt(0, k + 1, ((x + box // 2, y + box // 2, 1),)) for k, (x, y) in
                   enumerate(_square_xy(k, 0, hw) for k in range(objects))]  # fmt: skip
        tenth = max(1, frames // 10)
        marks: dict[str, float] = {}

        def progress(fraction: float, message: str) -> None:
            done = round(fraction * frames)
            if done == tenth and "first" not in marks:
                marks["first"], marks["first_peak"] = time.perf_counter(), status_bytes("VmHWM")

        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        result = track_clip(segmenter, clip, build_vocabulary("square, background"), prompts=prompts,
                            video_side=side, progress=progress)  # fmt: skip
        end = time.perf_counter()
    seconds = end - start
    # The kernel's VmHWM is read from approximate per-CPU counters and can read a few
    # hundred kB lower later on; the peak over the whole run is at least the first tenth's.
    first_peak = marks.get("first_peak", 0)
    peak = max(status_bytes("VmHWM"), first_peak)
    figures = {
        "frames": len(result.frames),
        "size": [hw[1], hw[0]],
        "working_side": side,
        "objects": objects,
        "seconds": round(seconds, 3),
        "frames_per_s": round(len(result.frames) / seconds, 3),
        "s_per_frame_per_object": round(seconds / len(result.frames) / max(1, objects), 4),
        "peak_rss_first_tenth_mb": round(first_peak / 2**20, 1),
        "peak_rss_mb": round(peak / 2**20, 1),
    }
    if figures["peak_rss_first_tenth_mb"]:
        figures["peak_rss_growth"] = round(figures["peak_rss_mb"] / figures["peak_rss_first_tenth_mb"], 3)
    if device.type == "cuda":
        figures["gpu_peak_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return figures


def video_rows(figures: dict) -> list[tuple[str, str]]:
    """The video figures as (name, value) rows of the benchmark's table."""
    v = figures
    return [
        ("video: clip", f"{v['frames']} frames of {v['size'][0]}x{v['size'][1]}, {v['objects']} objects"),
        ("video: tracking", f"{v['frames_per_s']:.2f} frames/s ({v['s_per_frame_per_object']:.3f} s/frame/object)"),
        ("video: peak RSS", f"{v['peak_rss_first_tenth_mb']:.0f} MB after a tenth, {v['peak_rss_mb']:.0f} MB in all"),
    ]
