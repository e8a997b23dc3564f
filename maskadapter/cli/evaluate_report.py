"""The evaluation's report: the contents of ``metrics.json`` and the printed table.

``metrics.json`` holds detectron2's headline metrics (``HEADLINE``; the paper compares
mIoU), per-class IoU and accuracy, the strict variants (an unlabelled pixel counted
wrong; ``maskadapter.cli.metrics``), the times per image, the settings the predictions
were made with, the weights, the failed images and the run record (device, versions,
start and end times).
"""

from __future__ import annotations

import platform
import statistics
from collections import Counter
from collections.abc import Sequence

import torch

from maskadapter.cli.common import plural
from maskadapter.cli.datasets import Layout, Sample
from maskadapter.cli.metrics import ConfusionMatrix
from maskadapter.engine.segmenter import Segmenter
from maskadapter.engine.vocabulary import Vocabulary

HEADLINE = ("mIoU", "fwIoU", "pACC", "mACC")  # detectron2's, in its order
RANDOM_NOTE = "random weights: these numbers are meaningless (they only show that the command runs)"


def class_names(vocabulary: Vocabulary) -> list[str]:
    """Class labels, with the benchmark id added to a label that repeats (ADE20K-847 has several)."""
    labels = vocabulary.labels
    counts = Counter(labels)
    return [f"{label} (class {i})" if counts[label] > 1 else label for i, label in enumerate(labels)]


def report(
    matrix: ConfusionMatrix, names: Sequence[str], data: Layout, samples: Sequence[Sample],
    seconds: dict[str, float], failed: list[dict], described: dict, weights: dict, extra: dict,
) -> dict:  # fmt: skip
    """The contents of metrics.json."""
    found = matrix.metrics()
    timed = [seconds[s.stem] for s in samples if s.stem in seconds]
    per_class = [
        {"id": i, "name": names[i], "IoU": found["IoU"][i], "ACC": found["ACC"][i],
         "strict_IoU": found["strict_IoU"][i], "gt_pixels": found["gt_pixels"][i],
         "predicted_pixels": found["predicted_pixels"][i]}
        for i in range(data.num_classes)
    ]  # fmt: skip
    return {
        "dataset": data.key,
        "title": data.title,
        "images": len(samples) - len(failed),
        "compare_with_paper": "mIoU",
        **{name: found[name] for name in HEADLINE},
        "IoU": {names[i]: found["IoU"][i] for i in range(data.num_classes)},
        "unlabelled_share": found["unlabelled_share"],
        **{f"strict_{name}": found[f"strict_{name}"] for name in HEADLINE},
        "per_class": per_class,
        "pixels": found["pixels"],
        "unlabelled_pixels": found["unlabelled_pixels"],
        "seconds_per_image": round(statistics.fmean(timed), 6) if timed else None,
        "seconds_per_image_median": round(statistics.median(timed), 6) if timed else None,
        "images_timed": len(timed),
        "settings": described,
        "weights": weights,
        "failed": failed,
        **extra,
    }


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def table(metrics: dict, per_class: bool = False) -> str:
    """The printed summary: the headline metrics, then optionally every class seen."""
    settings = metrics["settings"]
    source = settings["masks"]
    if source == "sam2":
        source += f" ({settings['mode']}, granularity {settings['granularity']})"
    else:
        source += f" ({settings['gt_segments']})"
    lines = [
        f"{metrics['title']}: {plural(metrics['images'], 'image')}, masks {source}, classified by "
        f"{'Mask-Adapter' if settings['method'] == 'adapter' else 'mask pooling'}",
        f"{'':<34}" + "".join(f"{name:>8}" for name in HEADLINE),
        f"{'detectron2 (the paper compares mIoU)':<34}" + "".join(f"{_cell(metrics[k]):>8}" for k in HEADLINE),
        f"{'strict (unlabelled counted wrong)':<34}" + "".join(f"{_cell(metrics['strict_' + k]):>8}" for k in HEADLINE),
        f"unlabelled pixels: {_cell(metrics['unlabelled_share'])} % (detectron2's void predictions: not counted)",
    ]
    if metrics["seconds_per_image"] is not None:
        lines.append(
            f"time per image: {metrics['seconds_per_image']:.3f} s mean, {metrics['seconds_per_image_median']:.3f} s "
            f"median over {plural(metrics['images_timed'], 'image')} ({metrics['device']})"
        )
    if per_class:
        rows = [c for c in metrics["per_class"] if c["IoU"] is not None]
        width = max([len(c["name"]) for c in rows] + [5])
        lines.append(f"{'class':<{width}} {'IoU':>7} {'ACC':>7} {'gt px':>10} {'pred px':>10}")
        lines += [
            f"{c['name']:<{width}} {_cell(c['IoU']):>7} {_cell(c['ACC']):>7} {c['gt_pixels']:>10} "
            f"{c['predicted_pixels']:>10}"
            for c in rows
        ]
    if not metrics["weights"]["real"]:
        lines.append(f"WARNING: {RANDOM_NOTE}")
    return "\n".join(lines)


def weights_record(segmenter: Segmenter) -> dict:
    """metrics.json's ``weights``: real or random, the models' description (and
    ``RANDOM_NOTE`` for random ones)."""
    weights = {"real": segmenter.real_weights, "description": segmenter.models.description}
    if not segmenter.real_weights:
        weights["note"] = RANDOM_NOTE
    return weights


def device_name(segmenter: Segmenter) -> str:
    """The segmenter's device, with the GPU's name on CUDA (``"cuda:0 (NVIDIA H200)"``)."""
    shown = str(segmenter.device)
    if segmenter.device.type == "cuda":
        shown += f" ({torch.cuda.get_device_name(segmenter.device)})"
    return shown


def platform_record(segmenter: Segmenter) -> dict:
    """Where the numbers were measured: ``device``, ``platform`` and ``torch`` version."""
    return {"device": device_name(segmenter), "platform": platform.platform(), "torch": torch.__version__}
