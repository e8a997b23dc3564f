"""Stage timings, CPU time and memory of the automatic path, and sam2's own generator beside ours.

    python -m maskadapter.cli.benchmark --real-size-random --json bench.json

Models: ``--tiny-random``, ``--real-size-random`` (SAM-2.1 ``--sam-size-random`` +
ConvNeXt-L CLIP + head, random weights), or the real weights (the usual settings
flags). The photo is an example resized to ``--width`` x ``--height``. Mask settings:
the demo's (``min_mask_region_area`` 100 included), with SAM-2's quality filters
opened when the weights are random, unless flags say otherwise; the precision is the
``--precision`` setting's (``auto`` unless given).

Every figure comes from this one run, on one model, image and settings: wall time
and the process's user and system CPU time per stage. sam2's
``SAM2AutomaticMaskGenerator`` runs as a user of sam2 runs it: in a process of its
own, float32, the allocator as Python leaves it, on the same SAM-2 weights, image and
settings; its time is compared with our whole automatic path (both encoders, masks,
classification, painting) measured in this run. ``--compare-precision`` also runs
the path in the other precision (float32 if this run's autocasts, else bf16) and
counts the mask pixels and labels that change. First, while no model is loaded, every
command's ``--help`` is timed in new processes (target: under 1.5 s each; ``help_s``,
``maskadapter.cli.benchmark_help``) unless ``--no-help-times`` or ``--video-frames``
says otherwise. The sam2 and precision comparisons live in
``maskadapter.cli.benchmark_compare``; the clocks, the stages and the figures in
``maskadapter.cli.benchmark_run``, imported once the arguments are read (torch), so that
--help and argument errors answer at once.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from maskadapter.cli.common import EXIT_OK, fail
from maskadapter.engine.mask_settings import add_mask_arguments
from maskadapter.errors import MaskAdapterError
from maskadapter.resources import PACKAGE_DIR
from maskadapter.settings import add_arguments

EXAMPLE = PACKAGE_DIR.parent / "examples" / "rocket.jpg"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="maskadapter benchmark", description=__doc__.split("\n\n")[0])
    models = parser.add_mutually_exclusive_group()
    models.add_argument("--real-size-random", action="store_true", help="real architectures, random weights")
    parser.add_argument("--sam-size-random", default="large", help="SAM-2.1 size with --real-size-random")
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--height", type=int, default=768)
    parser.add_argument("--image", type=Path, default=EXAMPLE, help="photo to resize (default: an example)")
    add_mask_arguments(parser, random_weight_defaults=True)
    parser.add_argument("--mode", default="semantic", choices=("semantic", "per_mask"))
    parser.add_argument("--no-sam2", action="store_true", help="skip sam2's own generator (slow on CPU)")
    parser.add_argument(
        "--compare-precision",
        action="store_true",
        help="also run the path in the other precision and count the mask pixels and labels that change",
    )
    parser.add_argument(
        "--batch-images", type=int, default=3, help="images the batch command's local engine labels (0: skip)"
    )
    parser.add_argument(
        "--no-help-times",
        action="store_true",
        help="skip timing every command's --help in new processes (a few seconds; target under 1.5 s)",
    )
    parser.add_argument("--json", type=Path, help="write the figures as JSON here")
    video = parser.add_argument_group("video (maskadapter.cli.benchmark_video): measured instead of the image path")
    video.add_argument("--video-frames", type=int, default=0, help="track a synthetic clip this long (0: no video)")
    video.add_argument("--video-objects", type=int, default=1, help="clicked objects tracked through it")
    add_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from maskadapter.cli.benchmark_help import RUNS, help_figures
    from maskadapter.cli.benchmark_rate import say
    from maskadapter.cli.benchmark_run import run, run_video
    from maskadapter.cli.benchmark_table import print_table
    from maskadapter.cli.benchmark_video import video_rows
    from maskadapter.logs import setup_logging

    setup_logging()  # after the engine's imports, as every command: known third-party warnings left out

    help_times = None
    if not args.no_help_times and args.video_frames <= 0:  # before the models load: this process idle
        say(f"every command's --help, {RUNS} new processes each")
        help_times = help_figures()
    try:
        figures = run_video(args) if args.video_frames > 0 else run(args)
    except MaskAdapterError as err:
        return fail(err)
    if help_times is not None:
        figures["help_s"] = help_times
    if "video" in figures:
        print(f"{figures['models']} on {figures['device']} ({figures['precision']})")
        for name, value in video_rows(figures["video"]):
            print(f"{name:<18}  {value}")
    else:
        print_table(figures)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
