"""Evaluation: mIoU of this pipeline on the open-vocabulary semantic segmentation benchmarks.

    python -m maskadapter.cli.evaluate --dataset ade20k --root DIR --out OUT [--masks sam2|ground-truth]
    maskadapter evaluate --dataset ade20k ...

Datasets and their layouts: ``maskadapter.cli.datasets``. Each image is labelled with the
benchmark's predefined vocabulary (class id = benchmark id) from one of two mask sources:

- ``sam2``: the demo's pipeline, SAM-2's automatic masks named by Mask-Adapter and
  painted as the semantic map (``--mode``, ``--granularity``, the SAM-2 flags as in the CLI);
- ``ground-truth``: every ground-truth segment is one mask, named by Mask-Adapter, so
  that the score measures mask classification alone. A segment is a connected region
  (8-connectivity) of one class; ``--gt-segments classes`` takes one mask per class
  present instead (what Mask-Adapter's own ground-truth evaluation code does).

Metrics are those of detectron2's semantic segmentation evaluator (``ConfusionMatrix``).
Outputs in OUT: ``predictions/STEM.png`` (benchmark ids; unlabelled 255, or 65535 in
16-bit PNGs for benchmarks of more than 255 classes), ``metrics.json``, ``run.json`` (the
settings the predictions were made with) and ``times.jsonl`` (seconds per image). A
rerun with the same settings resumes: saved predictions are read back, not redone.

Exit codes: 0 every image evaluated; 3 some images failed (listed in metrics.json,
left out of the metrics); 2 bad arguments, dataset or models, broken ground truth, or
no image evaluated.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import os
import platform
import shutil
import statistics
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import cv2
import numpy as np
import torch

from maskadapter.cli.common import (
    EXIT_ERROR,
    EXIT_OK,
    EXIT_PARTIAL,
    ProgressBar,
    add_chatter_arguments,
    add_painting_arguments,
    model_description,
    plural,
    read_image_file,
    save_png,
    utc_now,
    write_json,
)
from maskadapter.cli.datasets import (
    LAYOUTS,
    DatasetError,
    Layout,
    Sample,
    dataset_root,
    encode_prediction,
    layout,
    prediction_path,
    read_labels,
    read_prediction,
    scan,
)
from maskadapter.cli.metrics import ConfusionMatrix
from maskadapter.engine.mask_settings import (
    AutoMaskSettings,
    add_mask_arguments,
    default_mask_settings,
    mask_settings_from_args,
)
from maskadapter.engine.runtime import autocast_dtype, resolve_device
from maskadapter.engine.segmenter import METHODS, Segmenter
from maskadapter.engine.session import ImageSession
from maskadapter.engine.vocabulary import Vocabulary
from maskadapter.errors import InputError, MaskAdapterError
from maskadapter.logs import setup_logging
from maskadapter.settings import Settings, add_arguments, settings_from_args

MASK_SOURCES = ("sam2", "ground-truth")
GT_SEGMENTS = ("regions", "classes")
EVAL_INPUT_SIZE = "eval896"  # the published evaluation's CLIP input size (long side 896)
RUN_VERSION = 1  # bump when predictions change meaning, so that old ones are redone
RANDOM_NOTE = "random weights: these numbers are meaningless (they only show that the command runs)"
REGION_PIXELS = 2**26  # mask pixels made at once when classifying ground-truth segments
METRICS_NAME = "metrics.json"
HEADLINE = ("mIoU", "fwIoU", "pACC", "mACC")  # detectron2's, in its order
SIZE_SETTINGS = ("input_size", "short_side", "max_size")  # the CLIP input size
SAM2_MASK_FIELDS = tuple(f.name for f in fields(AutoMaskSettings))  # their flags: --points-per-side ...
log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------- predictions


@dataclass(frozen=True)
class EvalOptions:
    """How images are labelled: the mask source and the labelling options."""

    masks: str = "sam2"
    gt_segments: str = "regions"
    mode: str = "semantic"
    granularity: float = 0.8
    score_threshold: float = 0.0
    method: str = "adapter"
    mask_settings: AutoMaskSettings | None = None  # None: the segmenter's defaults

    def __post_init__(self) -> None:
        for name, allowed in (("masks", MASK_SOURCES), ("gt_segments", GT_SEGMENTS), ("method", METHODS)):
            if getattr(self, name) not in allowed:
                raise InputError(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")


def ground_truth_segments(gt: np.ndarray, by: str = "regions") -> tuple[np.ndarray, int]:
    """The ground-truth segments of one image as an (H, W) int32 map of segment ids
    (-1 on ignore pixels) and their count.

    ``by="regions"``: each connected region (8-connectivity) of one class is a segment;
    ``by="classes"``: each class present is one segment.
    """
    if by not in GT_SEGMENTS:
        raise InputError(f"by must be one of {', '.join(GT_SEGMENTS)}, got {by!r}")
    ids = np.full(gt.shape, -1, dtype=np.int32)
    classes = np.unique(gt[gt >= 0])
    if by == "classes":
        ids[gt >= 0] = np.searchsorted(classes, gt[gt >= 0])
        return ids, len(classes)
    count = 0
    for c in classes:  # one labelling pass per class present (not per segment)
        n, comp = cv2.connectedComponents((gt == c).astype(np.uint8), connectivity=8)
        inside = comp > 0
        ids[inside] = comp[inside] - 1 + count
        count += n - 1
    return ids, count


def classify_segments(
    segmenter: Segmenter,
    image: np.ndarray | ImageSession,
    ids: np.ndarray,
    count: int,
    vocabulary: Vocabulary,
    method: str,
) -> np.ndarray:
    """(count, K) float32 class probabilities of the segments of an (H, W) id map
    (``ground_truth_segments``) of an (H, W, 3) uint8 RGB image (or its session), made as
    masks a chunk at a time."""
    session = image if isinstance(image, ImageSession) else segmenter.session(image)
    k = len(vocabulary)
    if count == 0:
        return np.zeros((0, k), dtype=np.float32)
    id_map = torch.as_tensor(ids, device=segmenter.device)
    chunk = max(1, REGION_PIXELS // ids.size)
    probs = []
    for start in range(0, count, chunk):
        wanted = torch.arange(start, min(count, start + chunk), device=segmenter.device)
        masks = id_map[None] == wanted[:, None, None]  # (n, H, W) bool
        probs.append(segmenter.mask_probabilities(session, masks, vocabulary, method=method).float().cpu())
    return torch.cat(probs).numpy()


def predict(
    segmenter: Segmenter,
    image: np.ndarray | ImageSession,
    gt: np.ndarray,
    vocabulary: Vocabulary,
    options: EvalOptions,
) -> np.ndarray:
    """(H, W) int32 label map (benchmark ids, -1 unlabelled) of an (H, W, 3) uint8 RGB image
    (or its session); ``gt`` ((H, W) int32, -1 ignore) is used only by the ground-truth
    mask source."""
    if options.masks == "sam2":
        result = segmenter.segment_automatic(
            image,
            vocabulary,
            options.mask_settings,
            options.mode,
            options.score_threshold,
            options.granularity,
            method=options.method,
        )
        return result.label_map.astype(np.int32)
    ids, count = ground_truth_segments(gt, options.gt_segments)
    if count == 0:
        return np.full(gt.shape, -1, dtype=np.int32)
    probs = classify_segments(segmenter, image, ids, count, vocabulary, options.method)
    best = probs.argmax(1).astype(np.int32)  # (count,) class of each segment
    best[probs.max(1) < options.score_threshold] = -1
    return np.where(ids >= 0, best[np.maximum(ids, 0)], -1).astype(np.int32)


# ---------------------------------------------------------------------------- a run


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
    its autocast dtype. (``points_per_batch`` changes no mask, so it is left out.)"""
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


def fingerprint(described: dict) -> str:
    """A short hash of ``describe_run``'s dict: equal fingerprints, reusable predictions."""
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()[:16]


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
    same = previous is not None and previous.get("fingerprint") == fingerprint(described)
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
    write_json({"fingerprint": fingerprint(described), "settings": described}, run_file)
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


def _class_names(vocabulary: Vocabulary) -> list[str]:
    """Class labels, with the benchmark id added to a label that repeats (ADE20K-847 has several)."""
    labels = vocabulary.labels
    counts = Counter(labels)
    return [f"{label} (class {i})" if counts[label] > 1 else label for i, label in enumerate(labels)]


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
            reason = " ".join(str(err).split()) or type(err).__name__
            run.failed.append({"stem": sample.stem, "image": str(sample.image), "reason": reason})
            if progress:
                progress.say(f"failed, left out: {reason}", file=sys.stderr)
        if progress:
            progress.done()
    return run


# ---------------------------------------------------------------------------- report


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


# ---------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="maskadapter evaluate",
        description="mIoU, fwIoU, pACC and mACC of SAM-2 + Mask-Adapter on an open-vocabulary semantic "
        "segmentation benchmark (detectron2-prepared layouts; detectron2's metrics).",
        epilog="Outputs: OUT/metrics.json, OUT/predictions/STEM.png (benchmark ids; 255, or 65535 in 16-bit PNGs, "
        "unlabelled), OUT/run.json, OUT/times.jsonl. A rerun with the same settings resumes. Exit codes: 0 every "
        "image evaluated; 3 some failed (listed in metrics.json); 2 bad arguments, dataset, models or ground truth, "
        "or no image evaluated. The CLIP "
        f"input size defaults to {EVAL_INPUT_SIZE} here (the published evaluation's) unless --input-size, "
        "--short-side or --max-size (or their environment variables) say otherwise.",
    )
    parser.add_argument(
        "--dataset", required=True, choices=tuple(LAYOUTS), help="the benchmark (its predefined vocabulary too)"
    )
    parser.add_argument(
        "--root",
        type=Path,
        help="folder holding the prepared datasets (default: $DETECTRON2_DATASETS, else ./datasets)",
    )
    parser.add_argument("--out", required=True, type=Path, help="output directory (created if needed)")
    parser.add_argument(
        "--masks",
        choices=MASK_SOURCES,
        default="sam2",
        help="sam2: SAM-2's automatic masks and the semantic map (the demo's pipeline); ground-truth: each "
        "ground-truth segment is a mask (mask classification alone) (default: sam2)",
    )
    parser.add_argument(
        "--gt-segments",
        choices=GT_SEGMENTS,
        default="regions",
        help="with --masks ground-truth: regions: each connected region of one class (default); classes: one "
        "mask per class present (as Mask-Adapter's ground-truth evaluation code)",
    )
    parser.add_argument(
        "--method", choices=METHODS, default="adapter", help="adapter: Mask-Adapter (default); pooling: plain mask "
        "pooling, the baseline",
    )  # fmt: skip
    add_painting_arguments(parser)
    parser.add_argument("--limit", type=int, metavar="N", help="evaluate the first N images (file-name order)")
    parser.add_argument("--overwrite", action="store_true", help="redo predictions OUT holds from other settings")
    parser.add_argument(
        "--per-class",
        action="store_true",
        help="also print the IoU and accuracy of every class with ground-truth or predicted pixels "
        "(metrics.json has all classes)",
    )
    parser.add_argument(
        "--real-size-random",
        action="store_true",
        help="the real architectures (--sam-size, --clip-model) with random weights: time per image, "
        "meaningless numbers",
    )
    add_chatter_arguments(parser)
    add_mask_arguments(parser, random_weight_defaults=True)
    add_arguments(parser, program_defaults={"input_size": EVAL_INPUT_SIZE})
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    """Settings from flags and environment; the CLIP input size defaults to the published
    evaluation's (``EVAL_INPUT_SIZE``) unless a flag or environment variable sets it."""
    settings = settings_from_args(args)
    given = any(getattr(args, name) is not None or Settings.env_name(name) in os.environ for name in SIZE_SETTINGS)
    if not given:
        settings = dataclasses.replace(settings, input_size=EVAL_INPUT_SIZE, short_side=None, max_size=None)
    return settings


def _coverage_notes(data: Layout, found: int, without_labels: list[str], without_images: list[str]) -> list[str]:
    """Warnings about a dataset that is not the whole validation split."""
    notes = []
    unpaired = ((without_labels, "image", "a label image"), (without_images, "label image", "an image"))
    for stems, what, partner in unpaired:
        if stems:
            shown = ", ".join(stems[:5]) + (", ..." if len(stems) > 5 else "")
            notes.append(f"{plural(len(stems), what)} without {partner}, left out: {shown}")
    if found != data.val_images:
        notes.append(
            f"{data.title} has {data.val_images} validation images, {found} found here: numbers over them are "
            "not comparable with published ones"
        )
    return notes


def _unused_flags(args: argparse.Namespace, parser: argparse.ArgumentParser) -> list[str]:
    """Notes on flags set (away from the parser's defaults) for the other mask source:
    they change nothing."""
    other = ("gt_segments",) if args.masks == "sam2" else ("mode", "granularity", *SAM2_MASK_FIELDS)
    given = ["--" + name.replace("_", "-") for name in other if getattr(args, name) != parser.get_default(name)]
    if not given:
        return []
    if args.masks == "sam2":
        return [f"{', '.join(given)}: for --masks ground-truth only"]
    return [f"{', '.join(given)}: for --masks sam2 only; each ground-truth segment takes its best class"]


def main(argv: list[str] | None = None) -> int:
    """Run an evaluation on ``argv`` (default ``sys.argv[1:]``); the exit code (module docstring)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    started_at, started = utc_now(), time.perf_counter()
    try:  # everything that can be refused is, before the models load
        if args.limit is not None and args.limit < 1:
            raise InputError(f"--limit must be at least 1, got {args.limit}")
        if not 0 <= args.score_threshold <= 1 or not 0 <= args.granularity <= 1:
            raise InputError("--score-threshold and --granularity must be in [0, 1]")
        settings = _settings(args)
        random_weights = settings.tiny_random or args.real_size_random
        data = layout(args.dataset)
        root = dataset_root(args.root)
        split = scan(data, root)
        samples = split.samples[: args.limit]
        options = EvalOptions(
            masks=args.masks,
            gt_segments=args.gt_segments,
            mode=args.mode,
            granularity=args.granularity,
            score_threshold=args.score_threshold,
            method=args.method,
            mask_settings=mask_settings_from_args(args, default_mask_settings(not random_weights)),
        )
        device = resolve_device(settings.device)
        described = describe_run(data, options, settings, args.real_size_random, root, device)
        args.out.mkdir(parents=True, exist_ok=True)
        seconds = prepare_out(args.out, described, args.overwrite)
        note = None if args.quiet else (lambda message: print(message, file=sys.stderr, flush=True))
        segmenter = Segmenter.from_settings(settings, progress=note, real_size_random=args.real_size_random)
        vocabulary = segmenter.vocabulary("", [data.key])
    except (MaskAdapterError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_ERROR
    notes = _coverage_notes(data, len(split.samples), split.images_without_labels, split.labels_without_images)
    for text in notes:
        print(f"note: {text}", file=sys.stderr)
    if not segmenter.real_weights:
        print(f"WARNING: {RANDOM_NOTE}", file=sys.stderr, flush=True)
    for text in _unused_flags(args, parser):
        print(f"note: {text}", file=sys.stderr)

    progress = ProgressBar(len(samples), not args.quiet and sys.stderr.isatty())
    try:
        # the class names once, before the clock runs per image (cached on disk for reruns)
        text_started = time.perf_counter()
        segmenter.text_embeddings(vocabulary, lambda fraction, message: progress.stage(fraction, message))
        text_seconds = time.perf_counter() - text_started
        run = evaluate(segmenter, data, vocabulary, samples, args.out, options, seconds, progress)
    except (MaskAdapterError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_ERROR
    finally:
        progress.close()

    weights = {"real": segmenter.real_weights, "description": segmenter.models.description}
    if not segmenter.real_weights:
        weights["note"] = RANDOM_NOTE
    shown_device = str(segmenter.device)
    if segmenter.device.type == "cuda":
        shown_device += f" ({torch.cuda.get_device_name(segmenter.device)})"
    extra = {
        "limit": args.limit,
        "validation_images": data.val_images,
        "images_found": len(split.samples),
        "images_without_labels": len(split.images_without_labels),
        "labels_without_images": len(split.labels_without_images),
        "notes": notes,
        "predicted": run.predicted,
        "read_back": run.read_back,
        "text_seconds": round(text_seconds, 3),
        "device": shown_device,
        "platform": platform.platform(),
        "torch": torch.__version__,
        "started": started_at,
        "finished": utc_now(),
        "seconds": round(time.perf_counter() - started, 3),
    }
    names = _class_names(vocabulary)
    metrics = report(run.matrix, names, data, samples, run.seconds, run.failed, described, weights, extra)
    try:
        write_json(metrics, args.out / METRICS_NAME)
    except OSError as err:
        print(f"error: cannot write {args.out / METRICS_NAME}: {err}", file=sys.stderr)
        return EXIT_ERROR
    print(table(metrics, args.per_class))
    if not args.quiet:
        print(
            f"{plural(run.predicted, 'image')} predicted, {run.read_back} read back from an earlier run "
            f"-> {args.out / METRICS_NAME}",
            file=sys.stderr,
        )
    if len(run.failed) == len(samples):
        print(f"error: no image could be evaluated (each failure is listed in {METRICS_NAME})", file=sys.stderr)
        return EXIT_ERROR
    if run.failed:
        print(f"{plural(len(run.failed), 'image')} failed and left out (listed in {METRICS_NAME})", file=sys.stderr)
    return EXIT_PARTIAL if run.failed else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
