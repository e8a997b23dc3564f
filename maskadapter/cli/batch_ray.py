"""The ``ray`` batch engine: Ray Data actors label the images, each with its own models.

The driver (this process) only lists the jobs and gathers the outcomes: the jobs go into
``ray.data.from_items`` (paths and output locations, no pixels), ``map_batches`` hands
them to a pool of ``LabelActor`` actors (``--ray-actors``, each with
``--ray-gpus-per-actor`` GPUs), which build the ``Segmenter`` once from the run's
``Settings`` and label each image with ``maskadapter.cli.batch_local.label_job`` (the local
engine's steps: decode, segment, ``write_outputs``), and the rows of outcomes stream
back. Workers write the outputs themselves, so ``--out`` must be a path every worker can
write (a shared filesystem on a cluster), and the workers need maskadapter installed
(a local instance started here gets this checkout on its ``PYTHONPATH``).

Ray is imported only when the engine runs; without it ``require_ray`` raises
``InputError`` (exit 2).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import numpy as np

from maskadapter.cli.batch_jobs import BatchOptions, ImageJob, ImageOutcome, Report
from maskadapter.cli.batch_local import label_job
from maskadapter.cli.common import one_line, print_notes, read_image_file
from maskadapter.engine.segmenter import Segmenter
from maskadapter.engine.vocabulary import build_vocabulary
from maskadapter.errors import InputError, MaskAdapterError
from maskadapter.memory import huge_page_env, tune_allocator
from maskadapter.resources import PACKAGE_DIR

RAY_MISSING = (
    "the ray engine needs Ray Data: pip install 'ray[data]' (or, in a clone of the repository: pip install -e '.[ray]')"
)
# an actor's rows when its models could not be loaded: the run stops with this reason
MODELS_FAILED = "models-failed"


def require_ray() -> ModuleType:
    """The ``ray`` module with Ray Data importable.

    Raises:
        InputError: Ray or Ray Data is not installed (``RAY_MISSING``).
    """
    try:
        import ray
        import ray.data  # Ray without the data extra lacks its dependencies
    except ImportError as err:
        raise InputError(f"{RAY_MISSING} ({err})") from None
    return ray


class LabelActor:
    """A Ray Data callable class: the models are built once per actor (``__init__``),
    then each call labels a batch of jobs and returns one row of outcome per job."""

    def __init__(self, options: BatchOptions) -> None:
        tune_allocator()  # a worker process: as the programs do at start (maskadapter.memory)
        self.options = options
        self.error: str | None = None
        try:
            self.segmenter = Segmenter.from_settings(options.settings)
            self.vocabulary = self.segmenter.vocabulary(options.vocab_text, options.predefined)
        except (MaskAdapterError, OSError) as err:  # reported by the rows, so that the driver stops cleanly
            self.error = one_line(err)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Label the batch's jobs (columns ``index``, ``source``, ``relative``,
        ``out_stem``); columns ``index``, ``status``, ``segments``, ``reason``, ``seconds``."""
        rows: dict[str, list] = {"index": [], "status": [], "segments": [], "reason": [], "seconds": []}
        for index, source, relative, out_stem in zip(
            batch["index"], batch["source"], batch["relative"], batch["out_stem"], strict=True
        ):
            job = ImageJob(Path(str(source)), str(relative), Path(str(out_stem)))
            if self.error is not None:
                outcome = ImageOutcome(job, MODELS_FAILED, reason=self.error)
            else:
                pixels = lambda job=job: read_image_file(job.source)  # noqa: E731
                outcome = label_job(self.segmenter, self.vocabulary, job, pixels, self.options)
            rows["index"].append(int(index))
            rows["status"].append(outcome.status)
            rows["segments"].append(outcome.segments)
            rows["reason"].append(outcome.reason or "")
            rows["seconds"].append(outcome.seconds)
        return {
            "index": np.asarray(rows["index"], dtype=np.int64),
            "status": np.asarray(rows["status"], dtype=object),
            "segments": np.asarray(rows["segments"], dtype=np.int64),
            "reason": np.asarray(rows["reason"], dtype=object),
            "seconds": np.asarray(rows["seconds"], dtype=np.float64),
        }


def _package_root() -> str:
    """The folder holding the ``maskadapter`` package (for a local instance's workers)."""
    return str(PACKAGE_DIR.parent)


def _start(ray: ModuleType, options: BatchOptions) -> bool:
    """Connect to ``--ray-address`` / ``RAY_ADDRESS`` or start a local instance; True when
    this call initialised Ray (and so shuts it down), False when it already was.

    Raises:
        MaskAdapterError: Ray cannot start or connect.
    """
    if ray.is_initialized():
        return False
    address = options.ray.address or os.environ.get("RAY_ADDRESS") or None
    try:
        if address:
            ray.init(address=address, log_to_driver=not options.quiet)
        else:
            pythonpath = os.pathsep.join(p for p in (_package_root(), os.environ.get("PYTHONPATH", "")) if p)
            ray.init(
                address="local",
                num_cpus=options.ray.num_cpus,
                include_dashboard=False,
                log_to_driver=not options.quiet,
                runtime_env={"env_vars": {"PYTHONPATH": pythonpath, **huge_page_env()}},
            )
    except (ConnectionError, RuntimeError, ValueError) as err:
        where = f"connect to Ray at {address}" if address else "start a local Ray instance"
        raise MaskAdapterError(f"cannot {where}: {' '.join(str(err).split())}") from None
    return True


def run_ray(jobs: Sequence[ImageJob], options: BatchOptions, report: Report) -> list[ImageOutcome]:
    """The ray engine: label ``jobs`` with a Ray Data pipeline of ``LabelActor`` actors;
    ``report`` is called with each outcome as it comes back (in completion order); the
    outcomes are returned in the order of ``jobs``.

    Raises:
        InputError: Ray Data is not installed.
        MaskAdapterError: Ray cannot start or connect, or the models cannot be loaded on
            a worker (the run stops; the images done so far keep their outputs).
    """
    ray = require_ray()
    if not options.quiet:
        print_notes(build_vocabulary(options.vocab_text, options.predefined).notes)
    started_here = _start(ray, options)
    try:
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # the batch CLI has its own progress
        items = [
            {"index": i, "source": str(job.source), "relative": job.relative, "out_stem": str(job.out_stem)}
            for i, job in enumerate(jobs)
        ]
        dataset = ray.data.from_items(items).map_batches(
            LabelActor,
            fn_constructor_kwargs={"options": options},
            batch_size=options.ray.batch_size,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=options.ray.actors),
            num_gpus=options.ray.gpus_per_actor or None,
        )
        found: dict[int, ImageOutcome] = {}
        for row in dataset.iter_rows():
            index, status = int(row["index"]), str(row["status"])
            if status == MODELS_FAILED:
                raise MaskAdapterError(f"the models cannot be loaded on a Ray worker: {row['reason']}")
            outcome = ImageOutcome(
                jobs[index],
                status,
                segments=int(row["segments"]),
                reason=str(row["reason"]) or None,
                seconds=float(row["seconds"]),
            )
            found[index] = outcome
            report(outcome)
    except ray.exceptions.RayError as err:
        message = " ".join(str(err).split())
        raise MaskAdapterError(f"the Ray pipeline failed: {message[:500]}") from None
    finally:
        if started_here:
            ray.shutdown()
    return [found[i] for i in sorted(found)]
