"""The benchmark's comparisons: sam2's own ``SAM2AutomaticMaskGenerator`` in a process of
its own, and our automatic path in the other precision.

sam2's generator runs as a user of sam2 runs it: plain Python, float32, the allocator
as Python leaves it, on the same SAM-2 weights, image and settings
(``run_sam2_reference``). ``compare_precision`` runs our path in float32 and bf16 and
counts the mask pixels and labels that change, masks matched one to one by IoU
(``match_masks``).
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from maskadapter.engine.mask_settings import AutoMaskSettings
from maskadapter.engine.segmenter import Segmenter
from maskadapter.engine.vocabulary import Vocabulary
from maskadapter.errors import MaskAdapterError
from maskadapter.memory import ENV as ALLOCATOR_ENV

MATCH_STRIDE = 7  # masks are matched across precisions on every 7th pixel (exact counts follow)

# sam2's generator as a user runs it: plain Python, sam2 and torch, nothing of ours
# imported (so neither our allocator tuning nor our code is in its process)
SAM2_REFERENCE = r"""
import json, resource, sys, time
import numpy as np, torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator
spec = json.loads(sys.argv[1])
torch.set_num_threads(spec["threads"])
cfg = OmegaConf.load(spec["config"])
OmegaConf.resolve(cfg)
model = instantiate(cfg.model, _recursive_=True)
model.load_state_dict(torch.load(spec["weights"], map_location="cpu", weights_only=True)["model"], strict=True)
model = model.to(spec["device"]).eval()
image = np.load(spec["image"])
generator = SAM2AutomaticMaskGenerator(model, output_mode="binary_mask", **spec["settings"])
sync = torch.cuda.synchronize if spec["device"].startswith("cuda") else (lambda: None)
before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
records = generator.generate(image)
sync()
wall, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
user, system = after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime
print(json.dumps({"wall_s": wall, "user_s": user, "sys_s": system, "masks": len(records)}))
"""


def run_sam2_reference(segmenter: Segmenter, image: np.ndarray, settings: AutoMaskSettings) -> dict:
    """sam2's ``SAM2AutomaticMaskGenerator.generate`` on the same SAM-2 weights, image and
    settings, in a fresh Python process as a user of sam2 runs it (float32, Python's
    allocator defaults). Returns its wall and CPU seconds and mask count."""
    config = segmenter.models.sam2_config
    if config is None:
        raise MaskAdapterError("sam2's generator needs the SAM-2 config file of the model (Models.sam2_config)")
    env = {k: v for k, v in os.environ.items() if k not in ("THP_MEM_ALLOC_ENABLE", ALLOCATOR_ENV)}
    with tempfile.TemporaryDirectory(prefix="maskadapter-sam2-") as tmp:
        weights, picture = Path(tmp, "sam2.pt"), Path(tmp, "image.npy")
        torch.save({"model": segmenter.models.sam2.state_dict()}, weights)
        np.save(picture, image)
        spec = {
            "config": str(config),
            "weights": str(weights),
            "image": str(picture),
            "device": str(segmenter.device),
            "threads": torch.get_num_threads(),
            "settings": settings.generator_args,
        }
        done = subprocess.run(
            [sys.executable, "-c", SAM2_REFERENCE, json.dumps(spec)], env=env, capture_output=True, text=True
        )
    if done.returncode != 0:
        raise MaskAdapterError(f"sam2's generator failed in its own process:\n{done.stderr[-2000:]}")
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in figures.items()}


def compare_precision(
    segmenter: Segmenter, image: np.ndarray, vocabulary: Vocabulary, settings: AutoMaskSettings, mode: str
) -> dict:
    """The automatic path on ``image`` in this run's precision and in the other one
    (float32 when this run autocasts, else bf16), each from a fresh session: masks
    matched one to one (greedily by IoU, at least 0.5), the share of their pixels
    that differ, how many best labels differ, and the label map's changed pixels."""
    other = copy.copy(segmenter)
    other.store = type(segmenter.store)(segmenter.store.budget_bytes)
    other.amp_dtype = None if segmenter.amp_dtype is not None else torch.bfloat16
    runs = []
    for seg in (segmenter, other):
        session = seg.store.open(image)
        result = seg.segment_automatic(session, vocabulary, settings, mode)
        found = seg.automatic_masks(session, settings)
        labels = seg.mask_probabilities(session, found.masks, vocabulary).argmax(1)
        runs.append((found.masks.flatten(1), labels, result.label_map))
    (a, la, map_a), (b, lb, map_b) = runs
    pairs = match_masks(a[:, ::MATCH_STRIDE], b[:, ::MATCH_STRIDE])  # matched on a sample of pixels
    ia, ib = pairs[:, 0], pairs[:, 1]
    differ = union = 0
    for start in range(0, len(pairs), 64):  # pixels counted exactly, 64 pairs at a time
        x, y = a[ia[start : start + 64]], b[ib[start : start + 64]]
        differ, union = differ + int((x ^ y).sum()), union + int((x | y).sum())
    return {
        "precisions": [segmenter.arithmetic, other.arithmetic],
        "masks": [len(a), len(b)],
        "matched_masks": len(pairs),
        "matched_pixels_changed": round(differ / max(union, 1), 6),
        "matched_labels_changed": int((la[ia] != lb[ib]).sum()),
        "label_map_pixels_changed": round(float((map_a != map_b).mean()), 6),
    }


def match_masks(a: torch.Tensor, b: torch.Tensor, least: float = 0.5) -> torch.Tensor:
    """(N, P) and (M, P) bool masks -> (K, 2) index pairs, one to one, greedily by IoU
    (best first), only pairs with IoU of at least ``least``."""
    if not len(a) or not len(b):
        return torch.zeros(0, 2, dtype=torch.long)
    fa, fb = a.float(), b.float()
    inter = fa @ fb.T  # (N, M)
    iou = inter / (fa.sum(1)[:, None] + fb.sum(1)[None] - inter).clamp(min=1)
    pairs = []
    iou = torch.where(iou >= least, iou, -1.0)
    while True:
        best = int(iou.argmax())
        i, j = divmod(best, iou.shape[1])
        if iou[i, j] < 0:
            break
        pairs.append((i, j))
        iou[i, :], iou[:, j] = -1.0, -1.0
    return torch.tensor(pairs, dtype=torch.long).reshape(-1, 2)
