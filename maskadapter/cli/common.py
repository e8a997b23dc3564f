"""What the commands share: exit codes and error lines, the progress bar, argument groups,
reading inputs, run records and atomic writes.

``maskadapter.cli.label`` (single images), ``maskadapter.cli.batch`` (collections),
``maskadapter.cli.evaluate`` and ``maskadapter.cli.benchmark`` import from here and never
from each other; ``maskadapter.__main__`` only dispatches.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import sys
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

import numpy as np
from PIL import Image
from tqdm import tqdm

from maskadapter.engine.images import load_image
from maskadapter.engine.mask_settings import RANDOM_WEIGHT_OVERRIDES
from maskadapter.engine.painting_options import MODES, Painting
from maskadapter.engine.vocabulary import PREDEFINED
from maskadapter.errors import InputError
from maskadapter.progress import ProgressCallback, no_progress
from maskadapter.settings import Settings

# the files a directory or a glob pattern contributes (a file named explicitly is read whatever its name)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".avif", ".gif", ".bmp", ".tif", ".tiff", ".ppm")
EXIT_OK = 0
EXIT_ERROR = 2
EXIT_PARTIAL = 3
EXIT_CODES = {
    EXIT_OK: "every image labelled",
    EXIT_ERROR: "bad arguments, inputs or models: nothing labelled (argparse's code for usage errors too)",
    EXIT_PARTIAL: "some images failed (each reported on stderr and skipped), the others labelled",
}


def plural(count: int, word: str) -> str:
    """``"1 segment"``, ``"2 segments"``, ``"0 segments"``."""
    return f"{count} {word}{'' if count == 1 else 's'}"


def fail(err: BaseException | str) -> int:
    """Print ``error: ERR`` on stderr and return ``EXIT_ERROR``: how a command refuses to run
    (bad arguments, inputs or models) or stops."""
    print(f"error: {err}", file=sys.stderr)
    return EXIT_ERROR


def one_line(err: BaseException) -> str:
    """``err``'s message on one line (whitespace runs, new lines included, made one space),
    or its type's name when it has none: the reason recorded for a failed image."""
    return " ".join(str(err).split()) or type(err).__name__


def print_notes(notes: Iterable[str]) -> None:
    """Each of ``notes`` (about the vocabulary, the dataset, the flags) as ``note: TEXT`` on stderr."""
    for text in notes:
        print(f"note: {text}", file=sys.stderr)


def loading_messages(quiet: bool) -> ProgressCallback:
    """What the commands pass as ``Segmenter.from_settings``'s ``progress``: each
    model-loading message (downloads, building) printed on stderr; nothing with ``--quiet``."""
    if quiet:
        return no_progress
    return lambda fraction, message: print(message, file=sys.stderr, flush=True)


def add_labelling_arguments(parser: argparse.ArgumentParser) -> None:
    """The labelling flags shared by this CLI and ``maskadapter.cli.batch``: ``--vocab``,
    ``--predefined`` and the ``add_painting_arguments`` flags."""
    parser.add_argument("--vocab", default="", help='class names, e.g. "car, road, tree | bush, sky"')
    parser.add_argument(
        "--predefined",
        action="append",
        default=[],
        metavar="NAME",
        help="add a predefined vocabulary (repeatable): "
        + ", ".join(f"{k} ({title})" for k, (title, _) in PREDEFINED.items()),
    )
    add_painting_arguments(parser)


def add_painting_arguments(parser: argparse.ArgumentParser) -> None:
    """``--mode``, ``--score-threshold`` and ``--granularity``: how classified masks become
    a picture (shared with ``maskadapter.cli.batch`` and ``maskadapter.cli.evaluate``)."""
    parser.add_argument(
        "--mode",
        choices=MODES,
        default="semantic",
        help="semantic: a semantic map merging masks per class, as the Mask-Adapter demo draws it; "
        "per_mask: one label per SAM-2 mask (default: semantic)",
    )
    parser.add_argument(
        "--score-threshold", type=float, default=0.0, help="drop segments whose class probability is lower (default 0)"
    )
    parser.add_argument(
        "--granularity",
        type=float,
        default=0.8,
        help="semantic mode: keep masks scoring >= this x the class's best (default 0.8)",
    )


def check_painting_arguments(args: argparse.Namespace) -> None:
    """Refuse ``add_painting_arguments``' values before any model loads, by the engine's
    own check (``Painting``: a known mode, thresholds in [0, 1]).

    Raises:
        InputError: ``--mode``, ``--score-threshold`` or ``--granularity`` is out of range.
    """
    Painting(args.mode, args.score_threshold, args.granularity)


def add_chatter_arguments(parser: argparse.ArgumentParser) -> None:
    """``--quiet`` / ``--verbose`` (mutually exclusive), shared with ``maskadapter.cli.batch``."""
    chatter = parser.add_mutually_exclusive_group()
    chatter.add_argument("--quiet", "-q", action="store_true", help="no progress bar and no model-loading messages")
    chatter.add_argument(
        "--verbose", "-v", action="store_true", help="INFO logs, and the third-party warnings hidden by default"
    )


def is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def expand_inputs(inputs: list[str]) -> list[Path]:
    """The image paths named by ``inputs``, in order, each once: a directory gives its
    files with an image extension (sorted, not recursive), a glob pattern that names no
    existing path its matching image files (sorted; ``**`` recurses), anything else the
    path itself (read or reported later).

    Raises:
        InputError: a directory without images, or a pattern that matches none.
    """
    found: dict[Path, None] = {}
    for item in inputs:
        path = Path(item).expanduser()
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.is_file() and is_image_name(p))
            if not files:
                raise InputError(f"no images in directory {item} (looked for {', '.join(IMAGE_EXTENSIONS)})")
        elif glob.has_magic(item) and not path.exists():
            matches = glob.glob(str(path), recursive=True)
            files = sorted(p for p in map(Path, matches) if p.is_file() and is_image_name(p))
            if not files:
                raise InputError(f"no image file matches {item!r} (looked for {', '.join(IMAGE_EXTENSIONS)})")
        else:
            files = [path]
        found.update(dict.fromkeys(files))
    paths = list(found)
    stems: dict[str, Path] = {}
    for path in paths:
        other = stems.setdefault(path.stem, path)
        if other != path:
            raise InputError(
                f"{other} and {path} would write the same outputs ({path.stem}_*): rename one, or run them separately"
            )
    return paths


def read_image_file(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB pixels of an image file, EXIF orientation applied; the
    ``InputError`` of a missing or unreadable file names the path (the CLI, batch and
    evaluation commands read their images through this)."""
    if not path.is_file():
        raise InputError(f"cannot read image {path}: no such file")
    try:
        return load_image(path)
    except InputError as err:
        raise InputError(f"cannot read image {path}: {err}") from None


class ProgressBar:
    """A tqdm bar over the images on stderr (off with ``--quiet`` or when stderr is not a
    terminal). ``stage`` is a ``ProgressCallback`` (``maskadapter.progress``): pass it as the
    segmenter's ``progress``, and each stage message becomes the bar's postfix. ``say`` prints
    a line without breaking the bar."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.bar = tqdm(total=total, unit="image", file=sys.stderr, disable=not enabled, dynamic_ncols=True)

    def stage(self, fraction: float, message: str) -> None:
        """The ``ProgressCallback`` of the current image: shows ``message`` (``fraction`` is
        the image's, not the run's, so the bar leaves it out)."""
        self.bar.set_postfix_str(message, refresh=True)

    def start(self, path: Path) -> None:
        self.bar.set_description(path.name)

    def done(self) -> None:
        self.bar.update(1)

    def say(self, text: str, file: TextIO | None = None) -> None:
        if self.bar.disable:
            print(text, file=file or sys.stdout, flush=True)
        else:
            tqdm.write(text, file=file or sys.stdout)

    def close(self) -> None:
        self.bar.close()


def random_weights_warning(args: argparse.Namespace) -> str:
    """The CLI's one line about random weights (and the filters it opens unless given)."""
    text = "WARNING: random weights (--tiny-random): labels are meaningless"
    opened = ["--" + name.replace("_", "-") for name in RANDOM_WEIGHT_OVERRIDES if getattr(args, name) is None]
    if opened:
        text += f"; SAM-2's quality filters are opened ({' and '.join(opened)} default to 0)"
    return text


# the settings fields that change what the models produce (the others: caches, server)
MODEL_FIELDS = (
    "sam_size",
    "sam_checkpoint",
    "sam_config",
    "clip_model",
    "clip_pretrained",
    "clip_checkpoint",
    "adapter_repo",
    "adapter_file",
    "adapter_checkpoint",
    "tiny_random",
    "input_size",
    "short_side",
    "max_size",
    "mask_side",
)


def model_description(settings: Settings) -> dict:
    """The model-relevant settings (``MODEL_FIELDS``) as a dict."""
    return {name: getattr(settings, name) for name in MODEL_FIELDS}


def utc_now() -> str:
    """The time now, UTC, ISO 8601 to the second (run records)."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def short_hash(described: dict) -> str:
    """16 hex digits of the SHA-256 of ``described`` as sorted-key JSON: the fingerprint of
    a run's settings (equal fingerprints: outputs that can be reused)."""
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------- writing


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """``write`` to a temporary name in ``path``'s folder, then rename it to ``path``."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_png(pixels: np.ndarray, path: Path) -> None:
    """A uint8 or uint16 array as a PNG at ``path``, written atomically."""
    atomic_write(path, lambda tmp: Image.fromarray(pixels).save(tmp, format="PNG"))


def write_json(data: dict, path: Path) -> None:
    """``data`` as indented UTF-8 JSON at ``path``, written atomically."""
    text = json.dumps(data, ensure_ascii=False, indent=1)
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
