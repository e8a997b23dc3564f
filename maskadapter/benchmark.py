"""Stage timings and memory of the automatic path, and sam2's own generator beside ours.

    python -m maskadapter.benchmark --tiny-random --width 1024 --height 768 \\
        --pred-iou-thresh 0 --stability-score-thresh 0 --json bench.json

Models: ``--tiny-random``, ``--real-size-random`` (SAM-2.1 ``--sam-size`` + ConvNeXt-L
CLIP + head, random weights), or the real weights (the usual settings flags). The
photo is an example resized to ``--width`` x ``--height``. Every figure comes from this
one run, on one model, image and settings; ratios compare numbers measured side by
side (ours first, so any warm-up advantage goes to sam2's generator).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from datetime import date
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

from maskadapter.errors import MaskAdapterError
from maskadapter.export import save_label_map, segments_to_dict
from maskadapter.generator import MaskGenerator
from maskadapter.images import load_image
from maskadapter.masks import AutoMaskSettings, add_mask_arguments, encode_image, mask_settings_from_args
from maskadapter.render import overlay
from maskadapter.segmenter import Segmenter
from maskadapter.settings import add_arguments, settings_from_args
from maskadapter.vocabulary import build_vocabulary

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "rocket.jpg"
VOCABULARY = "rocket, smoke | steam, sky, tower, trees, ground, person, car, building, road"
RELABEL_VOCABULARY = "launch pad, cloud, forest, grass, metal, fire, water, mountain"


def _status_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    return 0


def _reset_peak() -> None:
    with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # the kernel's peak RSS restarts from the current RSS


class Clock:
    """Wall time of blocks, with the device synchronised at both ends."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.times: dict[str, float] = {}

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        self.sync()
        start = time.perf_counter()
        yield
        self.sync()
        self.times[name] = self.times.get(name, 0.0) + time.perf_counter() - start


class NetworkTime:
    """Total time spent inside SAM-2's image encoder, prompt encoder and mask decoder."""

    def __init__(self, sam2: torch.nn.Module, clock: Clock) -> None:
        self.seconds = 0.0
        self._clock = clock
        self._start: dict[int, float] = {}
        self._hooks = []
        for module in (sam2.image_encoder, sam2.sam_prompt_encoder, sam2.sam_mask_decoder):
            self._hooks.append(module.register_forward_pre_hook(self._enter))
            self._hooks.append(module.register_forward_hook(self._leave))

    def _enter(self, module, args) -> None:
        self._clock.sync()
        self._start[id(module)] = time.perf_counter()

    def _leave(self, module, args, output) -> None:
        self._clock.sync()
        self.seconds += time.perf_counter() - self._start.pop(id(module))

    def remove(self) -> None:
        for hook in self._hooks:
            hook.remove()


def _timed_network(sam2, clock: Clock, fn: Callable[[], object]) -> tuple[float, float, object]:
    """(wall seconds, seconds inside SAM-2's networks, result) of ``fn()``."""
    network = NetworkTime(sam2, clock)
    try:
        clock.sync()
        start = time.perf_counter()
        result = fn()
        clock.sync()
        return time.perf_counter() - start, network.seconds, result
    finally:
        network.remove()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m maskadapter.benchmark", description=__doc__.split("\n\n")[0])
    models = parser.add_mutually_exclusive_group()
    models.add_argument("--real-size-random", action="store_true", help="real architectures, random weights")
    parser.add_argument("--sam-size-random", default="large", help="SAM-2.1 size with --real-size-random")
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--height", type=int, default=768)
    parser.add_argument("--image", type=Path, default=EXAMPLE, help="photo to resize (default: an example)")
    add_mask_arguments(parser)
    parser.add_argument("--mode", default="semantic", choices=("semantic", "per_mask"))
    parser.add_argument("--no-sam2", action="store_true", help="skip sam2's own generator (slow on CPU)")
    parser.add_argument(
        "--batch-images", type=int, default=3, help="images the batch command's local engine labels (0: skip)"
    )
    parser.add_argument("--json", type=Path, help="write the figures as JSON here")
    add_arguments(parser)
    return parser


def _segmenter(args: argparse.Namespace) -> Segmenter:
    settings = settings_from_args(args)
    if args.real_size_random:
        settings = dataclasses.replace(settings, sam_size=args.sam_size_random)
    if args.real_size_random or settings.tiny_random:  # a fresh text cache of its own
        settings = dataclasses.replace(settings, cache_dir=tempfile.mkdtemp(prefix="maskadapter-bench-"))
    segmenter = Segmenter.from_settings(settings, real_size_random=args.real_size_random)
    if segmenter.real_weights:
        segmenter.text_cache.directory = None  # time the text side as a first use would
    return segmenter


def run(args: argparse.Namespace) -> dict:
    """Run every measurement once; returns the figures (seconds, bytes)."""
    photo = load_image(args.image)  # first: a bad file fails before the models load
    segmenter = _segmenter(args)
    device = segmenter.device
    clock = Clock(device)
    sam2 = segmenter.models.sam2
    image = cv2.resize(photo, (args.width, args.height), interpolation=cv2.INTER_AREA)
    settings = mask_settings_from_args(args)
    vocabulary = build_vocabulary(VOCABULARY)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    rss_loaded = _status_bytes("VmRSS")
    _reset_peak()

    # warm-up on a small copy: first-call costs (allocator, kernels) stay out of the figures
    segmenter.segment_automatic(cv2.resize(image, (256, 192)), build_vocabulary("warm, up"), settings)
    segmenter.store = type(segmenter.store)(segmenter.store.budget_bytes)

    # stages, one after the other, on a fresh session
    session = segmenter.session(image)
    with clock("sam2_encode"), torch.inference_mode(), segmenter.autocast():
        encode_image(sam2, session.image, session.sam_cache)
    with clock("clip_encode"):
        segmenter.clip_features(session)
    wall, network, found = _timed_network(sam2, clock, lambda: segmenter.automatic_masks(session, settings))
    clock.times["mask_generation"] = wall
    with clock("text_encode"):
        segmenter.text_embeddings(vocabulary)
    with clock("adapter_classification"):
        probs = segmenter.mask_probabilities(session, found.masks, vocabulary)
    with clock("painting_overlay"):
        result = segmenter._assemble(session, found, probs, vocabulary, args.mode, 0.0, 0.8)
        picture = overlay(image, result)
    with clock("export"), tempfile.TemporaryDirectory() as tmp:
        data = segments_to_dict(result)
        save_label_map(result, Path(tmp) / "labels.png")
        Path(tmp, "segments.json").write_text(json.dumps(data))

    # end to end on new pixels, then a new vocabulary on the same image
    other = np.ascontiguousarray(image[:, ::-1])
    with clock("end_to_end"):
        fresh = segmenter.session(other)
        result = segmenter.segment_automatic(fresh, vocabulary, settings, args.mode)
        overlay(other, result)
        segments_to_dict(result)
    with clock("relabel"):
        result = segmenter.segment_automatic(fresh, build_vocabulary(RELABEL_VOCABULARY), settings, args.mode)
        overlay(other, result)
        segments_to_dict(result)

    # point prompts: the first click encodes the image, later ones reuse it
    third = np.ascontiguousarray(image[::-1])
    h, w = third.shape[:2]
    with clock("first_click"):
        segmenter.segment_points(third, [[w * 0.5, h * 0.5, 1]], vocabulary)
    with clock("later_click"):
        segmenter.segment_points(third, [[w * 0.3, h * 0.6, 1], [w * 0.5, h * 0.5, 1]], vocabulary)

    # our generator and sam2's, same model, image and settings (image encoding included)
    generator_args = settings.generator_args
    ours = MaskGenerator(sam2, **generator_args)
    with torch.inference_mode(), segmenter.autocast():
        ours_wall, ours_net, ours_masks = _timed_network(sam2, clock, lambda: ours.generate(image))
    figures = {
        "date": date.today().isoformat(),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads"
        + (f", {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""),
        "command": "python -m maskadapter.benchmark " + " ".join(sys.argv[1:]),
        "models": segmenter.models.description,
        "device": str(device),
        "image": [args.height, args.width],
        "mask_settings": asdict(settings),
        "masks": len(found.masks),
        "working_hw": list(segmenter.frame(session).work_hw),
        "stages_s": {k: round(v, 4) for k, v in clock.times.items()},
        "mask_generation_outside_networks": round(1 - network / max(wall, 1e-9), 4),
        "relabel_speedup": round(clock.times["end_to_end"] / clock.times["relabel"], 2),
        "ours_generate_s": round(ours_wall, 3),
        "ours_outside_networks": round(1 - ours_net / max(ours_wall, 1e-9), 4),
        "ours_masks": len(ours_masks),
        "ours_refined_candidates": ours.refined,
    }
    if not args.no_sam2:
        from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator

        if settings.min_mask_region_area > 0:
            print(
                "note: --min-mask-region-area > 0 fills holes in our generator; sam2 does so only with its "
                "compiled extension, so mask counts may differ (use 0 to compare equal work)",
                file=sys.stderr,
            )
        reference = SAM2AutomaticMaskGenerator(sam2, output_mode="binary_mask", **generator_args)
        with segmenter.autocast():
            ref_wall, ref_net, ref_masks = _timed_network(sam2, clock, lambda: reference.generate(image))
        figures.update(
            sam2_generate_s=round(ref_wall, 3),
            sam2_outside_networks=round(1 - ref_net / max(ref_wall, 1e-9), 4),
            sam2_masks=len(ref_masks),
            speedup_vs_sam2=round(ref_wall / ours_wall, 2),
        )
    if args.batch_images:
        figures.update(_batch_figures(segmenter, image, settings, args))
    figures["peak_rss_bytes"] = _status_bytes("VmHWM")
    figures["rss_after_load_bytes"] = rss_loaded
    if device.type == "cuda":
        figures["cuda_max_allocated_bytes"] = torch.cuda.max_memory_allocated(device)
    del picture
    return figures


def _batch_figures(segmenter: Segmenter, image: np.ndarray, settings: AutoMaskSettings, args) -> dict:
    """Images per second of the batch command's local engine (decoding ahead, writing
    label maps and segments JSON) over ``--batch-images`` distinct variants of the
    image, the models already loaded."""
    from maskadapter.batch import BatchOptions, plan_jobs, run_local

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp, "in")
        folder.mkdir()
        for i in range(args.batch_images):  # new pixels each: nothing comes from the session store
            variant = np.ascontiguousarray(np.roll(image, 7 * (i + 1), axis=1))
            Image.fromarray(variant).save(folder / f"image-{i}.png")
        jobs = plan_jobs([str(folder)], Path(tmp, "out"))
        options = BatchOptions(
            settings=settings_from_args(args),
            vocab_text=VOCABULARY,
            predefined=(),
            mode=args.mode,
            score_threshold=0.0,
            granularity=0.8,
            mask_settings=settings,
            overlay=False,
            alpha=0.5,
            fingerprint="benchmark",
            quiet=True,
        )
        start = time.perf_counter()
        outcomes = run_local(jobs, options, lambda outcome: None, segmenter=segmenter)
        seconds = time.perf_counter() - start
    done = sum(o.status == "done" for o in outcomes)
    return {"batch_images": done, "batch_s": round(seconds, 3), "batch_images_per_s": round(done / seconds, 3)}


def print_table(figures: dict) -> None:
    rows = [(f"stage: {k}", f"{v * 1000:.0f} ms") for k, v in figures["stages_s"].items()]
    rows += [
        ("masks kept", str(figures["masks"])),
        ("mask generation outside networks", f"{100 * figures['mask_generation_outside_networks']:.1f} %"),
        ("re-label speed-up vs end to end", f"{figures['relabel_speedup']:.1f}x"),
        ("MaskGenerator.generate (encode included)", f"{figures['ours_generate_s']:.2f} s"),
        ("  outside networks", f"{100 * figures['ours_outside_networks']:.1f} %"),
    ]
    if "sam2_generate_s" in figures:
        rows += [
            ("sam2 SAM2AutomaticMaskGenerator.generate", f"{figures['sam2_generate_s']:.2f} s"),
            ("  outside networks", f"{100 * figures['sam2_outside_networks']:.1f} %"),
            ("  masks (ours / sam2)", f"{figures['ours_masks']} / {figures['sam2_masks']}"),
            ("speed-up vs sam2's generator", f"{figures['speedup_vs_sam2']:.1f}x"),
        ]
    if "batch_images_per_s" in figures:
        line = f"{figures['batch_images_per_s']:.3f} images/s ({figures['batch_images']} images)"
        rows.append(("batch, local engine", line))
    rows.append(("peak RSS", f"{figures['peak_rss_bytes'] / 2**30:.2f} GiB"))
    rows.append(("RSS after model load", f"{figures['rss_after_load_bytes'] / 2**30:.2f} GiB"))
    if "cuda_max_allocated_bytes" in figures:
        rows.append(("CUDA max allocated", f"{figures['cuda_max_allocated_bytes'] / 2**30:.2f} GiB"))
    width = max(len(name) for name, _ in rows)
    print(f"{figures['models']} on {figures['device']}, image {figures['image'][1]}x{figures['image'][0]}")
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        figures = run(args)
    except MaskAdapterError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print_table(figures)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
