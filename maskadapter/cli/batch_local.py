"""The ``local`` batch engine, and the steps of one job that every engine runs.

``label_job`` is one image's work: decode, segment, ``write_outputs`` (each output under
a temporary name in its folder, then renamed with ``os.replace``, the segments JSON, the
resume marker, last). ``run_local`` runs it in this process with the models loaded once
and the next images decoded ahead in a background thread; ``maskadapter.cli.batch_ray``
runs it in Ray Data actors.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from maskadapter.cli.batch_jobs import BatchOptions, ImageJob, ImageOutcome, Report
from maskadapter.cli.common import atomic_write, loading_messages, one_line, print_notes, read_image_file, save_png
from maskadapter.engine.results import SegmentationResult
from maskadapter.engine.segmenter import Segmenter
from maskadapter.engine.vocabulary import Vocabulary
from maskadapter.errors import MaskAdapterError
from maskadapter.output.export import label_map_image, segments_to_dict, write_segments_json
from maskadapter.output.render import overlay


def write_outputs(job: ImageJob, image: np.ndarray, result: SegmentationResult, options: BatchOptions) -> None:
    """Write the outputs of ``image`` ((H, W, 3) uint8 RGB) labelled as ``result``, each
    atomically, the segments JSON (the resume marker) last."""
    job.out_stem.parent.mkdir(parents=True, exist_ok=True)
    save_png(label_map_image(result), job.output("_labels.png"))
    if options.overlay:
        save_png(overlay(image, result, alpha=options.alpha), job.output("_overlay.png"))
    data = segments_to_dict(result, file_name=job.relative)
    data["batch"] = {"fingerprint": options.fingerprint, "source": str(job.source)}
    atomic_write(job.output("_segments.json"), lambda tmp: write_segments_json(data, tmp))


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
    if segmenter is None:
        segmenter = Segmenter.from_settings(options.settings, progress=loading_messages(options.quiet))
    vocabulary = segmenter.vocabulary(options.vocab_text, options.predefined)
    print_notes(vocabulary.notes)
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
    """Label one job with every engine's steps: get its pixels (``pixels()``: (H, W, 3)
    uint8 RGB; it may raise ``InputError``), segment, write the outputs (``write_outputs``); a failure of
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
        outcome = ImageOutcome(job, "failed", reason=one_line(err))
    outcome.seconds = time.perf_counter() - started
    return outcome
