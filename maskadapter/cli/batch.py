"""Batch labelling: label a whole tree of images, resumably, with one summary.

    python -m maskadapter.cli.batch INPUT... --out DIR [--coco results.json]
    maskadapter batch INPUT... --out DIR

Inputs are image files, directories (searched recursively for image extensions), glob
patterns and ``@list.txt`` (a text file naming one input per line; blank lines and lines
starting with ``#`` are skipped; relative entries are relative to the list's folder).
The folder structure under each input root is kept: ``in/a/b.jpg`` given as ``in``
writes ``DIR/a/b_labels.png``; a file named directly (or by a list) is written at
``DIR/NAME_*``; a glob's root is its longest folder without wildcards
(``maskadapter.cli.batch_jobs.plan_jobs``).

Per image: ``NAME_labels.png`` (0 unlabelled, k = class k-1), ``NAME_segments.json``
(``maskadapter.output.export``'s format plus ``"batch": {"fingerprint", "source"}``) and with
``--overlay`` ``NAME_overlay.png``; each written under a temporary name in its folder,
then renamed (``os.replace``), the JSON last. ``DIR/summary.json`` records the run.

Resume: an image is skipped when its JSON holds the fingerprint of this run's settings
(vocabulary, mode, thresholds, mask settings, models) and its other outputs exist.

Engines (``ENGINES``, by ``--engine`` name): ``local`` (``maskadapter.cli.batch_local``)
runs in this process with the models loaded once and images decoded ahead in a
background thread; ``ray`` (``maskadapter.cli.batch_ray``) runs Ray Data actors, each
with its own models, on this machine or a Ray cluster. The modules import one way:
``batch_jobs`` <- ``batch_local`` <- ``batch_ray`` <- this command, which imports an
engine only when a run uses it (so ``--help`` and refused arguments load no model code).

Exit codes: 0 every image labelled (or already done), 3 some failed (see the summary),
2 bad arguments, inputs or models (nothing run).
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from maskadapter.cli.batch_jobs import (
    BatchOptions,
    Engine,
    ImageJob,
    ImageOutcome,
    RayOptions,
    Report,
    fingerprint,
    finished_segments,
    plan_jobs,
)
from maskadapter.cli.common import (
    EXIT_OK,
    EXIT_PARTIAL,
    ProgressBar,
    add_chatter_arguments,
    add_labelling_arguments,
    check_painting_arguments,
    fail,
    model_description,
    plural,
    random_weights_warning,
    utc_now,
    write_json,
)
from maskadapter.engine.mask_settings import add_mask_arguments, default_mask_settings, mask_settings_from_args
from maskadapter.engine.vocabulary import Vocabulary, build_vocabulary
from maskadapter.errors import InputError, MaskAdapterError
from maskadapter.logs import setup_logging
from maskadapter.settings import add_arguments, settings_from_args

SUMMARY_NAME = "summary.json"
# the engines by --engine name, as "module:function", each with ``batch_local.run_local``'s
# signature (``batch_jobs.Engine``); imported when a run uses one (``engine``)
ENGINES: dict[str, str] = {"local": "maskadapter.cli.batch_local:run_local", "ray": "maskadapter.cli.batch_ray:run_ray"}


def engine(name: str) -> Engine:
    """The engine function of ``--engine name`` (one of ``ENGINES``)."""
    module, function = ENGINES[name].split(":")
    return getattr(importlib.import_module(module), function)


# ---------------------------------------------------------------------------- COCO


def coco_results(outcomes: Sequence[ImageOutcome], labels: Sequence[str]) -> dict:
    """A COCO results dict of the images done or skipped, read back from their segments
    JSON: ``images`` (file names relative to the input root), ``categories`` (id = class
    index + 1) and ``annotations`` (RLE counts as str, bbox XYWH, area, score)."""
    images, annotations = [], []
    for image_id, outcome in enumerate((o for o in outcomes if o.status != "failed"), start=1):
        data = json.loads(outcome.job.output("_segments.json").read_text(encoding="utf-8"))
        info = data["image"]
        images.append(
            {"id": image_id, "file_name": outcome.job.relative, "width": info["width"], "height": info["height"]}
        )
        for seg in data["segments"]:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": seg["class_id"] + 1,
                    "segmentation": seg["segmentation"],
                    "bbox": seg["bbox"],
                    "area": seg["area"],
                    "score": seg["score"],
                    "iscrowd": 0,
                }
            )
    categories = [{"id": i + 1, "name": label} for i, label in enumerate(labels)]
    return {"images": images, "annotations": annotations, "categories": categories}


# ---------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    """The batch CLI's parser (labelling, mask and model flags shared with the single-image CLI)."""
    parser = argparse.ArgumentParser(
        prog="maskadapter batch",
        description="Batch labelling: label every image of folders, globs and lists; resumable.",
        epilog="Outputs per image (folder structure kept): NAME_labels.png, NAME_segments.json, "
        "NAME_overlay.png with --overlay; DIR/summary.json for the run. A rerun skips images done "
        "with the same settings. Exit codes: 0 every image labelled; 3 some failed (listed in the "
        "summary); 2 bad arguments, inputs or models.",
    )
    parser.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="image files, directories (searched recursively), quoted glob patterns or @LIST.txt "
        "(one input per line, relative to the list's folder)",
    )
    add_labelling_arguments(parser)
    parser.add_argument("--out", required=True, type=Path, help="output directory (created if needed)")
    parser.add_argument("--overlay", action="store_true", help="also write NAME_overlay.png")
    parser.add_argument("--alpha", type=float, default=0.5, help="overlay opacity (default 0.5)")
    parser.add_argument("--coco", type=Path, metavar="FILE", help="also write the run's results as one COCO JSON")
    parser.add_argument(
        "--engine",
        choices=tuple(ENGINES),
        default="local",
        help="local: this process (default); ray: Ray Data actors on this machine or a Ray cluster",
    )
    parser.add_argument(
        "--prefetch", type=int, default=2, help="images decoded ahead in a background thread (default 2)"
    )
    ray = parser.add_argument_group("ray engine (--engine ray; needs Ray Data: pip install 'ray[data]')")
    ray.add_argument(
        "--ray-address",
        metavar="ADDRESS",
        help="Ray cluster to use: auto, ray://HOST:10001, ... (default: $RAY_ADDRESS, else a local instance)",
    )
    ray.add_argument("--ray-cpus", type=int, metavar="N", help="CPUs of the local instance Ray starts (default: all)")
    ray.add_argument("--ray-actors", type=int, default=1, metavar="N", help="actors, each with its models (default 1)")
    ray.add_argument(
        "--ray-gpus-per-actor", type=float, default=0.0, metavar="G", help="GPUs reserved per actor (default 0)"
    )
    ray.add_argument(
        "--ray-batch-size", type=int, default=4, metavar="N", help="images per call of an actor (default 4)"
    )
    add_chatter_arguments(parser)
    add_mask_arguments(parser, random_weight_defaults=True)
    add_arguments(parser)
    return parser


def _options(args: argparse.Namespace) -> tuple[BatchOptions, Vocabulary]:
    """Validate the arguments (before any model is loaded) into ``BatchOptions``."""
    settings = settings_from_args(args)
    # random weights open SAM-2's filters (as Segmenter.default_mask_settings does) ...
    mask_settings = mask_settings_from_args(args, default_mask_settings(not settings.tiny_random))
    vocabulary = build_vocabulary(args.vocab, args.predefined)
    check_painting_arguments(args)
    if args.prefetch < 1:
        raise InputError(f"--prefetch must be at least 1, got {args.prefetch}")
    for flag, value in (("--ray-actors", args.ray_actors), ("--ray-batch-size", args.ray_batch_size)):
        if value < 1:
            raise InputError(f"{flag} must be at least 1, got {value}")
    if args.ray_cpus is not None and args.ray_cpus < 1:
        raise InputError(f"--ray-cpus must be at least 1, got {args.ray_cpus}")
    if args.ray_gpus_per_actor < 0:
        raise InputError(f"--ray-gpus-per-actor must be 0 or more, got {args.ray_gpus_per_actor}")
    ray_options = RayOptions(
        address=args.ray_address,
        num_cpus=args.ray_cpus,
        actors=args.ray_actors,
        gpus_per_actor=args.ray_gpus_per_actor,
        batch_size=args.ray_batch_size,
    )
    thresholds = (args.score_threshold, args.granularity)
    run_fingerprint = fingerprint(vocabulary, args.mode, *thresholds, mask_settings, settings)
    options = BatchOptions(
        settings=settings,
        vocab_text=args.vocab,
        predefined=tuple(args.predefined),
        mode=args.mode,
        score_threshold=args.score_threshold,
        granularity=args.granularity,
        mask_settings=mask_settings,
        overlay=args.overlay,
        alpha=args.alpha,
        fingerprint=run_fingerprint,
        show_progress=not args.quiet and sys.stderr.isatty(),
        quiet=args.quiet,
        prefetch=args.prefetch,
        ray=ray_options,
    )
    return options, vocabulary




def _already_done(jobs: Sequence[ImageJob], options: BatchOptions) -> list[ImageOutcome]:
    """The ``"skipped"`` outcomes of the jobs whose outputs were made with these settings."""
    skipped = []
    for job in jobs:
        count = finished_segments(job, options)
        if count is not None:
            skipped.append(ImageOutcome(job, "skipped", segments=count))
    return skipped


def _reporter(progress: ProgressBar, options: BatchOptions) -> Report:
    """What the engines call with each outcome: the bar moves on, a failure is printed
    on stderr and, without a bar (and without ``--quiet``), each image's line on stdout."""

    def report(outcome: ImageOutcome) -> None:
        progress.start(outcome.job.source)
        if outcome.status == "failed":
            progress.say(f"error: {outcome.reason}", file=sys.stderr)
        elif not options.quiet and not options.show_progress:
            progress.say(f"{outcome.job.source}: {plural(outcome.segments, 'segment')} -> {outcome.job.out_stem}_*")
        progress.done()

    return report


def summary(
    jobs: Sequence[ImageJob], outcomes: Sequence[ImageOutcome], processed: int, engine: str,
    vocabulary: Vocabulary, options: BatchOptions, started_at: str, seconds: float,
) -> dict:  # fmt: skip
    """The contents of ``summary.json``: ``outcomes`` (in the order of ``jobs``) of the
    images skipped, labelled and failed; ``processed`` how many the engine ran (labelled
    or failed) in ``seconds``."""
    counts = {status: sum(o.status == status for o in outcomes) for status in ("done", "skipped", "failed")}
    return {
        "started": started_at,
        "finished": utc_now(),
        "seconds": round(seconds, 3),
        "images_per_second": round(processed / seconds, 4) if seconds > 0 else None,
        "engine": engine,
        "counts": {
            "images": len(jobs), "labelled": counts["done"], "skipped": counts["skipped"], "failed": counts["failed"]
        },  # fmt: skip
        "settings": {
            "vocabulary": [list(synonyms) for synonyms in vocabulary.classes],
            "labels": vocabulary.labels,
            "mode": options.mode,
            "score_threshold": options.score_threshold,
            "granularity": options.granularity,
            "mask_settings": asdict(options.mask_settings),
            "models": model_description(options.settings),
            "fingerprint": options.fingerprint,
        },
        "done": [
            {
                "file": o.job.relative,
                "source": str(o.job.source),
                "segments": o.segments,
                "skipped": o.status == "skipped",
            }
            for o in outcomes
            if o.status != "failed"
        ],
        "failed": [
            {"file": o.job.relative, "source": str(o.job.source), "reason": o.reason}
            for o in outcomes
            if o.status == "failed"
        ],
    }


def main(argv: list[str] | None = None) -> int:
    """Run a batch on ``argv`` (default ``sys.argv[1:]``); the exit code (module docstring)."""
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    started_at, started = utc_now(), time.perf_counter()
    try:
        if args.engine == "ray":
            from maskadapter.cli.batch_ray import require_ray

            require_ray()
        options, vocabulary = _options(args)
        jobs = plan_jobs(args.inputs, args.out)
        args.out.mkdir(parents=True, exist_ok=True)
    except (MaskAdapterError, OSError) as err:
        return fail(err)

    skipped = _already_done(jobs, options)
    done_before = {o.job for o in skipped}
    todo = [job for job in jobs if job not in done_before]
    if skipped and not args.quiet:
        print(f"{plural(len(skipped), 'image')} already labelled with these settings: skipped", file=sys.stderr)
    if options.settings.tiny_random:
        print(random_weights_warning(args), file=sys.stderr, flush=True)

    progress = ProgressBar(len(todo), options.show_progress)
    try:
        processed = engine(args.engine)(todo, options, _reporter(progress, options)) if todo else []
    except (MaskAdapterError, OSError) as err:
        return fail(err)
    finally:
        progress.close()

    by_job = {o.job: o for o in [*skipped, *processed]}
    outcomes = [by_job[job] for job in jobs if job in by_job]
    seconds = time.perf_counter() - started
    record = summary(jobs, outcomes, len(processed), args.engine, vocabulary, options, started_at, seconds)
    try:
        write_json(record, args.out / SUMMARY_NAME)
        if args.coco is not None:
            write_json(coco_results(outcomes, vocabulary.labels), args.coco)
    except (OSError, ValueError, KeyError) as err:
        return fail(f"cannot write the summary or COCO file: {err}")
    if not args.quiet:
        counts = record["counts"]
        print(
            f"{plural(counts['labelled'], 'image')} labelled, {counts['skipped']} skipped, {counts['failed']} failed "
            f"-> {args.out / SUMMARY_NAME}",
            file=sys.stderr,
        )
    return EXIT_PARTIAL if record["counts"]["failed"] else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
