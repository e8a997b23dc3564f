"""Command line: segment images and write overlay, label map and segments JSON.

    python -m maskadapter IMAGE [IMAGE ...] --vocab "car, road, tree | bush" --out DIR

For each image ``NAME.ext`` it writes ``DIR/NAME_overlay.png``, ``DIR/NAME_labels.png``
(0 unlabelled, k = class k-1) and ``DIR/NAME_segments.json`` (COCO RLE masks).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from maskadapter.errors import InputError, MaskAdapterError
from maskadapter.export import save_label_map, save_segments_json
from maskadapter.images import load_image
from maskadapter.masks import add_mask_arguments, mask_settings_from_args
from maskadapter.render import COMPARE_TITLES, overlay, side_by_side
from maskadapter.segmenter import MODES, Segmenter
from maskadapter.settings import add_arguments, settings_from_args
from maskadapter.vocabulary import PREDEFINED


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m maskadapter",
        description="Open-vocabulary segmentation: SAM-2 masks named by Mask-Adapter.",
        epilog="Vocabulary syntax: classes separated by commas or new lines, synonyms by '|'. "
        "Outputs per image: NAME_overlay.png, NAME_labels.png (0 = unlabelled, k = class k-1 "
        "of the JSON's 'labels'), NAME_segments.json (COCO RLE masks, label, score, top-5, area, bbox).",
    )
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files (JPEG, PNG, ...)")
    parser.add_argument("--vocab", default="", help='class names, e.g. "car, road, tree | bush, sky"')
    parser.add_argument(
        "--predefined",
        action="append",
        default=[],
        metavar="NAME",
        help="add a predefined vocabulary (repeatable): "
        + ", ".join(f"{k} ({title})" for k, (title, _) in PREDEFINED.items()),
    )
    parser.add_argument("--out", required=True, type=Path, help="output directory (created if needed)")
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
    parser.add_argument("--alpha", type=float, default=0.5, help="overlay opacity (default 0.5)")
    parser.add_argument(
        "--compare",
        action="store_true",
        help="also name the same masks by plain mask pooling (the baseline): writes NAME_compare.png "
        "(side by side) and NAME_pooling_segments.json, and prints how many masks changed label",
    )
    add_mask_arguments(parser)
    add_arguments(parser)
    return parser


def _read_image(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB pixels of an image file, EXIF orientation applied."""
    try:
        return load_image(path)
    except InputError as err:
        raise InputError(f"cannot read image {path}: {err}") from None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        settings = settings_from_args(args)
        mask_settings = mask_settings_from_args(args)
        images = [(Path(p), _read_image(Path(p))) for p in args.images]
        segmenter = Segmenter.from_settings(settings, progress=lambda msg: print(msg, file=sys.stderr))
        if not segmenter.real_weights:
            print("WARNING: random weights (--tiny-random): labels are meaningless", file=sys.stderr)
        vocabulary = segmenter.vocabulary(args.vocab, args.predefined)
        args.out.mkdir(parents=True, exist_ok=True)
        for path, image in images:
            stem = args.out / path.stem
            options = (mask_settings, args.mode, args.score_threshold, args.granularity)
            if args.compare:
                found = segmenter.compare(image, vocabulary, *options)
                result = found.adapter
                pictures = [overlay(image, r, alpha=args.alpha) for r in (found.adapter, found.pooling)]
                Image.fromarray(side_by_side(pictures, COMPARE_TITLES)).save(f"{stem}_compare.png")
                save_segments_json(found.pooling, f"{stem}_pooling_segments.json", file_name=path.name)
            else:
                result = segmenter.segment_automatic(image, vocabulary, *options)
            Image.fromarray(overlay(image, result, alpha=args.alpha)).save(f"{stem}_overlay.png")
            save_label_map(result, f"{stem}_labels.png")
            save_segments_json(result, f"{stem}_segments.json", file_name=path.name)
            print(f"{path}: {len(result.segments)} segments -> {stem}_*.png/json")
            if args.compare:
                print(f"{path}: {found.changed} of {found.masks} masks changed label with plain mask pooling")
    except MaskAdapterError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
