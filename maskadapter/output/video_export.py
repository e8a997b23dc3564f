"""A tracked clip's files: the overlay video, per-frame label maps and the tracks JSON.

``write_video_outputs`` decodes the clip once more (a frame at a time) and, for every
processed frame, paints the tracks (a colour per track, its name drawn inside it, as
``render.overlay`` draws an image's segments) into an H.264 MP4 that browsers play,
writes the label map (``NAME_labels/FRAME.png``: 0 unlabelled, k = class k-1, as
for images) and adds each track's mask to the tracks JSON::

    {"video": {"file": name, "width": W, "height": H, "fps": clip fps, "frames": clip
               frame count, "seconds": s, "every": K, "processed": n, "output_fps": fps / K},
     "labels": [class label, ...], "mode": "automatic" | "points",
     "objects": [{"id": int, "label": str | null, "class_id": int (-1: unlabelled),
                  "score": float, "top5": [{"label", "score"}, ...], "named_on": [frame, ...],
                  "frames": [{"frame": clip frame index, "bbox": [x, y, w, h], "area": int,
                              "segmentation": {"size": [H, W], "counts": str}}]}]}  # COCO RLE

Masks, boxes and areas are at the clip's frame size. Overlapping tracks: the smaller
is painted over the larger. H.264 in 4:2:0 needs even sizes: an odd width or height is
padded by one repeated pixel column or row in the video (not in the label maps or JSON).
"""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch
from PIL import Image

from maskadapter.engine.results import Segment, SegmentationResult
from maskadapter.engine.video import Track, VideoResult
from maskadapter.output.export import encode_rle
from maskadapter.output.render import overlay
from maskadapter.progress import ProgressCallback, no_progress


def track_name(track: Track) -> str:
    """What the overlay writes on a track: its label and id (``"ball 2"``), or ``"object 2"``."""
    return f"{track.label} {track.id}" if track.label else f"object {track.id}"


class Mp4Writer:
    """H.264 (yuv420p, fast start) MP4 frames, for browsers and OpenCV alike."""

    def __init__(self, path: Path, fps: float, hw: tuple[int, int]) -> None:
        self.container = av.open(str(path), mode="w", options={"movflags": "+faststart"})
        self.stream = self.container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        self.stream.height, self.stream.width = (v + v % 2 for v in hw)
        self.stream.pix_fmt = "yuv420p"
        self.stream.options = {"crf": "23", "preset": "veryfast"}

    def write(self, rgb: np.ndarray) -> None:
        """One (H, W, 3) uint8 RGB frame."""
        h, w = rgb.shape[:2]
        if h % 2 or w % 2:
            rgb = np.pad(rgb, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        self.container.mux(self.stream.encode(frame))

    def close(self) -> None:
        self.container.mux(self.stream.encode())
        self.container.close()


def _frame_result(result: VideoResult, index: int) -> tuple[SegmentationResult, np.ndarray]:
    """One processed frame as a ``SegmentationResult`` whose classes are the tracks (for
    ``render.overlay``: a colour per track), and its (H, W) int32 class label map."""
    frame, work_hw = result.frame, result.frame.work_hw
    present = [(k, track, track.mask(index, work_hw)) for k, track in enumerate(result.tracks) if index in track.masks]
    masks = torch.as_tensor(np.stack([m for _, _, m in present])) if present else torch.zeros(0, *work_hw, dtype=bool)
    areas = frame.areas(masks).tolist()
    boxes = frame.boxes(masks).tolist()
    order = np.argsort(-np.asarray(areas), kind="stable")  # larger first, smaller painted over
    track_map = np.full(work_hw, -1, np.int32)
    class_map = np.full(work_hw, -1, np.int32)
    segments = []
    for i in order:
        k, track, mask = present[i]
        track_map[mask] = k
        class_map[mask] = track.class_id
        name = track_name(track)
        segments.append(Segment(name, k, track.score, track.top5, areas[i], tuple(boxes[i]), None, mask, frame))
    names = [track_name(track) for track in result.tracks]
    label_map = frame.to_original(track_map)
    painted = SegmentationResult(frame.orig_hw, names, segments, label_map, "per_mask", track_map, frame)
    return painted, frame.to_original(class_map)


def tracks_to_dict(result: VideoResult, frames: dict[int, list[dict]]) -> dict:
    """The tracks JSON (module docstring); ``frames`` maps a track id to its per-frame entries."""
    clip = result.clip
    objects = [
        {
            "id": track.id,
            "label": track.label,
            "class_id": track.class_id,
            "score": round(track.score, 6),
            "top5": [{"label": label, "score": round(score, 6)} for label, score in track.top5],
            "named_on": track.named_on,
            "frames": frames.get(track.id, []),
        }
        for track in result.tracks
    ]
    h, w = clip.hw
    video = {"file": clip.path.name, "width": w, "height": h, "fps": round(clip.fps, 6), "frames": clip.frame_count}
    video |= {"seconds": round(clip.seconds, 3), "every": result.every, "processed": len(result.frames)}
    video["output_fps"] = round(clip.fps / result.every, 6)
    return {"video": video, "labels": result.labels, "mode": result.mode, "objects": objects, "notes": result.notes}


def write_video_outputs(
    result: VideoResult,
    out_dir: str | Path,
    stem: str,
    alpha: float = 0.5,
    label_maps: bool = True,
    progress: ProgressCallback = no_progress,
) -> dict[str, Path]:
    """Write ``STEM_overlay.mp4``, ``STEM_tracks.json`` and (``label_maps``) the folder
    ``STEM_labels/`` with one PNG per processed frame, named by its clip frame index
    (``000012.png``). Returns the paths by kind ("overlay", "tracks", "labels")."""
    out = Path(out_dir)
    paths = {"overlay": out / f"{stem}_overlay.mp4", "tracks": out / f"{stem}_tracks.json"}
    if label_maps:
        paths["labels"] = out / f"{stem}_labels"
        paths["labels"].mkdir(parents=True, exist_ok=True)
    depth = np.uint8 if len(result.labels) < 256 else np.uint16
    entries: dict[int, list[dict]] = {}
    wanted = set(result.frames)
    writer = Mp4Writer(paths["overlay"], result.clip.fps / result.every, result.clip.hw)
    try:
        for n, (index, pixels) in enumerate(result.clip.frames(result.every)):
            if index not in wanted:
                break  # more frames than when tracked (a clip that changed): stop at what was tracked
            progress(n / len(result.frames), f"writing frame {n + 1} of {len(result.frames)}")
            painted, class_map = _frame_result(result, index)
            writer.write(overlay(pixels, painted, alpha=alpha, legend=False))
            if label_maps:
                Image.fromarray((class_map + 1).astype(depth)).save(paths["labels"] / f"{index:06d}.png")
            for seg in painted.segments:
                track = result.tracks[seg.class_id]
                x0, y0, x1, y1 = seg.box
                entry = {"frame": index, "bbox": [x0, y0, x1 - x0, y1 - y0], "area": seg.area}
                entries.setdefault(track.id, []).append(entry | {"segmentation": encode_rle(seg.mask)})
    finally:
        writer.close()
    for frames in entries.values():
        frames.sort(key=lambda e: e["frame"])
    text = json.dumps(tracks_to_dict(result, entries), ensure_ascii=False, indent=1)
    paths["tracks"].write_text(text, encoding="utf-8")
    return paths
