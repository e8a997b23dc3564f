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

from maskadapter.engine import runtime
from maskadapter.engine import segmenter as segmenter_module
from maskadapter.engine.mask_settings import AutoMaskSettings
from maskadapter.engine.segmenter import Segmenter
from maskadapter.engine.transforms import ImageTransform
from maskadapter.engine.vocabulary import build_vocabulary
from maskadapter.errors import InputError
from maskadapter.settings import Settings


@pytest.mark.parametrize(
    "device,precision,native,capability,expected",
    [
        ("cpu", "auto", True, None, torch.bfloat16),
        ("cpu", "auto", False, None, None),
        ("cpu", "float32", True, None, None),
        ("cpu", "bf16", False, None, torch.bfloat16),
        ("cuda", "auto", False, (8, 0), torch.bfloat16),
        ("cuda", "auto", False, (7, 5), None),  # older GPUs: float32 (float16 untested end to end)
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
    detected = runtime.cpu_has_native_bf16.__wrapped__()  # also under --cpu-bf16 native
    assert detected == bool(flags & {"amx_bf16", "avx512_bf16"})


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


def test_bf16_and_float32_give_the_same_labels_where_the_margin_is_clear(tiny_models, tmp_path, image, monkeypatch):
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

ALLOCATOR = """
import ctypes, json, os
{imports}
import torch
tensor = torch.ones(16 * 2**20)  # 64 MiB, alive while its mapping is read
address, flags, inside = tensor.data_ptr(), None, False
for line in open("/proc/self/smaps"):
    field = line.split()[0]
    if not field.endswith(":"):  # a mapping's first line: "start-end perms ..."
        start, end = (int(x, 16) for x in field.split("-"))
        inside = start <= address < end
    elif field == "VmFlags:" and inside:
        flags = line.split()[1:]
FIELDS = "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost"
class MallInfo2(ctypes.Structure):  # glibc's struct mallinfo2: ten size_t counters
    _fields_ = [(name, ctypes.c_size_t) for name in FIELDS.split()]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype = ctypes.c_void_p
mapped = libc.mallinfo2().hblks
block = libc.malloc(20 * 2**20)  # 20 MiB: mmapped at glibc's default threshold, heap above 20 MiB
mapped = libc.mallinfo2().hblks - mapped
libc.free(ctypes.c_void_p(block))
print(json.dumps({{"flags": flags, "mmapped": mapped, "thp": os.environ.get("THP_MEM_ALLOC_ENABLE")}}))
"""


def _allocator(env_extra: dict[str, str], imports: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("THP_MEM_ALLOC_ENABLE", "MASKADAPTER_ALLOCATOR")}
    done = subprocess.run(
        [sys.executable, "-c", ALLOCATOR.format(imports=imports)],
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
@pytest.mark.skipif(not Path("/proc/self/smaps").exists(), reason="no /proc/self/smaps to read mappings from")
def test_the_programs_tune_the_allocator_and_importing_maskadapter_does_not():
    """Once a program's start-up ran (``maskadapter.startup``, first in ``app.py`` and the
    ``maskadapter`` command), PyTorch asks the kernel for huge pages for a large tensor
    (``madvise(MADV_HUGEPAGE)``: the ``hg`` flag of its mapping) and glibc keeps a 20 MiB
    block on its heap instead of mapping it from the kernel (mmap threshold raised);
    with the defaults, after ``import maskadapter`` alone (and using it), and with
    MASKADAPTER_ALLOCATOR=system, neither."""
    import ctypes

    if not hasattr(ctypes.CDLL("libc.so.6"), "mallinfo2"):
        pytest.skip("glibc before 2.33 has no mallinfo2")
    plain = _allocator({}, "")
    imported = _allocator({}, "import maskadapter; maskadapter.Segmenter")
    tuned = _allocator({}, "import maskadapter.startup")
    system = _allocator({"MASKADAPTER_ALLOCATOR": "system"}, "import maskadapter.startup")
    runs = (plain, imported, tuned, system)
    assert all(run["flags"] is not None for run in runs)  # the tensor's mapping was found
    assert tuple("hg" in run["flags"] for run in runs) == (False, False, True, False)
    assert tuple(run["mmapped"] for run in runs) == (1, 1, 0, 1)
    assert tuple(run["thp"] for run in runs) == (None, None, "1", None)
