"""``maskadapter video CLIP ...``: track and name the objects of clips.

    maskadapter video CLIP [...] --vocab "ball, box" --out DIR [--prompts FILE|JSON]

For each clip ``NAME.ext`` it writes ``DIR/NAME_overlay.mp4`` (H.264, a browser plays
it), ``DIR/NAME_tracks.json`` (tracks with COCO RLE masks per frame) and
``DIR/NAME_labels/FRAME.png`` (label maps: 0 unlabelled, k = class k-1). Without
``--prompts`` objects are found automatically (``maskadapter.engine.video``). Exit codes
as for images (``maskadapter.cli.common.EXIT_CODES``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from maskadapter.cli.common import (
    EXIT_ERROR,
    EXIT_OK,
    EXIT_PARTIAL,
    ProgressBar,
    add_chatter_arguments,
    add_labelling_arguments,
    check_painting_arguments,
    fail,
    loading_messages,
    plural,
    print_notes,
    random_weights_warning,
)
from maskadapter.engine.mask_settings import add_mask_arguments, mask_settings_from_args
from maskadapter.engine.video_options import MAX_OBJECTS, PROMPTS_FORMAT, REDETECT_EVERY
from maskadapter.engine.vocabulary import build_vocabulary
from maskadapter.errors import InputError, MaskAdapterError
from maskadapter.logs import setup_logging
from maskadapter.settings import add_arguments, settings_from_args

# The engine, the decoder and the outputs (torch, PyAV) are imported once the arguments
# are read, so that --help and argument errors answer at once.


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="maskadapter video",
        description="Track and name the objects of video clips: SAM-2 finds them (or takes your clicks) and "
        "follows them; Mask-Adapter names each from several of its frames.",
        epilog="Outputs per clip: NAME_overlay.mp4, NAME_tracks.json (per object: label, score, top-5 and per frame "
        "bbox, area, COCO RLE mask at the clip's size), NAME_labels/FRAME.png. Limits: --video-max-seconds, "
        "--video-max-frames, --video-max-side. Exit codes: 0 every clip done, 2 bad arguments or inputs, "
        "3 some clips failed.",
    )
    parser.add_argument("clips", nargs="+", metavar="CLIP", help="video files (MP4, MOV, WebM, MKV, AVI, GIF)")
    add_labelling_arguments(parser)
    parser.add_argument("--out", required=True, type=Path, help="output directory (created if needed)")
    parser.add_argument("--alpha", type=float, default=0.5, help="overlay opacity (default 0.5)")
    parser.add_argument("--every", type=int, default=1, help="keep every K-th frame (default 1: all)")
    parser.add_argument(
        "--redetect-every",
        type=int,
        default=REDETECT_EVERY,
        help=f"look for new objects and name the tracks every N kept frames (default {REDETECT_EVERY})",
    )
    parser.add_argument("--max-objects", type=int, default=MAX_OBJECTS, help=f"tracks per clip (default {MAX_OBJECTS})")
    parser.add_argument(
        "--prompts", metavar="FILE|JSON", help=f"track clicked objects instead of finding them: {PROMPTS_FORMAT}"
    )
    parser.add_argument("--no-label-maps", action="store_true", help="skip the per-frame label-map PNGs")
    add_chatter_arguments(parser)
    add_mask_arguments(parser, random_weight_defaults=True)
    add_arguments(parser)
    return parser


def read_prompts(text: str | None) -> list:
    """``--prompts``: a JSON file's path or the JSON itself, as ``VideoPrompt``s."""
    if not text:
        return []
    from maskadapter.engine.video import parse_prompts

    path = Path(text)
    try:
        raw = path.read_text(encoding="utf-8") if not text.lstrip().startswith("[") and path.is_file() else text
        return parse_prompts(json.loads(raw))
    except json.JSONDecodeError as err:
        raise InputError(f"--prompts is neither a JSON file nor JSON: {err}") from None


def main(argv: list[str] | None = None) -> int:
    """Track the clips named in ``argv``; the exit code."""
    args = build_parser().parse_args(sys.argv[1:] if argv is None else list(argv))
    setup_logging(args.verbose)
    try:
        settings = settings_from_args(args)
        check_painting_arguments(args)
        mask_settings_from_args(args)
        build_vocabulary(args.vocab, args.predefined)  # refuse a bad vocabulary before loading torch
        from maskadapter.engine.segmenter import Segmenter
        from maskadapter.engine.video import track_clip
        from maskadapter.engine.video_source import VideoLimits, open_clip_file
        from maskadapter.output.video_export import write_video_outputs

        prompts = read_prompts(args.prompts)
        limits = VideoLimits.of(settings)
        clips = [open_clip_file(path, limits, args.every) for path in args.clips] if len(args.clips) == 1 else None
        segmenter = Segmenter.from_settings(settings, progress=loading_messages(args.quiet))
        if not segmenter.real_weights:
            print(random_weights_warning(args), file=sys.stderr, flush=True)
        mask_settings = mask_settings_from_args(args, segmenter.default_mask_settings())
        vocabulary = segmenter.vocabulary(args.vocab, args.predefined)
        print_notes(vocabulary.notes)
        args.out.mkdir(parents=True, exist_ok=True)
    except (MaskAdapterError, OSError) as err:
        return fail(err)

    failed = 0
    bar = ProgressBar(len(args.clips), not args.quiet and sys.stderr.isatty())
    try:
        for n, name in enumerate(args.clips):
            path = Path(name)
            bar.start(path)
            try:
                clip = clips[n] if clips else open_clip_file(path, limits, args.every)
                options = {"every": args.every, "video_side": settings.video_side, "mask_settings": mask_settings}
                options |= {"redetect_every": args.redetect_every, "max_objects": args.max_objects}
                options |= {"mode": args.mode, "score_threshold": args.score_threshold, "granularity": args.granularity}
                result = track_clip(segmenter, clip, vocabulary, prompts=prompts, progress=bar.stage, **options)
                paths = write_video_outputs(
                    result, args.out, path.stem, args.alpha, not args.no_label_maps, progress=bar.stage
                )
                for note in result.notes:
                    bar.say(f"note: {note}", file=sys.stderr)
                named = sum(t.label is not None for t in result.tracks)
                bar.say(
                    f"{path}: {plural(len(result.tracks), 'object')} ({named} named) through "
                    f"{plural(len(result.frames), 'frame')} -> {paths['overlay'].parent / path.stem}_*"
                )
            except (MaskAdapterError, OSError) as err:
                failed += 1
                bar.say(f"error: {err}", file=sys.stderr)
            bar.done()
    finally:
        bar.close()
    if not failed:
        return EXIT_OK
    return EXIT_PARTIAL if failed < len(args.clips) else EXIT_ERROR
