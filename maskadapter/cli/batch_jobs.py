"""What a batch is made of: the jobs planned from the inputs, the options every engine
gets, the outcome of each job, and the fingerprint that makes a run resumable.

Inputs are image files, directories (searched recursively for image extensions), glob
patterns and ``@list.txt`` (a text file naming one input per line; blank lines and lines
starting with ``#`` are skipped; relative entries are relative to the list's folder).
The folder structure under each input root is kept: ``in/a/b.jpg`` given as ``in``
becomes the job of ``DIR/a/b_*``; a file named directly (or by a list) is written at
``DIR/NAME_*``; a glob's root is its longest folder without wildcards.

An engine (``maskadapter.cli.batch_local``, ``maskadapter.cli.batch_ray``) is an
``Engine``: ``(jobs, options, report) -> list[ImageOutcome]``.
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from maskadapter.cli.common import IMAGE_EXTENSIONS, is_image_name, model_description, short_hash
from maskadapter.engine.mask_settings import AutoMaskSettings
from maskadapter.engine.vocabulary import Vocabulary
from maskadapter.errors import InputError
from maskadapter.settings import Settings

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


# called with each outcome as an engine finishes it (the progress bar, the printed lines)
Report = Callable[[ImageOutcome], None]
# labels the jobs, reporting each outcome; returns the outcomes in the order of the jobs
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


# ---------------------------------------------------------------------------- resume


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
    return short_hash(described)


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
