"""The precision setting (auto / float32 / bf16), CPU bf16 detection, and the
allocator tuning done when maskadapter is imported."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT

from maskadapter import runtime
from maskadapter import segmenter as segmenter_module
from maskadapter.errors import InputError
from maskadapter.masks import AutoMaskSettings
from maskadapter.segmenter import Segmenter
from maskadapter.settings import Settings
from maskadapter.transforms import ImageTransform
from maskadapter.vocabulary import build_vocabulary


@pytest.mark.parametrize(
    "device,precision,native,capability,expected",
    [
        ("cpu", "auto", True, None, torch.bfloat16),
        ("cpu", "auto", False, None, None),
        ("cpu", "float32", True, None, None),
        ("cpu", "bf16", False, None, torch.bfloat16),
        ("cuda", "auto", False, (8, 0), torch.bfloat16),
        ("cuda", "auto", False, (7, 5), torch.float16),
        ("cuda", "float32", False, (9, 0), None),
        ("cuda", "bf16", False, (7, 5), torch.bfloat16),
    ],
)
def test_autocast_dtype_follows_the_precision_setting(monkeypatch, device, precision, native, capability, expected):
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: native)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert runtime.autocast_dtype(torch.device(device), precision) == expected


def test_native_bf16_detection_agrees_with_the_cpu_flags():
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists():
        pytest.skip("no /proc/cpuinfo on this system")  # not Linux: nothing to compare with
    flags = set(cpuinfo.read_text().split())
    assert runtime.cpu_has_native_bf16() == bool(flags & {"amx_bf16", "avx512_bf16"})


def test_precision_setting_from_flags_environment_and_refusals(monkeypatch):
    assert Settings().precision == "auto"
    monkeypatch.setenv("MASKADAPTER_PRECISION", "bf16")
    assert Settings.from_env().precision == "bf16"
    assert Settings.from_env(precision="float32").precision == "float32"
    with pytest.raises(InputError, match="precision must be one of auto, float32, bf16, got 'half'"):
        Settings(precision="half")
    with pytest.raises(InputError, match="precision must be one of"):
        Segmenter.__new__(Segmenter).__init__(None, precision="fp8")


def _segmenter(models, tmp_path, precision: str) -> Segmenter:
    return Segmenter(
        models, "cpu", ImageTransform(short_side=224, max_size=320), str(tmp_path / precision), precision=precision
    )


def test_bf16_and_float32_give_the_same_labels_where_the_margin_is_clear(
    tiny_models, tmp_path, image, monkeypatch
):
    """The same masks classified under float32 and under bf16 autocast (CLIP features,
    adapter and pooling in bf16; the softmax and logits in float32): every mask whose
    float32 winner leads by a clear margin keeps its label.

    Random weights give every class nearly the same probability, so the classes here
    are directions in the space of the masks' own float32 embeddings (both ends of
    their main axis of variation and the second axis), at CLIP's largest logit scale."""
    f32, bf16 = _segmenter(tiny_models, tmp_path, "float32"), _segmenter(tiny_models, tmp_path, "bf16")
    assert (f32.arithmetic, bf16.arithmetic) == ("float32", "bfloat16")
    h, w = image.shape[:2]
    ys, xs = np.mgrid[:h, :w]
    masks = np.stack(  # 46 boxes and discs of every size over the photo
        [(abs(xs - cx) < r) & (abs(ys - cy) < r * 0.7) for cx in (30, 80, 130) for cy in (25, 60, 95) for r in (8, 20)]
        + [np.hypot(xs - cx, ys - cy) < r for cx in (40, 120) for cy in (30, 80) for r in (6, 15, 30, 60, 90, 120, 150)]
    )
    vocabulary = build_vocabulary("a, b, c")
    seen = []
    original = segmenter_module.classify_embeddings
    monkeypatch.setattr(
        segmenter_module, "classify_embeddings", lambda clip, emb, *rest: seen.append(emb) or original(clip, emb, *rest)
    )
    f32.mask_probabilities(f32.session(image), masks, vocabulary)
    emb = torch.nn.functional.normalize(torch.cat(seen, 1)[0].float(), dim=-1)  # (N, D)
    axes = torch.linalg.svd(emb - emb.mean(0), full_matrices=False).Vh  # main axes of variation
    classes = torch.stack([axes[0], -axes[0], axes[1]])
    for seg in (f32, bf16):
        monkeypatch.setattr(seg, "text_embeddings", lambda vocabulary, progress=None: (classes, torch.arange(3)))
    scale = tiny_models.clip.logit_scale
    saved = scale.detach().clone()
    try:
        with torch.no_grad():
            scale.fill_(np.log(100.0))
        p32 = f32.mask_probabilities(f32.session(image), masks, vocabulary)
        p16 = bf16.mask_probabilities(bf16.session(image), masks, vocabulary)
    finally:
        with torch.no_grad():
            scale.copy_(saved)
    assert p16.dtype == torch.float32  # probabilities stay float32 under autocast
    top2 = p32.topk(2, dim=1).values
    clear = (top2[:, 0] - top2[:, 1]) > 0.2
    assert int(clear.sum()) >= 10 and len(set(p32.argmax(1)[clear].tolist())) >= 2, "a case with clear margins"
    assert torch.equal(p32.argmax(1)[clear], p16.argmax(1)[clear])


def test_bf16_runs_the_whole_automatic_path(tiny_models, tmp_path, image):
    seg = _segmenter(tiny_models, tmp_path, "bf16")
    settings = AutoMaskSettings(points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    result = seg.segment_automatic(image, build_vocabulary("cat, grass"), settings)
    assert result.label_map.shape == image.shape[:2] and result.label_map.dtype == np.int32
    assert result.segments and set(np.unique(result.label_map)) <= {-1, 0, 1}


# ------------------------------------------------------------------ the allocator

FAULTS = """
import json, os, resource
{imports}
import torch
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
torch.ones(16 * 2**20)  # warm
before = faults()
for _ in range(20):  # a 64 MiB tensor allocated, written and freed 20 times
    torch.ones(16 * 2**20)
print(json.dumps({{"faults": faults() - before, "thp": os.environ.get("THP_MEM_ALLOC_ENABLE")}}))
"""


def _faults(env_extra: dict[str, str], imports: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("THP_MEM_ALLOC_ENABLE", "MASKADAPTER_ALLOCATOR")}
    done = subprocess.run(
        [sys.executable, "-c", FAULTS.format(imports=imports)],
        env={**env, **env_extra},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the tuning is glibc's")
@pytest.mark.skipif(not THP.exists() or "[never]" in THP.read_text(), reason="transparent huge pages are off")
def test_importing_maskadapter_makes_large_tensors_cheap_to_fault_in():
    """A 64 MiB tensor freed and made again comes from the kernel each time (glibc
    maps blocks over 32 MiB): 16,384 page faults of 4 KiB each with the defaults, 32 of
    2 MiB once maskadapter has tuned the process (huge pages for large tensors);
    MASKADAPTER_ALLOCATOR=system leaves the defaults."""
    plain = _faults({}, "")
    tuned = _faults({}, "import maskadapter")
    system = _faults({"MASKADAPTER_ALLOCATOR": "system"}, "import maskadapter")
    per_block = 64 * 2**20 // 4096
    assert plain["faults"] > 10 * per_block and system["faults"] > 10 * per_block
    assert tuned["faults"] < per_block  # 20 tensors: fewer faults than one tensor's 4 KiB pages
    assert (plain["thp"], tuned["thp"], system["thp"]) == (None, "1", None)
