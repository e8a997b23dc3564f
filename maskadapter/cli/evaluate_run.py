"""The evaluation's run over a dataset: what its predictions depend on (``describe_run``,
its fingerprint), the output folder made ready to start or resume (``prepare_out``),
and the loop that predicts or reads back each image and counts it (``evaluate``).

Outputs in OUT: ``predictions/STEM.png`` (benchmark ids; unlabelled 255, or 65535 in
16-bit PNGs), ``run.json`` (the settings and their fingerprint) and ``times.jsonl``
(seconds per predicted image, one JSON object a line). ``metrics.json`` is written by
the command (``maskadapter.cli.evaluate``) from ``maskadapter.cli.evaluate_report``.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from maskadapter.cli.common import (
    ProgressBar,
    model_description,
    one_line,
    read_image_file,
    save_png,
    short_hash,
    write_json,
)
from maskadapter.cli.datasets import (
    DatasetError,
    Layout,
    Sample,
    encode_prediction,
    prediction_path,
    read_labels,
    read_prediction,
)
from maskadapter.cli.evaluate_options import EvalOptions
from maskadapter.cli.evaluate_predict import predict
from maskadapter.cli.metrics import ConfusionMatrix
from maskadapter.engine.runtime import autocast_dtype
from maskadapter.engine.segmenter import Segmenter
from maskadapter.engine.vocabulary import Vocabulary
from maskadapter.errors import InputError, MaskAdapterError
from maskadapter.settings import Settings

RUN_VERSION = 1  # bump when predictions change meaning, so that old ones are redone
METRICS_NAME = "metrics.json"
log = logging.getLogger(__name__)


def describe_run(
    data: Layout,
    options: EvalOptions,
    settings: Settings,
    real_size_random: bool,
    root: Path,
    device: torch.device,
) -> dict:
    """Everything that changes the predictions (the fingerprint is its hash): the dataset
    and where it lies, the mask source and labelling options, the models, the device and
    its autocast dtype. (``points_per_batch`` changes no mask, so it is left out.) Its
    ``common.short_hash`` is the run's fingerprint: equal fingerprints, reusable predictions."""
    amp = autocast_dtype(device, settings.precision)
    described = {
        "version": RUN_VERSION,
        "dataset": data.key,
        "root": str(root.resolve()),
        "masks": options.masks,
        "method": options.method,
        "score_threshold": options.score_threshold,
        "models": {**model_description(settings), "real_size_random": real_size_random},
        "device": {"type": device.type, "autocast": None if amp is None else str(amp).removeprefix("torch.")},
    }
    if options.masks == "sam2":
        masks = None if options.mask_settings is None else asdict(options.mask_settings)
        if masks is not None:
            masks.pop("points_per_batch")
        described.update(mode=options.mode, granularity=options.granularity, mask_settings=masks)
    else:
        described["gt_segments"] = options.gt_segments
    return described


def _flat(tree: dict, prefix: str = "") -> dict:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def prepare_out(out: Path, described: dict, overwrite: bool) -> dict[str, float]:
    """Make OUT ready before any model loads: a new run (or ``overwrite``) starts empty
    (predictions, times and metrics removed); a run with the same settings resumes.
    Returns the seconds of the images already predicted, by stem.

    Raises ``InputError`` when OUT holds predictions made with other (or unknown) settings.
    """
    run_file, predictions, times_file = out / "run.json", out / "predictions", out / "times.jsonl"
    previous = None
    if run_file.is_file():
        try:
            previous = json.loads(run_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            previous = None
    if not isinstance(previous, dict) or not isinstance(previous.get("settings"), dict):
        previous = None
    same = previous is not None and previous.get("fingerprint") == short_hash(described)
    saved = predictions.is_dir() and any(
        p.suffix == ".png" and not p.name.startswith(".") for p in predictions.iterdir()
    )
    if saved and not same and not overwrite:
        if previous is None:
            why = "but no readable run.json, so the settings they were made with are unknown"
        else:
            old, new = _flat(previous["settings"]), _flat(described)
            # settings of both runs that differ; those only one run has follow from them
            changed = sorted(k for k in old.keys() & new.keys() if old[k] != new[k])
            changed = changed or sorted(old.keys() ^ new.keys())
            why = f"made with other settings (changed: {', '.join(changed)})"
        raise InputError(f"{out} holds predictions {why}; choose another --out, or pass --overwrite to redo them")
    if not same or overwrite:
        shutil.rmtree(predictions, ignore_errors=True)
        for stale in (times_file, out / METRICS_NAME):
            stale.unlink(missing_ok=True)
    predictions.mkdir(parents=True, exist_ok=True)
    for partial in predictions.glob(".*.tmp"):  # left by an interrupted write
        partial.unlink(missing_ok=True)
    write_json({"fingerprint": short_hash(described), "settings": described}, run_file)
    seconds: dict[str, float] = {}
    if times_file.is_file():
        for line in times_file.read_text(encoding="utf-8").splitlines():
            try:
                entry = json.loads(line)
                seconds[str(entry["stem"])] = float(entry["seconds"])
            except (ValueError, KeyError, TypeError):
                continue  # a line cut by an interrupted run
    return seconds


def _read_image(sample: Sample, gt_hw: tuple[int, int]) -> np.ndarray:
    """The sample's image, which must have its labels' size."""
    image = read_image_file(sample.image)
    if image.shape[:2] != gt_hw:
        (h, w), (gh, gw) = image.shape[:2], gt_hw
        hint = " (its EXIF orientation turns it; the labels follow the stored pixels)" if (w, h) == (gh, gw) else ""
        raise InputError(f"image {sample.image} is {w}x{h} but its labels are {gw}x{gh}{hint}")
    return image


def _saved_prediction(path: Path, data: Layout, gt_hw: tuple[int, int]) -> np.ndarray | None:
    """The prediction saved at ``path`` by an earlier run, or None when there is none or
    it is unusable (then it is made again)."""
    if not path.is_file():
        return None
    try:
        pred = read_prediction(path, data)
    except DatasetError:
        log.warning("redoing the saved prediction %s: it cannot be read back", path)
        return None
    return pred if pred.shape == gt_hw else None


@dataclass
class EvalRun:
    """What ``evaluate`` did: the confusion matrix; the seconds of every predicted image
    (this run's and earlier runs'), by stem; the failed images ({"stem", "image",
    "reason"}); how many images this run predicted and how many it read back."""

    matrix: ConfusionMatrix
    seconds: dict[str, float]
    failed: list[dict]
    predicted: int = 0
    read_back: int = 0


# what fails one image (recorded, the run goes on); a DatasetError (broken ground truth) stops the run
IMAGE_FAILURES = (MaskAdapterError, OSError, cv2.error, torch.OutOfMemoryError)


def evaluate(
    segmenter: Segmenter,
    data: Layout,
    vocabulary: Vocabulary,
    samples: Sequence[Sample],
    out: Path,
    options: EvalOptions,
    seconds: dict[str, float],
    progress: ProgressBar | None = None,
) -> EvalRun:
    """Predict (or read back) each sample and count it; ``seconds``: those of images
    predicted by earlier runs (``prepare_out``).

    Raises ``DatasetError`` for a label image that cannot be read or holds a value of no
    class: the benchmark's ground truth is broken, so no number would be right.
    """
    if len(vocabulary) != data.num_classes:
        raise InputError(f"the {data.key} vocabulary has {len(vocabulary)} classes, expected {data.num_classes}")
    run = EvalRun(ConfusionMatrix(data.num_classes), dict(seconds), [])
    times_file = out / "times.jsonl"
    for sample in samples:
        if progress:
            progress.start(sample.image)
        gt = read_labels(sample.labels, data)
        saved = prediction_path(out, sample.stem)
        try:
            pred = _saved_prediction(saved, data, gt.shape)
            run.read_back += pred is not None
            if pred is None:
                session = segmenter.session(_read_image(sample, gt.shape))
                started = time.perf_counter()
                try:
                    pred = predict(segmenter, session, gt, vocabulary, options)
                finally:
                    segmenter.store.discard(session.key)  # no image comes back: free its features
                elapsed = time.perf_counter() - started
                save_png(encode_prediction(pred, data), saved)
                run.predicted += 1
                run.seconds[sample.stem] = elapsed
                with open(times_file, "a", encoding="utf-8") as f:
                    f.write(json.dumps({"stem": sample.stem, "seconds": round(elapsed, 6)}) + "\n")
            run.matrix.add(pred, gt)
        except DatasetError:
            raise
        except IMAGE_FAILURES as err:
            reason = one_line(err)
            run.failed.append({"stem": sample.stem, "image": str(sample.image), "reason": reason})
            if progress:
                progress.say(f"failed, left out: {reason}", file=sys.stderr)
        if progress:
            progress.done()
    return run
