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

The modules, each importing only those before it: ``evaluate_options`` (the mask
sources and labelling options, without torch), ``evaluate_predict`` (one image's
prediction), ``evaluate_run`` (the run over the dataset, resumable), ``evaluate_report``
(metrics.json and the printed table), and this command on top of them.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING

from maskadapter.cli.common import (
    EXIT_ERROR,
    EXIT_OK,
    EXIT_PARTIAL,
    ProgressBar,
    add_chatter_arguments,
    add_painting_arguments,
    check_painting_arguments,
    fail,
    loading_messages,
    plural,
    print_notes,
    utc_now,
    write_json,
)
from maskadapter.cli.datasets import LAYOUTS, Layout, Sample, Split, dataset_root, layout, scan
from maskadapter.cli.evaluate_options import GT_SEGMENTS, MASK_SOURCES, EvalOptions
from maskadapter.engine.mask_settings import (
    AutoMaskSettings,
    add_mask_arguments,
    default_mask_settings,
    mask_settings_from_args,
)
from maskadapter.engine.painting_options import METHODS
from maskadapter.errors import InputError, MaskAdapterError
from maskadapter.logs import setup_logging
from maskadapter.settings import Settings, add_arguments, settings_from_args

if TYPE_CHECKING:
    from maskadapter.cli.evaluate_run import EvalRun
    from maskadapter.engine.segmenter import Segmenter
    from maskadapter.engine.vocabulary import Vocabulary

# The engine, the run and the report (torch) are imported once the arguments are read,
# so that --help and argument errors answer at once.

EVAL_INPUT_SIZE = "eval896"  # the published evaluation's CLIP input size (long side 896)
SIZE_SETTINGS = ("input_size", "short_side", "max_size")  # the CLIP input size
SAM2_MASK_FIELDS = tuple(f.name for f in fields(AutoMaskSettings))  # their flags: --points-per-side ...


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


@dataclass(frozen=True)
class _Plan:
    """An evaluation checked and ready before the models load: the settings, the dataset
    (``split``: all of it found; ``samples``: those to evaluate), the labelling options,
    what the predictions depend on (``described``) and the seconds of the images earlier
    runs predicted (by stem)."""

    settings: Settings
    data: Layout
    split: Split
    samples: list[Sample]
    options: EvalOptions
    described: dict
    seconds: dict[str, float]


def _plan(args: argparse.Namespace) -> _Plan:
    """Refuse what can be refused before the models load, and make OUT ready (``prepare_out``).

    Raises:
        MaskAdapterError: bad arguments, a missing or broken dataset, OUT holding other predictions.
        OSError: OUT cannot be made or written.
    """
    if args.limit is not None and args.limit < 1:
        raise InputError(f"--limit must be at least 1, got {args.limit}")
    check_painting_arguments(args)
    settings = _settings(args)
    random_weights = settings.tiny_random or args.real_size_random
    data = layout(args.dataset)
    root = dataset_root(args.root)
    split = scan(data, root)
    options = EvalOptions(
        masks=args.masks,
        gt_segments=args.gt_segments,
        mode=args.mode,
        granularity=args.granularity,
        score_threshold=args.score_threshold,
        method=args.method,
        mask_settings=mask_settings_from_args(args, default_mask_settings(not random_weights)),
    )
    from maskadapter.cli.evaluate_run import describe_run, prepare_out  # torch, once the dataset is found
    from maskadapter.engine.runtime import resolve_device

    device = resolve_device(settings.device)
    described = describe_run(data, options, settings, args.real_size_random, root, device)
    args.out.mkdir(parents=True, exist_ok=True)
    seconds = prepare_out(args.out, described, args.overwrite)
    return _Plan(settings, data, split, split.samples[: args.limit], options, described, seconds)


def _exit_code(run: EvalRun, samples: int) -> int:
    """Print how the run ended; the exit code (module docstring)."""
    from maskadapter.cli.evaluate_run import METRICS_NAME

    if len(run.failed) == samples:
        print(f"error: no image could be evaluated (each failure is listed in {METRICS_NAME})", file=sys.stderr)
        return EXIT_ERROR
    if run.failed:
        print(f"{plural(len(run.failed), 'image')} failed and left out (listed in {METRICS_NAME})", file=sys.stderr)
    return EXIT_PARTIAL if run.failed else EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """Run an evaluation on ``argv`` (default ``sys.argv[1:]``); the exit code (module docstring)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    started_at, started = utc_now(), time.perf_counter()
    try:  # everything that can be refused is, before the models load
        plan = _plan(args)
        from maskadapter.cli.evaluate_report import RANDOM_NOTE, platform_record
        from maskadapter.cli.evaluate_run import evaluate
        from maskadapter.engine.segmenter import Segmenter

        segmenter = Segmenter.from_settings(
            plan.settings, progress=loading_messages(args.quiet), real_size_random=args.real_size_random
        )
        vocabulary = segmenter.vocabulary("", [plan.data.key])
    except (MaskAdapterError, OSError) as err:
        return fail(err)
    split = plan.split
    notes = _coverage_notes(plan.data, len(split.samples), split.images_without_labels, split.labels_without_images)
    print_notes(notes)
    if not segmenter.real_weights:
        print(f"WARNING: {RANDOM_NOTE}", file=sys.stderr, flush=True)
    print_notes(_unused_flags(args, parser))

    progress = ProgressBar(len(plan.samples), not args.quiet and sys.stderr.isatty())
    try:
        # the class names once, before the clock runs per image (cached on disk for reruns)
        text_started = time.perf_counter()
        segmenter.text_embeddings(vocabulary, progress.stage)
        text_seconds = time.perf_counter() - text_started
        run = evaluate(segmenter, plan.data, vocabulary, plan.samples, args.out, plan.options, plan.seconds, progress)
    except (MaskAdapterError, OSError) as err:
        return fail(err)
    finally:
        progress.close()

    extra = {
        "limit": args.limit,
        "validation_images": plan.data.val_images,
        "images_found": len(split.samples),
        "images_without_labels": len(split.images_without_labels),
        "labels_without_images": len(split.labels_without_images),
        "notes": notes,
        "predicted": run.predicted,
        "read_back": run.read_back,
        "text_seconds": round(text_seconds, 3),
        **platform_record(segmenter),
        "started": started_at,
        "finished": utc_now(),
        "seconds": round(time.perf_counter() - started, 3),
    }
    return _finish(args, plan, run, segmenter, vocabulary, extra)


def _finish(
    args: argparse.Namespace, plan: _Plan, run: EvalRun, segmenter: Segmenter, vocabulary: Vocabulary, extra: dict
) -> int:
    """Write metrics.json (``extra``: the run record), print the table; the exit code."""
    from maskadapter.cli.evaluate_report import class_names, report, table, weights_record
    from maskadapter.cli.evaluate_run import METRICS_NAME

    found = (run.matrix, class_names(vocabulary), plan.data, plan.samples, run.seconds, run.failed)
    metrics = report(*found, plan.described, weights_record(segmenter), extra)
    try:
        write_json(metrics, args.out / METRICS_NAME)
    except OSError as err:
        return fail(f"cannot write {args.out / METRICS_NAME}: {err}")
    print(table(metrics, args.per_class))
    if not args.quiet:
        print(
            f"{plural(run.predicted, 'image')} predicted, {run.read_back} read back from an earlier run "
            f"-> {args.out / METRICS_NAME}",
            file=sys.stderr,
        )
    return _exit_code(run, len(plan.samples))


if __name__ == "__main__":
    sys.exit(main())
