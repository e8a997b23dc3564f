"""The benchmark's measurements: the clocks, the stages and the figures of one run
(``maskadapter.cli.benchmark`` is the command; see its docstring for what is measured).

``run`` times the automatic path stage by stage, the whole paths, the progressive path
and the batch engine on one photo; ``run_video`` the video figures
(``maskadapter.cli.benchmark_video``). The comparisons with sam2's generator and the
other precision live in ``maskadapter.cli.benchmark_compare``.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import dataclasses
import json
import platform
import resource
import shutil
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

from maskadapter.cli.batch_jobs import BatchOptions, plan_jobs
from maskadapter.cli.batch_local import run_local
from maskadapter.cli.benchmark_compare import compare_precision, run_sam2_reference
from maskadapter.cli.benchmark_rate import (
    StageFlops,
    cpu_description,
    decoder_flops_per_prompt,
    measure_rates,
    say,
    stage_efficiencies,
)
from maskadapter.cli.benchmark_video import status_bytes, video_figures
from maskadapter.engine.images import load_image
from maskadapter.engine.mask_settings import AutoMaskSettings, default_mask_settings, mask_settings_from_args
from maskadapter.engine.painting_options import Painting
from maskadapter.engine.point_decoder import PointDecoder, prompts_per_call
from maskadapter.engine.results import assemble
from maskadapter.engine.segmenter import Segmenter
from maskadapter.engine.vocabulary import Vocabulary, build_vocabulary
from maskadapter.memory import tune_allocator
from maskadapter.output.export import save_label_map, segments_to_dict
from maskadapter.output.render import overlay
from maskadapter.settings import settings_from_args

VOCABULARY = "rocket, smoke | steam, sky, tower, trees, ground, person, car, building, road"
RELABEL_VOCABULARY = "launch pad, cloud, forest, grass, metal, fire, water, mountain"


def _reset_peak() -> None:
    with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # the kernel's peak RSS restarts from the current RSS


def cpu_seconds() -> tuple[float, float]:
    """(user, system) CPU seconds of this process so far, all threads."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime


class Clock:
    """Wall time and CPU time of blocks, with the device synchronised at both ends."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.times: dict[str, float] = {}
        self.cpu: dict[str, tuple[float, float]] = {}  # (user, system) seconds

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        self.sync()
        start, (user, system) = time.perf_counter(), cpu_seconds()
        yield
        self.sync()
        (user2, system2), seen = cpu_seconds(), self.cpu.get(name, (0.0, 0.0))
        self.times[name] = self.times.get(name, 0.0) + time.perf_counter() - start
        self.cpu[name] = (seen[0] + user2 - user, seen[1] + system2 - system)
        say(f"{name}: {self.times[name]:.2f} s")


class NetworkTime:
    """Total time spent inside SAM-2's image encoder, prompt encoder and mask decoder
    (sam2's modules, and ``PointDecoder.decode``, the generator's decoder, while this
    object lives: ``remove`` puts the method back)."""

    def __init__(self, sam2: torch.nn.Module, clock: Clock) -> None:
        self.seconds = 0.0
        self._clock = clock
        self._start = 0.0
        self._depth = 0  # timed calls open (a decode calls the prompt encoder)
        self._hooks = []
        for module in (sam2.image_encoder, sam2.sam_prompt_encoder, sam2.sam_mask_decoder):
            self._hooks.append(module.register_forward_pre_hook(self._enter))
            self._hooks.append(module.register_forward_hook(self._leave))
        decode = self._decode = PointDecoder.decode
        network = self

        def timed(decoder, *args, **kwargs):
            network._enter(decoder, args)
            try:
                return decode(decoder, *args, **kwargs)
            finally:
                network._leave(decoder, args, None)

        PointDecoder.decode = timed

    def _enter(self, module, args) -> None:
        self._depth += 1
        if self._depth == 1:  # not inside a timed call already (the prompt encoder in a decode)
            self._clock.sync()
            self._start = time.perf_counter()

    def _leave(self, module, args, output) -> None:
        self._depth -= 1
        if self._depth == 0:
            self._clock.sync()
            self.seconds += time.perf_counter() - self._start

    def remove(self) -> None:
        for hook in self._hooks:
            hook.remove()
        PointDecoder.decode = self._decode


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


def _segmenter(args: argparse.Namespace) -> Segmenter:
    settings = settings_from_args(args)
    if args.real_size_random:
        settings = dataclasses.replace(settings, sam_size=args.sam_size_random)
    if args.real_size_random or settings.tiny_random:  # a fresh text cache of its own, gone at exit
        cache = tempfile.mkdtemp(prefix="maskadapter-bench-")
        atexit.register(shutil.rmtree, cache, ignore_errors=True)
        settings = dataclasses.replace(settings, cache_dir=cache)
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
    settings = mask_settings_from_args(args, default_mask_settings(segmenter.real_weights))
    vocabulary = build_vocabulary(VOCABULARY)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    rss_loaded = status_bytes("VmRSS")
    _reset_peak()

    # warm-up on a small copy: first-call costs (kernels, caches) stay out of the figures
    say(f"{segmenter.models.description}, {segmenter.arithmetic}; warming up on a small copy of the photo")
    segmenter.segment_automatic(cv2.resize(image, (256, 192)), build_vocabulary("warm, up"), settings)
    segmenter.store = type(segmenter.store)(segmenter.store.budget_bytes)

    # stages, one after the other, on a fresh session; FLOPs counted on the networks' stages
    rates = measure_rates(device, segmenter.amp_dtype)
    flops = StageFlops()
    session = segmenter.session(image)
    with clock("sam2_encode"), flops("sam2_encode"):
        embedding = segmenter.sam_embedding(session)
    with clock("clip_encode"), flops("clip_encode"):
        segmenter.clip_features(session)
    with clock("mask_generation"):
        wall, network, found = _timed_network(sam2, clock, lambda: segmenter.automatic_masks(session, settings))
    with clock("text_encode"), flops("text_encode"):
        segmenter.text_embeddings(vocabulary)
    with clock("adapter_classification"), flops("adapter_classification"):
        probs = segmenter.mask_probabilities(session, found.masks, vocabulary)
    with clock("painting_overlay"):
        result = assemble(segmenter.frame(session), found, probs, vocabulary, Painting(args.mode))
        picture = overlay(image, result)
    with clock("export"), tempfile.TemporaryDirectory() as tmp:
        data = segments_to_dict(result)
        save_label_map(result, Path(tmp) / "labels.png")
        Path(tmp, "segments.json").write_text(json.dumps(data))
    flops.counted["mask_generation"], per_call = _decoder_figures(segmenter, embedding, settings)

    other = _time_whole_paths(segmenter, clock, image, vocabulary, settings, args.mode)
    say("progressive automatic path (a picture after each step of the grid)")
    progressive = _time_progressive(segmenter, image, vocabulary, settings, args.mode, clock.times["end_to_end"])

    figures = {
        "date": date.today().isoformat(),
        "machine": _machine(device),
        "command": "python -m maskadapter.cli.benchmark " + " ".join(sys.argv[1:]),
        "models": segmenter.models.description,
        "device": str(device),
        "precision": segmenter.arithmetic,
        "allocator": tune_allocator(),
        "image": [args.height, args.width],
        "mask_settings": asdict(settings),
        "masks": len(found.masks),
        "working_hw": list(segmenter.frame(session).work_hw),
        "stages_s": {k: round(v, 4) for k, v in clock.times.items()},
        "stages_cpu_s": {k: [round(u, 3), round(s, 3)] for k, (u, s) in clock.cpu.items()},
        "mask_generation_outside_networks": round(1 - network / max(wall, 1e-9), 4),
        "cpu": cpu_description(),
        "matmul_rate_flops": rates,
        "stage_flops": flops.counted,
        "decoder_prompts_per_call": per_call,
        "efficiency": stage_efficiencies(clock.times, flops.counted, rates, segmenter.arithmetic, network),
        "relabel_speedup": round(clock.times["end_to_end"] / clock.times["relabel"], 2),
        "progressive": progressive,
    }
    if args.compare_precision:
        figures["precision_change"] = compare_precision(segmenter, other, vocabulary, settings, args.mode)
    if not args.no_sam2:
        say("sam2's own generator, in a process of its own (float32; minutes on a CPU)")
        reference = run_sam2_reference(segmenter, image, settings)
        figures["sam2"] = reference
        figures["speedup_vs_sam2"] = round(reference["wall_s"] / clock.times["end_to_end"], 2)
    if args.batch_images:
        figures.update(_batch_figures(segmenter, image, settings, args))
    figures.update(_process_figures(device, rss_loaded))
    del picture
    return figures


def _decoder_figures(segmenter: Segmenter, embedding: dict, settings: AutoMaskSettings) -> tuple[int, int]:
    """(the grid's decoder FLOPs, the decoder's prompts per call as measured) for an image."""
    features = next(iter(embedding.values()))[0]
    with torch.inference_mode():
        per_prompt = decoder_flops_per_prompt(segmenter.models.sam2, features, segmenter.amp_dtype)
        per_call = prompts_per_call(segmenter.models.sam2, features, segmenter.amp_dtype, settings.points_per_batch)
    return per_prompt * settings.points_per_side**2, per_call


def _time_whole_paths(
    segmenter: Segmenter, clock: Clock, image: np.ndarray, vocabulary: Vocabulary, settings: AutoMaskSettings,
    mode: str,
) -> np.ndarray:  # fmt: skip
    """Time the whole automatic path on new pixels (``end_to_end``: ``image`` (H, W, 3)
    uint8 RGB mirrored left to right, returned), a new vocabulary on the same image
    (``relabel``), and point prompts on ``image`` upside down: the first click encodes
    it (``first_click``), a later one reuses it (``later_click``)."""
    other = np.ascontiguousarray(image[:, ::-1])
    with clock("end_to_end"):
        fresh = segmenter.session(other)
        result = segmenter.segment_automatic(fresh, vocabulary, settings, mode)
        overlay(other, result)
        segments_to_dict(result)
    with clock("relabel"):
        result = segmenter.segment_automatic(fresh, build_vocabulary(RELABEL_VOCABULARY), settings, mode)
        overlay(other, result)
        segments_to_dict(result)

    third = np.ascontiguousarray(image[::-1])
    h, w = third.shape[:2]
    with clock("first_click"):
        segmenter.segment_points(third, [[w * 0.5, h * 0.5, 1]], vocabulary)
    with clock("later_click"):
        segmenter.segment_points(third, [[w * 0.3, h * 0.6, 1], [w * 0.5, h * 0.5, 1]], vocabulary)
    return other


def _time_progressive(
    segmenter: Segmenter, image: np.ndarray, vocabulary: Vocabulary, settings: AutoMaskSettings, mode: str,
    one_shot_s: float,
) -> dict:  # fmt: skip
    """``segment_automatic_steps`` on new pixels of the same size (``image`` turned half
    a turn), each step's picture drawn and its JSON made as the app does: seconds from
    the start to each step's picture, and the first and the whole against ``one_shot_s``
    (``end_to_end`` of this run)."""
    turned = np.ascontiguousarray(image[::-1, ::-1])
    steps = []
    start = time.perf_counter()
    for step in segmenter.segment_automatic_steps(segmenter.session(turned), vocabulary, settings, mode):
        overlay(turned, step.result)
        segments_to_dict(step.result)
        steps.append({"points": step.points, "seconds": round(time.perf_counter() - start, 3)})
    first, total = steps[0]["seconds"], steps[-1]["seconds"]
    return {
        "steps": steps,
        "first_picture_s": first,
        "total_s": total,
        "first_vs_one_shot": round(first / one_shot_s, 4),
        "total_vs_one_shot": round(total / one_shot_s, 4),
    }


def _process_figures(device: torch.device, rss_loaded: int) -> dict:
    """The process's memory (peak RSS, RSS after the models loaded, the CUDA allocator's
    peak; bytes) and CPU seconds over the whole run, model loading included."""
    figures = {"peak_rss_bytes": status_bytes("VmHWM"), "rss_after_load_bytes": rss_loaded}
    if device.type == "cuda":
        figures["cuda_max_allocated_bytes"] = torch.cuda.max_memory_allocated(device)
    user, system = cpu_seconds()
    figures["process_cpu_s"] = {"user": round(user, 2), "sys": round(system, 2), "sys_share": round(system / user, 4)}
    return figures


def _machine(device: torch.device) -> str:
    text = f"{platform.machine()}, {torch.get_num_threads()} threads, {torch.backends.cpu.get_cpu_capability()}"
    return text + (f", {torch.cuda.get_device_name(device)}" if device.type == "cuda" else "")


def _batch_figures(segmenter: Segmenter, image: np.ndarray, settings: AutoMaskSettings, args) -> dict:
    """Images per second of the batch command's local engine (decoding ahead, writing
    label maps and segments JSON) over ``--batch-images`` distinct variants of the
    image, the models already loaded."""
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


def run_video(args: argparse.Namespace) -> dict:
    """The video figures (``benchmark_video``) on the chosen models, ``--width`` x ``--height``."""
    segmenter = _segmenter(args)
    side = settings_from_args(args).video_side
    figures = video_figures(segmenter, args.video_frames, (args.height, args.width), args.video_objects, side)
    device = segmenter.device
    described = {"date": date.today().isoformat(), "machine": _machine(device), "models": segmenter.models.description}
    return described | {"device": str(device), "precision": segmenter.arithmetic, "video": figures}
