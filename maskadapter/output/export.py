"""Exports: a label-map PNG and a segments JSON with COCO RLE masks (pycocotools).

Label-map PNG: single channel, 0 = unlabelled, k = class k-1 of ``labels`` (8-bit for
up to 255 classes, else 16-bit).

Segments JSON::

    {"image": {"width": W, "height": H, "file": name},
     "labels": [class label, ...],
     "mode": "per_mask" | "semantic",
     "segments": [{"id": 1, "label": str, "class_id": int, "score": float,
                   "top5": [{"label": str, "score": float}, ...],
                   "area": int, "bbox": [x, y, w, h],          # COCO convention, pixels
                   "sam_iou": float | null,
                   "segmentation": {"size": [H, W], "counts": str}}]}   # COCO RLE
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from maskadapter.engine.results import SegmentationResult


def encode_rle(mask: np.ndarray) -> dict:
    """(H, W) bool -> COCO RLE ``{"size": [H, W], "counts": str}``."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def decode_rle(rle: dict) -> np.ndarray:
    """COCO RLE (counts as str or bytes) -> (H, W) bool."""
    counts = rle["counts"]
    data = {"size": rle["size"], "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
    return mask_utils.decode(data).astype(bool)


def segments_to_dict(result: SegmentationResult, file_name: str | None = None) -> dict:
    h, w = result.image_size
    segments = []
    for i, seg in enumerate(result.segments, start=1):
        x0, y0, x1, y1 = seg.box
        segments.append(
            {
                "id": i,
                "label": seg.label,
                "class_id": seg.class_id,
                "score": round(seg.score, 6),
                "top5": [{"label": label, "score": round(score, 6)} for label, score in seg.top5],
                "area": seg.area,
                "bbox": [x0, y0, x1 - x0, y1 - y0],
                "sam_iou": None if seg.sam_iou is None else round(seg.sam_iou, 6),
                "segmentation": encode_rle(seg.mask),
            }
        )
    return {
        "image": {"width": w, "height": h, "file": file_name},
        "labels": list(result.labels),
        "mode": result.mode,
        "segments": segments,
    }


def segments_json(result: SegmentationResult, file_name: str | None = None) -> str:
    return _dumps(segments_to_dict(result, file_name))


def _dumps(data: dict) -> str:
    return json.dumps(data, ensure_ascii=False, indent=1)


def label_map_image(result: SegmentationResult) -> np.ndarray:
    """(H, W) uint8/uint16 array: 0 unlabelled, k = class k-1."""
    dtype = np.uint8 if len(result.labels) < 256 else np.uint16
    return (result.label_map + 1).astype(dtype)


def save_label_map(result: SegmentationResult, path: str | os.PathLike) -> Path:
    path = Path(path)
    Image.fromarray(label_map_image(result)).save(path)
    return path


def save_segments_json(result: SegmentationResult, path: str | os.PathLike, file_name: str | None = None) -> Path:
    return write_segments_json(segments_to_dict(result, file_name), path)


def write_segments_json(data: dict, path: str | os.PathLike) -> Path:
    """Write a dict made by ``segments_to_dict`` (when the caller needs it too)."""
    path = Path(path)
    path.write_text(_dumps(data), encoding="utf-8")
    return path
