"""``maskadapter IMAGE ...``: segment images and write overlay, label map and segments JSON.

    maskadapter IMAGE|DIR|GLOB [...] --vocab "car, road, tree | bush" --out DIR

Inputs are image files, directories (their images, sorted; not recursive) and glob
patterns (``"photos/*.jpg"``, quoted so that the CLI expands them). For each image
``NAME.ext`` it writes ``DIR/NAME_overlay.png``, ``DIR/NAME_labels.png`` (0 unlabelled,
k = class k-1) and ``DIR/NAME_segments.json`` (COCO RLE masks). Exit codes:
``EXIT_OK``, ``EXIT_ERROR``, ``EXIT_PARTIAL`` (see ``maskadapter.cli.common.EXIT_CODES``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image

from maskadapter.cli.common import (
    EXIT_CODES,
    EXIT_ERROR,
    EXIT_OK,
    EXIT_PARTIAL,
    IMAGE_EXTENSIONS,
    ProgressBar,
    add_chatter_arguments,
    add_labelling_arguments,
    check_painting_arguments,
    expand_inputs,
    fail,
    loading_messages,
    plural,
    print_notes,
    random_weights_warning,
    read_image_file,
)
from maskadapter.engine.mask_settings import AutoMaskSettings, add_mask_arguments, mask_settings_from_args
from maskadapter.engine.vocabulary import Vocabulary, build_vocabulary
from maskadapter.errors import InputError, MaskAdapterError
from maskadapter.logs import setup_logging
from maskadapter.progress import ProgressCallback
from maskadapter.settings import add_arguments, settings_from_args

if TYPE_CHECKING:
    from maskadapter.engine.segmenter import Segmenter

# The engine and the outputs (torch) are imported once the arguments are read, so that
# --help and argument errors answer at once.


def build_parser() -> argparse.ArgumentParser:
    codes = "; ".join(f"{code}: {meaning}" for code, meaning in EXIT_CODES.items())
    parser = argparse.ArgumentParser(
        prog="maskadapter",
        description="Open-vocabulary segmentation: SAM-2 masks named by Mask-Adapter. This command labels "
        "single images; the others: maskadapter batch --help (a collection of images, resumable), "
        "maskadapter evaluate --help (mIoU on the paper's benchmarks), maskadapter benchmark --help (speed), "
        "maskadapter video --help (track and name the objects of clips).",
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


def _label_one(
    segmenter: Segmenter,
    path: Path,
    vocabulary: Vocabulary,
    args: argparse.Namespace,
    mask_settings: AutoMaskSettings,
    stage: ProgressCallback,
) -> list[str]:
    """Segment one image and write its outputs; the lines to print. ``stage`` hears the
    segmenter's progress on this image (the bar's ``ProgressBar.stage``)."""
    from maskadapter.output.export import save_label_map, save_segments_json
    from maskadapter.output.render import COMPARE_TITLES, overlay, side_by_side

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


def main(argv: list[str] | None = None) -> int:
    """Label the images named in ``argv`` (default ``sys.argv[1:]``); the exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    show_progress = not args.quiet and sys.stderr.isatty()
    try:
        settings = settings_from_args(args)
        mask_settings_from_args(args)  # refuse bad values before loading anything
        check_painting_arguments(args)
        paths = expand_inputs(args.images)
        build_vocabulary(args.vocab, args.predefined)  # refuse a bad vocabulary before loading models
        missing = [str(p) for p in paths if not p.is_file()]
        if len(missing) == 1 == len(paths):
            raise InputError(f"cannot read image {missing[0]}: no such file")
        if len(missing) == len(paths):
            raise InputError(f"cannot read any image: no such files: {', '.join(missing)}")
        from maskadapter.engine.segmenter import Segmenter

        segmenter = Segmenter.from_settings(settings, progress=loading_messages(args.quiet))
        if not segmenter.real_weights:
            print(random_weights_warning(args), file=sys.stderr, flush=True)
        mask_settings = mask_settings_from_args(args, segmenter.default_mask_settings())
        vocabulary = segmenter.vocabulary(args.vocab, args.predefined)
        print_notes(vocabulary.notes)
        args.out.mkdir(parents=True, exist_ok=True)
    except (MaskAdapterError, OSError) as err:  # OSError: the output directory cannot be made
        return fail(err)

    failed = 0
    progress = ProgressBar(len(paths), show_progress)
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
