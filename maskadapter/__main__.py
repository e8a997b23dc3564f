"""Command line: segment images and write overlay, label map and segments JSON.

    python -m maskadapter IMAGE|DIR|GLOB [...] --vocab "car, road, tree | bush" --out DIR

Inputs are image files, directories (their images, sorted; not recursive) and glob
patterns (``"photos/*.jpg"``, quoted so that the CLI expands them). For each image
``NAME.ext`` it writes ``DIR/NAME_overlay.png``, ``DIR/NAME_labels.png`` (0 unlabelled,
k = class k-1) and ``DIR/NAME_segments.json`` (COCO RLE masks). Exit codes:
``EXIT_OK``, ``EXIT_ERROR``, ``EXIT_PARTIAL`` (see ``EXIT_CODES``).
"""

from __future__ import annotations

import argparse
import glob
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

import numpy as np
from PIL import Image
from tqdm import tqdm

from maskadapter.errors import InputError, MaskAdapterError
from maskadapter.export import save_label_map, save_segments_json
from maskadapter.images import load_image
from maskadapter.logs import setup_logging
from maskadapter.masks import RANDOM_WEIGHT_OVERRIDES, AutoMaskSettings, add_mask_arguments, mask_settings_from_args
from maskadapter.render import COMPARE_TITLES, overlay, side_by_side
from maskadapter.segmenter import MODES, Segmenter
from maskadapter.settings import add_arguments, settings_from_args
from maskadapter.vocabulary import PREDEFINED, Vocabulary, build_vocabulary

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


def add_labelling_arguments(parser: argparse.ArgumentParser) -> None:
    """The labelling flags shared by this CLI and ``maskadapter.batch``: ``--vocab``,
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
    a picture (shared with ``maskadapter.batch`` and ``maskadapter.evaluate``)."""
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


def add_chatter_arguments(parser: argparse.ArgumentParser) -> None:
    """``--quiet`` / ``--verbose`` (mutually exclusive), shared with ``maskadapter.batch``."""
    chatter = parser.add_mutually_exclusive_group()
    chatter.add_argument("--quiet", "-q", action="store_true", help="no progress bar and no model-loading messages")
    chatter.add_argument(
        "--verbose", "-v", action="store_true", help="INFO logs, and the third-party warnings hidden by default"
    )


def build_parser() -> argparse.ArgumentParser:
    codes = "; ".join(f"{code}: {meaning}" for code, meaning in EXIT_CODES.items())
    parser = argparse.ArgumentParser(
        prog="python -m maskadapter",
        description="Open-vocabulary segmentation: SAM-2 masks named by Mask-Adapter.",
        epilog="Vocabulary syntax: classes separated by commas or new lines, synonyms by '|'. "
        "Outputs per image: NAME_overlay.png, NAME_labels.png (0 = unlabelled, k = class k-1 "
        "of the JSON's 'labels'), NAME_segments.json (COCO RLE masks, label, score, top-5, area, bbox). "
        f"Exit codes: {codes}.",
    )
    parser.add_argument(
        "images",
        nargs="+",
        metavar="IMAGE",
        help="image files (JPEG, PNG, WebP, AVIF, GIF, BMP, TIFF, PPM), directories (their files named "
        f"{', '.join('*' + e for e in IMAGE_EXTENSIONS)}, any case, sorted, not recursive) or glob "
        'patterns, quoted ("photos/*.jpg", "shots/**/*.png"; matches filtered like directories)',
    )
    add_labelling_arguments(parser)
    parser.add_argument("--out", required=True, type=Path, help="output directory (created if needed)")
    parser.add_argument("--alpha", type=float, default=0.5, help="overlay opacity (default 0.5)")
    parser.add_argument(
        "--compare",
        action="store_true",
        help="also name the same masks by plain mask pooling (the baseline): writes NAME_compare.png "
        "(side by side) and NAME_pooling_segments.json, and prints how many masks changed label",
    )
    add_chatter_arguments(parser)
    add_mask_arguments(parser, random_weight_defaults=True)
    add_arguments(parser)
    return parser


def _is_image_name(path: Path) -> bool:
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
            files = sorted(p for p in path.iterdir() if p.is_file() and _is_image_name(p))
            if not files:
                raise InputError(f"no images in directory {item} (looked for {', '.join(IMAGE_EXTENSIONS)})")
        elif glob.has_magic(item) and not path.exists():
            matches = glob.glob(str(path), recursive=True)
            files = sorted(p for p in map(Path, matches) if p.is_file() and _is_image_name(p))
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


class Progress:
    """A tqdm bar over the images on stderr (off with ``--quiet`` or when stderr is not a
    terminal); the segmenter's stage messages become its postfix. ``say`` prints a line
    without breaking the bar."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.bar = tqdm(total=total, unit="image", file=sys.stderr, disable=not enabled, dynamic_ncols=True)

    def stage(self, fraction: float, message: str) -> None:
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


def _label_one(
    segmenter: Segmenter,
    path: Path,
    vocabulary: Vocabulary,
    args: argparse.Namespace,
    mask_settings: AutoMaskSettings,
    stage: Callable[[float, str], None],
) -> list[str]:
    """Segment one image and write its outputs; the lines to print."""
    image = read_image_file(path)
    stem = args.out / path.stem
    options = (mask_settings, args.mode, args.score_threshold, args.granularity)
    lines = []
    if args.compare:
        found = segmenter.compare(image, vocabulary, *options, progress=stage)
        result = found.adapter
        pictures = [overlay(image, r, alpha=args.alpha) for r in (found.adapter, found.pooling)]
        Image.fromarray(side_by_side(pictures, COMPARE_TITLES)).save(f"{stem}_compare.png")
        save_segments_json(found.pooling, f"{stem}_pooling_segments.json", file_name=path.name)
    else:
        result = segmenter.segment_automatic(image, vocabulary, *options, progress=stage)
    stage(0.95, "writing outputs")
    Image.fromarray(overlay(image, result, alpha=args.alpha)).save(f"{stem}_overlay.png")
    save_label_map(result, f"{stem}_labels.png")
    save_segments_json(result, f"{stem}_segments.json", file_name=path.name)
    lines.append(f"{path}: {plural(len(result.segments), 'segment')} -> {stem}_*.png/json")
    if args.compare:
        masks = plural(found.masks, "mask")
        lines.append(f"{path}: {found.changed} of {masks} changed label with plain mask pooling")
    return lines


def _random_weights_warning(args: argparse.Namespace) -> str:
    """The CLI's one line about random weights (and the filters it opens unless given)."""
    text = "WARNING: random weights (--tiny-random): labels are meaningless"
    opened = ["--" + name.replace("_", "-") for name in RANDOM_WEIGHT_OVERRIDES if getattr(args, name) is None]
    if opened:
        text += f"; SAM-2's quality filters are opened ({' and '.join(opened)} default to 0)"
    return text


def main(argv: list[str] | None = None) -> int:
    """Run the CLI on ``argv`` (default ``sys.argv[1:]``); the exit code. A first
    argument ``batch`` (``evaluate``) runs ``maskadapter.batch`` (``maskadapter.evaluate``) on the rest."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["batch"]:
        from maskadapter.batch import main as batch_main

        return batch_main(argv[1:])
    if argv[:1] == ["evaluate"]:
        from maskadapter.evaluate import main as evaluate_main

        return evaluate_main(argv[1:])
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    show_progress = not args.quiet and sys.stderr.isatty()
    try:
        settings = settings_from_args(args)
        mask_settings_from_args(args)  # refuse bad values before loading anything
        paths = expand_inputs(args.images)
        build_vocabulary(args.vocab, args.predefined)  # refuse a bad vocabulary before loading models
        missing = [str(p) for p in paths if not p.is_file()]
        if len(missing) == 1 == len(paths):
            raise InputError(f"cannot read image {missing[0]}: no such file")
        if len(missing) == len(paths):
            raise InputError(f"cannot read any image: no such files: {', '.join(missing)}")
        note = None if args.quiet else (lambda message: print(message, file=sys.stderr, flush=True))
        segmenter = Segmenter.from_settings(settings, progress=note)
        if not segmenter.real_weights:
            print(_random_weights_warning(args), file=sys.stderr, flush=True)
        mask_settings = mask_settings_from_args(args, segmenter.default_mask_settings())
        vocabulary = segmenter.vocabulary(args.vocab, args.predefined)
        for text in vocabulary.notes:
            print(f"note: {text}", file=sys.stderr)
        args.out.mkdir(parents=True, exist_ok=True)
    except MaskAdapterError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_ERROR
    except OSError as err:  # the output directory cannot be made
        print(f"error: {err}", file=sys.stderr)
        return EXIT_ERROR

    failed = 0
    progress = Progress(len(paths), show_progress)
    try:
        for path in paths:
            progress.start(path)
            try:
                if not path.is_file():
                    raise InputError(f"cannot read image {path}: no such file")
                for line in _label_one(segmenter, path, vocabulary, args, mask_settings, progress.stage):
                    progress.say(line)
            except (MaskAdapterError, OSError) as err:
                failed += 1
                progress.say(f"error: {err}", file=sys.stderr)
            progress.done()
    finally:
        progress.close()
    if not failed:
        return EXIT_OK
    done = len(paths) - failed
    if len(paths) > 1:
        print(f"{plural(done, 'image')} labelled, {failed} failed", file=sys.stderr)
    return EXIT_PARTIAL if done else EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
