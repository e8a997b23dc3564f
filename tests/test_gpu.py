"""The CUDA path: automatic masks, points, compare and a batch run under autocast, and
torch.compile, on the tiny models loaded back from their files.

Marked ``gpu`` and skipped where no CUDA device is present: every path here also runs
on the CPU in the rest of the suite. On a GPU machine ``bash .ci/gpu`` runs these and
the real-size benchmark (README: Benchmark)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import EXAMPLES, small_image

from maskadapter.cli import batch
from maskadapter.engine.mask_settings import AutoMaskSettings
from maskadapter.engine.runtime import compile_sam2
from maskadapter.engine.segmenter import Segmenter
from maskadapter.engine.transforms import ImageTransform
from maskadapter.engine.vocabulary import build_vocabulary
from maskadapter.engine.weights import build_models

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]

SETTINGS = AutoMaskSettings(points_per_side=8, pred_iou_thresh=0.0, stability_score_thresh=0.0)


def _segmenter(files, tmp_path, device: str, precision: str) -> Segmenter:
    models = build_models(files, device)
    transform = ImageTransform(short_side=224, max_size=320)
    return Segmenter(models, device, transform, str(tmp_path / f"cache-{device}"), precision=precision)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


@pytest.fixture(scope="module")
def cuda_files(tiny_files):
    return tiny_files


def test_cuda_float32_masks_match_the_cpu(cuda_files, tmp_path):
    image = small_image("chelsea.png", 320)
    cpu = _segmenter(cuda_files, tmp_path, "cpu", "float32")
    gpu = _segmenter(cuda_files, tmp_path, "cuda", "float32")
    a = cpu.automatic_masks(cpu.session(image), SETTINGS)
    b = gpu.automatic_masks(gpu.session(image), SETTINGS)
    assert b.masks.device.type == "cuda" and len(a.masks) == len(b.masks) >= 1
    for x, y in zip(a.masks.numpy(), b.masks.cpu().numpy(), strict=True):
        assert _iou(x, y) >= 0.98


def test_cuda_autocast_automatic_points_and_compare(cuda_files, tmp_path):
    image = small_image("chelsea.png", 320)
    seg = _segmenter(cuda_files, tmp_path, "cuda", "auto")
    major, _ = torch.cuda.get_device_capability()
    assert seg.amp_dtype == (torch.bfloat16 if major >= 8 else torch.float16)
    vocabulary = build_vocabulary("cat, grass, sky")
    session = seg.session(image)
    result = seg.segment_automatic(session, vocabulary, SETTINGS)
    assert result.label_map.shape == image.shape[:2] and result.segments
    h, w = image.shape[:2]
    clicked = seg.segment_points(session, [[w / 2, h / 2, 1]], vocabulary)
    assert clicked.label_map.shape == image.shape[:2]
    compared = seg.compare(session, vocabulary, SETTINGS)
    assert compared.masks >= 1 and compared.changed <= compared.masks
    assert compared.adapter.label_map.shape == compared.pooling.label_map.shape == image.shape[:2]
    # one image: encoded once, masks made once, for all three requests
    assert seg.stats["sam_image_encodings"] == 1 and seg.stats["clip_image_encodings"] == 1
    assert seg.stats["mask_generations"] == 1


def test_cuda_batch_run(tmp_path):
    out = tmp_path / "out"
    inputs = [str(EXAMPLES / "chelsea.png"), str(EXAMPLES / "coffee.png")]
    args = [*inputs, "--out", str(out), "--vocab", "cat, cup", "--tiny-random", "--device", "cuda"]
    args += ["--points-per-side", "4", "--cache-dir", str(tmp_path / "cache"), "--quiet"]
    assert batch.main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"]["labelled"] == 2


def test_cuda_compiled_sam2_gives_the_eager_masks(cuda_files, tmp_path):
    image = small_image("chelsea.png", 320)
    eager = _segmenter(cuda_files, tmp_path, "cuda", "float32")
    compiled = _segmenter(cuda_files, tmp_path, "cuda", "float32")
    compile_sam2(compiled.models.sam2)
    a = eager.automatic_masks(eager.session(image), SETTINGS)
    b = compiled.automatic_masks(compiled.session(image), SETTINGS)
    assert len(a.masks) == len(b.masks) >= 1
    for x, y in zip(a.masks.cpu().numpy(), b.masks.cpu().numpy(), strict=True):
        assert _iou(x, y) >= 0.98
