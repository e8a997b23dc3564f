"""Batch labelling: label a whole tree of images, resumably, with one summary.

    python -m maskadapter.cli.batch INPUT... --out DIR [--coco results.json]
    maskadapter batch INPUT... --out DIR

Inputs are image files, directories (searched recursively for image extensions), glob
patterns and ``@list.txt`` (a text file naming one input per line; blank lines and lines
starting with ``#`` are skipped; relative entries are relative to the list's folder).
The folder structure under each input root is kept: ``in/a/b.jpg`` given as ``in``
writes ``DIR/a/b_labels.png``; a file named directly (or by a list) is written at
``DIR/NAME_*``; a glob's root is its longest folder without wildcards.

Per image: ``NAME_labels.png`` (0 unlabelled, k = class k-1), ``NAME_segments.json``
(``maskadapter.output.export``'s format plus ``"batch": {"fingerprint", "source"}``) and with
``--overlay`` ``NAME_overlay.png``; each written under a temporary name in its folder,
then renamed (``os.replace``), the JSON last. ``DIR/summary.json`` records the run.

Resume: an image is skipped when its JSON holds the fingerprint of this run's settings
(vocabulary, mode, thresholds, mask settings, models) and its other outputs exist.

Engines: an engine is a function ``(jobs, options, report) -> list[ImageOutcome]``
(``ENGINES``); ``local`` runs in this process with the models loaded once and images
decoded ahead in a background thread; ``ray`` (``maskadapter.cli.batch_ray``) runs Ray Data
actors, each with its own models, on this machine or a Ray cluster.

Exit codes: 0 every image labelled (or already done), 3 some failed (see the summary),
2 bad arguments, inputs or models (nothing run).
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from maskadapter.cli.common import (
    EXIT_ERROR,
    EXIT_OK,
    EXIT_PARTIAL,
    IMAGE_EXTENSIONS,
    ProgressBar,
    add_chatter_arguments,
    add_labelling_arguments,
    atomic_write,
    is_image_name,
    model_description,
    plural,
    random_weights_warning,
    read_image_file,
    save_png,
    utc_now,
    write_json,
)
from maskadapter.engine.mask_settings import (
    AutoMaskSettings,
    add_mask_arguments,
    default_mask_settings,
    mask_settings_from_args,
)
from maskadapter.engine.segmenter import SegmentationResult, Segmenter
from maskadapter.engine.vocabulary import Vocabulary, build_vocabulary
from maskadapter.errors import InputError, MaskAdapterError
from maskadapter.logs import setup_logging
from maskadapter.output.export import label_map_image, segments_to_dict, write_segments_json
from maskadapter.output.render import overlay
from maskadapter.settings import Settings, add_arguments, settings_from_args

SUMMARY_NAME = "summary.json"
FINGERPRINT_VERSION = 1  # bump when the outputs' format changes, so that old outputs are redone


@dataclass(frozen=True)
class ImageJob:
    """One image to label: ``source`` read, outputs at ``out_stem`` + ``_labels.png`` ...;
    ``relative``: the source's path under its input root (POSIX), the COCO file name."""

    source: Path
    relative: str
    out_stem: Path

    def output(self, suffix: str) -> Path:
        """The output path ``<out_stem><suffix>``, e.g. ``suffix="_labels.png"``."""
        return self.out_stem.with_name(self.out_stem.name + suffix)


@dataclass(frozen=True)
class RayOptions:
    """The ray engine's options: ``address`` of a cluster (None: ``RAY_ADDRESS``, else a
    local instance with ``num_cpus`` CPUs, all of the machine's when None), ``actors``
    (each holds one copy of the models), ``gpus_per_actor`` and ``batch_size`` (images
    per call of an actor)."""

    address: str | None = None
    num_cpus: int | None = None
    actors: int = 1
    gpus_per_actor: float = 0.0
    batch_size: int = 4


@dataclass(frozen=True)
class BatchOptions:
    """What every engine needs to label jobs: model settings, vocabulary and labelling options."""

    settings: Settings
    vocab_text: str
    predefined: tuple[str, ...]
    mode: str
    score_threshold: float
    granularity: float
    mask_settings: AutoMaskSettings
    overlay: bool
    alpha: float
    fingerprint: str
    show_progress: bool = False
    quiet: bool = False
    prefetch: int = 2
    ray: RayOptions = field(default_factory=RayOptions)


@dataclass
class ImageOutcome:
    """What became of one job: ``status`` is ``"done"``, ``"skipped"`` (already done with
    the same settings) or ``"failed"`` (``reason``: one line)."""

    job: ImageJob
    status: str
    segments: int = 0
    reason: str | None = None
    seconds: float = 0.0


Report = Callable[[ImageOutcome], None]
Engine = Callable[[Sequence[ImageJob], BatchOptions, Report], list[ImageOutcome]]


# ---------------------------------------------------------------------------- inputs


def _glob_root(pattern: str) -> Path:
    """The longest leading folder of ``pattern`` without wildcards."""
    parts = Path(pattern).parts
    root: list[str] = []
    for part in parts[:-1]:
        if glob.has_magic(part):
            break
        root.append(part)
    return Path(*root) if root else Path(".")


def _expand_item(item: str, base: Path, seen_lists: frozenset[Path]) -> Iterator[tuple[Path, str]]:
    """(source, relative path) pairs named by one input ``item`` (relative to ``base``)."""
    if item.startswith("@"):
        list_path = (base / Path(item[1:]).expanduser()).resolve()
        if list_path in seen_lists:
            raise InputError(f"list {item[1:]} includes itself")
        try:
            lines = list_path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as err:
            raise InputError(f"cannot read input list {item[1:]}: {err}") from None
        entries = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
        if not entries:
            raise InputError(f"input list {item[1:]} names no images")
        for entry in entries:
            yield from _expand_item(entry, list_path.parent, seen_lists | {list_path})
        return
    path = base / Path(item).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and is_image_name(p))
        if not files:
            raise InputError(f"no images in directory {item} or below (looked for {', '.join(IMAGE_EXTENSIONS)})")
        for file in files:
            yield file, file.relative_to(path).as_posix()
    elif glob.has_magic(item) and not path.exists():
        root = base / _glob_root(str(Path(item).expanduser()))
        matches = sorted(Path(m) for m in glob.glob(str(path), recursive=True))
        files = [p for p in matches if p.is_file() and is_image_name(p)]
        if not files:
            raise InputError(f"no image file matches {item!r} (looked for {', '.join(IMAGE_EXTENSIONS)})")
        for file in files:
            yield file, os.path.relpath(file, root).replace(os.sep, "/")
    else:
        yield path, path.name


def plan_jobs(inputs: Sequence[str], out: Path) -> list[ImageJob]:
    """The jobs named by ``inputs``, in order, each source once.

    Raises:
        InputError: an input that names no image, an unreadable list, or two sources
            that would write the same outputs.
    """
    jobs: dict[Path, ImageJob] = {}
    owners: dict[str, Path] = {}
    for item in inputs:
        for source, relative in _expand_item(item, Path("."), frozenset()):
            key = source.resolve()
            if key in jobs:
                continue
            stem = relative.rsplit(".", 1)[0] if "." in Path(relative).name else relative
            other = owners.setdefault(stem, source)
            if other != source:
                raise InputError(
                    f"{other} and {source} would write the same outputs ({stem}_*): rename one, or run them separately"
                )
            jobs[key] = ImageJob(source, relative, out / stem)
    return list(jobs.values())


# ---------------------------------------------------------------------------- settings


def fingerprint(
    vocabulary: Vocabulary, mode: str, score_threshold: float, granularity: float,
    mask_settings: AutoMaskSettings, settings: Settings,
) -> str:  # fmt: skip
    """A short hash of everything that changes an image's labels; equal fingerprints
    mean outputs that can be reused."""
    described = {
        "version": FINGERPRINT_VERSION,
        "vocabulary": [list(synonyms) for synonyms in vocabulary.classes],
        "mode": mode,
        "score_threshold": score_threshold,
        "granularity": granularity,
        "mask_settings": asdict(mask_settings),
        "models": model_description(settings),
    }
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()[:16]


def finished_segments(job: ImageJob, options: BatchOptions) -> int | None:
    """The segment count of ``job`` when its outputs exist and were made with
    ``options.fingerprint``, else None (the image is to be labelled)."""
    try:
        data = json.loads(job.output("_segments.json").read_text(encoding="utf-8"))
        if data["batch"]["fingerprint"] != options.fingerprint:
            return None
        count = len(data["segments"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    needed = ["_labels.png"] + (["_overlay.png"] if options.overlay else [])
    return count if all(job.output(suffix).is_file() for suffix in needed) else None


# ---------------------------------------------------------------------------- writing


def write_outputs(job: ImageJob, image: np.ndarray, result: SegmentationResult, options: BatchOptions) -> None:
    """Write one image's outputs atomically, the segments JSON (the resume marker) last."""
    job.out_stem.parent.mkdir(parents=True, exist_ok=True)
    save_png(label_map_image(result), job.output("_labels.png"))
    if options.overlay:
        save_png(overlay(image, result, alpha=options.alpha), job.output("_overlay.png"))
    data = segments_to_dict(result, file_name=job.relative)
    data["batch"] = {"fingerprint": options.fingerprint, "source": str(job.source)}
    atomic_write(job.output("_segments.json"), lambda tmp: write_segments_json(data, tmp))


# ---------------------------------------------------------------------------- engines


def _prefetched(jobs: Sequence[ImageJob], ahead: int) -> Iterator[tuple[ImageJob, Future]]:
    """Each job with the future of its decoded pixels; up to ``ahead`` images are decoded
    in a background thread while the caller works on the current one."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="maskadapter-decode") as pool:
        pending: deque[tuple[ImageJob, Future]] = deque()
        queue = iter(jobs)
        for job in queue:
            pending.append((job, pool.submit(read_image_file, job.source)))
            if len(pending) > ahead:
                yield pending.popleft()
        while pending:
            yield pending.popleft()


def run_local(
    jobs: Sequence[ImageJob], options: BatchOptions, report: Report, segmenter: Segmenter | None = None
) -> list[ImageOutcome]:
    """The local engine: one process, the models loaded once (or ``segmenter`` given),
    images decoded ahead.

    Raises:
        MaskAdapterError: the models cannot be loaded (nothing is labelled).
    """
    note = None if options.quiet else (lambda message: print(message, file=sys.stderr, flush=True))
    if segmenter is None:
        segmenter = Segmenter.from_settings(options.settings, progress=note)
    vocabulary = segmenter.vocabulary(options.vocab_text, options.predefined)
    for text in vocabulary.notes:
        print(f"note: {text}", file=sys.stderr)
    outcomes = []
    for job, pixels in _prefetched(jobs, max(1, options.prefetch)):
        outcome = label_job(segmenter, vocabulary, job, pixels.result, options)
        outcomes.append(outcome)
        report(outcome)
    return outcomes


def label_job(
    segmenter: Segmenter, vocabulary: Vocabulary, job: ImageJob, pixels: Callable[[], np.ndarray],
    options: BatchOptions,
) -> ImageOutcome:  # fmt: skip
    """Label one job with every engine's steps: get its pixels (``pixels()``, which may
    raise ``InputError``), segment, write the outputs (``write_outputs``); a failure of
    this image becomes a ``"failed"`` outcome with a one-line reason, never an exception."""
    started = time.perf_counter()
    try:
        image = pixels()
        result = segmenter.segment_automatic(
            image, vocabulary, options.mask_settings, options.mode, options.score_threshold, options.granularity
        )
        write_outputs(job, image, result, options)
        outcome = ImageOutcome(job, "done", segments=len(result.segments))
    except (MaskAdapterError, OSError) as err:
        reason = " ".join(str(err).split()) or type(err).__name__
        outcome = ImageOutcome(job, "failed", reason=reason)
    outcome.seconds = time.perf_counter() - started
    return outcome


def run_ray(jobs: Sequence[ImageJob], options: BatchOptions, report: Report) -> list[ImageOutcome]:
    """The Ray Data engine (``maskadapter.cli.batch_ray.run_ray``; Ray is imported only here).

    Raises:
        MaskAdapterError: Ray Data is not installed, Ray cannot start or connect, or the
            models cannot be loaded on the workers.
    """
    from maskadapter.cli.batch_ray import run_ray as run

    return run(jobs, options, report)


# the engines, all with ``run_local``'s signature
ENGINES: dict[str, Engine] = {"local": run_local, "ray": run_ray}
ENGINE_CHOICES = ("local", "ray")


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
        choices=ENGINE_CHOICES,
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
    if not 0 <= args.score_threshold <= 1 or not 0 <= args.granularity <= 1:
        raise InputError("--score-threshold and --granularity must be in [0, 1]")
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
        print(f"error: {err}", file=sys.stderr)
        return EXIT_ERROR

    skipped = []
    for job in jobs:
        count = finished_segments(job, options)
        if count is not None:
            skipped.append(ImageOutcome(job, "skipped", segments=count))
    done_before = {o.job for o in skipped}
    todo = [job for job in jobs if job not in done_before]
    if skipped and not args.quiet:
        print(f"{plural(len(skipped), 'image')} already labelled with these settings: skipped", file=sys.stderr)
    if options.settings.tiny_random:
        print(random_weights_warning(args), file=sys.stderr, flush=True)

    progress = ProgressBar(len(todo), options.show_progress)

    def report(outcome: ImageOutcome) -> None:
        progress.start(outcome.job.source)
        if outcome.status == "failed":
            progress.say(f"error: {outcome.reason}", file=sys.stderr)
        elif not args.quiet and not options.show_progress:
            progress.say(f"{outcome.job.source}: {plural(outcome.segments, 'segment')} -> {outcome.job.out_stem}_*")
        progress.done()

    try:
        processed = ENGINES[args.engine](todo, options, report) if todo else []
    except (MaskAdapterError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_ERROR
    finally:
        progress.close()

    by_job = {o.job: o for o in [*skipped, *processed]}
    outcomes = [by_job[job] for job in jobs if job in by_job]
    seconds = time.perf_counter() - started
    failed = [o for o in outcomes if o.status == "failed"]
    labelled = [o for o in processed if o.status == "done"]
    summary = {
        "started": started_at,
        "finished": utc_now(),
        "seconds": round(seconds, 3),
        "images_per_second": round(len(processed) / seconds, 4) if seconds > 0 else None,
        "engine": args.engine,
        "counts": {"images": len(jobs), "labelled": len(labelled), "skipped": len(skipped), "failed": len(failed)},
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
        "failed": [{"file": o.job.relative, "source": str(o.job.source), "reason": o.reason} for o in failed],
    }
    try:
        write_json(summary, args.out / SUMMARY_NAME)
        if args.coco is not None:
            write_json(coco_results(outcomes, vocabulary.labels), args.coco)
    except (OSError, ValueError, KeyError) as err:
        print(f"error: cannot write the summary or COCO file: {err}", file=sys.stderr)
        return EXIT_ERROR
    if not args.quiet:
        print(
            f"{plural(len(labelled), 'image')} labelled, {len(skipped)} skipped, {len(failed)} failed "
            f"-> {args.out / SUMMARY_NAME}",
            file=sys.stderr,
        )
    return EXIT_PARTIAL if failed else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
