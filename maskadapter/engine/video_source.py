"""Clips in: probing, limits and frame-by-frame decoding with PyAV (FFmpeg).

``open_clip_file`` checks a file once (a readable video stream, within ``VideoLimits``)
and returns a ``Clip``; ``Clip.frames`` then decodes it frame by frame, never holding
more than the frame in hand, optionally keeping every ``every``-th frame only. Frames
are (H, W, 3) uint8 RGB at the clip's own size, turned upright when the file carries a
rotation (phone clips). MP4, MOV, WebM, MKV, AVI and GIF with the codecs FFmpeg decodes
(H.264, HEVC, VP8/9, AV1, ...) are read.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from maskadapter.errors import InputError
from maskadapter.settings import Settings

DEFAULT_FPS = 10.0  # for streams that state no rate (some GIFs)


@dataclass(frozen=True)
class VideoLimits:
    """What a clip may be: at most ``max_seconds`` long, at most ``max_frames`` frames
    after subsampling, and at most ``max_side`` pixels on its long side."""

    max_seconds: float = 300.0
    max_frames: int = 3000
    max_side: int = 3840

    @classmethod
    def of(cls, settings: Settings) -> VideoLimits:
        """The limits ``settings`` set (``video_max_seconds``, ``_frames``, ``_side``)."""
        return cls(settings.video_max_seconds, settings.video_max_frames, settings.video_max_side)


@dataclass(frozen=True)
class Clip:
    """A checked clip: its file, size (H, W) after rotation, frame rate, frame count (as
    decoded: exact when the container states it, else from the duration) and the
    rotation applied to each frame (degrees counter-clockwise)."""

    path: Path
    hw: tuple[int, int]
    fps: float
    frame_count: int
    seconds: float
    rotation: int = 0

    def kept(self, every: int) -> int:
        """How many frames ``frames(every)`` yields (by the stated frame count)."""
        return -(-self.frame_count // every)

    def frames(self, every: int = 1, start: int = 0) -> Iterator[tuple[int, np.ndarray]]:
        """(index, (H, W, 3) uint8 RGB) for frames ``start``, ``start + every``, ... in
        decoding order, one at a time; the index counts every frame of the clip."""
        with _open(self.path) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            index = -1
            try:
                for index, frame in enumerate(container.decode(stream)):
                    if index >= start and (index - start) % every == 0:
                        yield index, self._upright(frame.to_ndarray(format="rgb24"))
            except av.error.FFmpegError as err:  # a file cut short: what was decoded stands
                where = "no frame could be read" if index < 0 else f"frames after {index + 1} could not be read"
                raise InputError(f"{self.path.name} cannot be decoded: {where} ({_reason(err)})") from None

    def frame(self, index: int) -> np.ndarray | None:
        """Frame ``index`` (as ``frames`` counts them: the decoder's order), (H, W, 3)
        uint8 RGB, or None past the end. The frame's timestamp is the ``index``-th
        smallest of the stream's packet timestamps (read once per file without decoding,
        ``_timestamps``), so variable frame rates are followed; decoding starts at the
        key frame before it (a seek) rather than at the clip's start. Streams without
        timestamps, or a seek that fails, decode from the start."""
        stamps = _timestamps(str(self.path), self.path.stat().st_mtime_ns)
        if 0 < index < len(stamps):
            with _open(self.path) as container:
                stream = container.streams.video[0]
                try:
                    container.seek(stamps[index], stream=stream, backward=True, any_frame=False)
                    for frame in container.decode(stream):
                        if frame.pts == stamps[index]:
                            return self._upright(frame.to_ndarray(format="rgb24"))
                        if frame.pts is None or frame.pts > stamps[index]:
                            break
                except av.error.FFmpegError:
                    pass  # decoded from the start below, which says what failed
        return next((pixels for _, pixels in self.frames(1, start=index)), None)

    def _upright(self, pixels: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(np.rot90(pixels, self.rotation // 90)) if self.rotation else pixels


@functools.lru_cache(maxsize=8)
def _timestamps(path: str, mtime_ns: int) -> tuple[int, ...]:
    """The video stream's frame timestamps in presentation order (the order frames are
    decoded in), from its packets, for a file as it was at ``mtime_ns``; () when a
    packet has none or the file cannot be read."""
    try:
        with av.open(path, mode="r") as container:
            stamps = [p.pts for p in container.demux(container.streams.video[0]) if p.size]
    except (av.error.FFmpegError, OSError, IndexError):
        return ()
    return () if None in stamps else tuple(sorted(stamps))


def _reason(err: Exception) -> str:
    text = getattr(err, "strerror", None) or str(err)
    return " ".join(str(text).split())[:200]


def _open(path: Path) -> av.container.InputContainer:
    try:
        return av.open(str(path), mode="r")
    except FileNotFoundError:
        raise InputError(f"cannot read video {path}: no such file") from None
    except (av.error.FFmpegError, UnicodeDecodeError, ValueError) as err:
        raise InputError(f"{path.name} is not a video file FFmpeg can read ({_reason(err)})") from None


def _rotation(container: av.container.InputContainer) -> int:
    """The clip's display rotation in degrees counter-clockwise (0, 90, 180, 270), read
    from its first frame's display matrix."""
    try:
        frame = next(container.decode(video=0))
    except (StopIteration, av.error.FFmpegError):
        return 0
    return int(round(getattr(frame, "rotation", 0) or 0) / 90) % 4 * 90


def open_clip_file(path: str | Path, limits: VideoLimits = VideoLimits(), every: int = 1) -> Clip:
    """Check a clip file and describe it (nothing is decoded but the first frame).

    Raises:
        InputError: no such file, not a video (no video stream, or FFmpeg cannot read
            it), or past a limit: longer than ``limits.max_seconds``, more than
            ``limits.max_frames`` frames after keeping every ``every``-th, a long side
            over ``limits.max_side``. Each message says what was found and the limit.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"cannot read video {path}: no such file")
    if not isinstance(every, int) or every < 1:
        raise InputError(f"every must be a whole number of frames, at least 1, got {every!r}")
    with _open(path) as container:
        if not container.streams.video:
            raise InputError(f"{path.name} has no video stream")
        stream = container.streams.video[0]
        if stream.codec_context is None or not stream.width or not stream.height:
            raise InputError(f"{path.name} has a video stream FFmpeg cannot decode")
        fps = float(stream.average_rate or stream.guessed_rate or 0) or DEFAULT_FPS
        seconds = _seconds(container, stream)
        count = int(stream.frames or 0) or max(1, round(seconds * fps))
        rotation = _rotation(container)
        h, w = stream.height, stream.width
    if rotation in (90, 270):
        h, w = w, h
    clip = Clip(path, (h, w), fps, count, seconds or count / fps, rotation)
    name = path.name
    if clip.seconds > limits.max_seconds:
        raise InputError(f"{name} lasts {clip.seconds:.1f} s: at most {limits.max_seconds:g} s")
    if clip.kept(every) > limits.max_frames:
        kept = f"{clip.kept(every)} frames" + (f" (every {every}th of {count})" if every > 1 else "")
        raise InputError(f"{name} has {kept}: at most {limits.max_frames}; keep fewer with every")
    if max(h, w) > limits.max_side:
        raise InputError(f"{name} is {w}x{h}: its long side may be at most {limits.max_side} pixels")
    return clip


def _seconds(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> float:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / 1_000_000
    return 0.0  # unknown: the frame count comes from the decoder's count instead
