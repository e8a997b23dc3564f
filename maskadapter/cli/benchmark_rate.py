"""How close to the machine's limit the benchmark's stages run: the CPU (model, family
flags), the measured matrix-product rate per precision, and the FLOPs of a stage
counted with torch's ``FlopCounterMode`` (matrix products and convolutions: the work
that bounds these networks).

A stage's efficiency is its counted FLOPs over its time at the measured rate of its
precision; 1.0 would be every second spent in matrix products at the rate of a large
one.
"""

from __future__ import annotations

import contextlib
import platform
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from maskadapter.engine.point_decoder import PointDecoder

FAMILY_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16")  # /proc/cpuinfo names


def cpu_description() -> dict:
    """The CPU's model name and which of ``FAMILY_FLAGS`` it has (Linux; else what
    ``platform`` says), with torch's CPU capability and thread count."""
    model, flags = platform.processor() or platform.machine(), set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model in ("", platform.machine(), platform.processor()):
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
                break
    return {
        "model": model,
        "flags": [flag for flag in FAMILY_FLAGS if flag in flags],
        "capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
    }


def matmul_rate(device: torch.device, dtype: torch.dtype = torch.float32, seconds: float = 1.0) -> float:
    """FLOP/s of a (4096 x 1024) @ (1024 x 1024) product in ``dtype`` on ``device``: the
    best of five windows of about ``seconds / 5`` each, after a warm-up, so that a
    moment of interference on a shared machine does not lower the ceiling."""
    a = torch.randn(4096, 1024, device=device).to(dtype)
    b = torch.randn(1024, 1024, device=device).to(dtype)
    flops = 2 * 4096 * 1024 * 1024
    best = 0.0
    with torch.inference_mode():
        for _ in range(2):
            a @ b
        for _ in range(5):
            _sync(device)
            start, done = time.perf_counter(), 0
            while done < 2 or time.perf_counter() - start < seconds / 5:
                a @ b
                done += 1
                _sync(device)
            best = max(best, flops * done / (time.perf_counter() - start))
    return best


class StageFlops:
    """FLOPs counted per named block: ``with flops("name"): ...``."""

    def __init__(self) -> None:
        self.counted: dict[str, int] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        counter = FlopCounterMode(display=False)
        with counter:
            yield
        self.counted[name] = self.counted.get(name, 0) + counter.get_total_flops()


def decoder_flops_per_prompt(sam2: torch.nn.Module, features: dict, dtype: torch.dtype | None) -> int:
    """FLOPs of the automatic generator's decoder (prompt encoder included) per point
    prompt, counted on one call of 4 prompts (the work is linear in the prompts)."""
    decoder = PointDecoder(sam2, features, dtype)
    points = torch.tensor([[100.0, 200.0], [300.0, 700.0], [900.0, 50.0], [512.0, 512.0]])
    counter = FlopCounterMode(display=False)
    with counter:
        decoder.decode(points.to(features["image_embed"].device))
    return counter.get_total_flops() // len(points)


def efficiency(flops: float, seconds: float, rate: float) -> float:
    """Counted FLOPs per second over the measured matrix-product rate."""
    return round(flops / max(seconds, 1e-9) / rate, 3)


def say(text: str) -> None:
    """A progress line on stderr (the figures go to stdout at the end)."""
    print(f"[benchmark] {text}", file=sys.stderr, flush=True)


def measure_rates(device: torch.device, amp_dtype: torch.dtype | None) -> dict[str, float]:
    """Measured matrix-product FLOP/s in float32 and in the run's low precision."""
    rates = {"float32": matmul_rate(device)}
    if amp_dtype is not None:
        rates[str(amp_dtype).removeprefix("torch.")] = matmul_rate(device, amp_dtype)
    say("matrix products: " + ", ".join(f"{k} {v / 1e9:.0f} GFLOP/s" for k, v in rates.items()))
    return rates


def stage_efficiencies(times: dict, counted: dict, rates: dict, precision: str, network_s: float) -> dict[str, float]:
    """Each counted stage's FLOP/s over the matrix-product rate of its precision (text
    encoding runs in float32); ``mask_decoder_networks``: the decoder's FLOPs over the
    time spent inside SAM-2's networks during mask generation."""
    out = {}
    for name, flops in counted.items():
        rate = rates["float32"] if name == "text_encode" else rates[precision]
        out[name] = efficiency(flops, times[name], rate)
    out["mask_decoder_networks"] = efficiency(counted["mask_generation"], network_s, rates[precision])
    return out


def efficiency_rows(figures: dict) -> list[tuple[str, str]]:
    """The benchmark table's rows of rates and efficiencies."""
    rates = ", ".join(f"{k} {v / 1e9:.0f}" for k, v in figures["matmul_rate_flops"].items())
    rows = [("matrix-product rate (GFLOP/s)", rates)]
    for name, share in figures["efficiency"].items():
        flops = figures["stage_flops"].get(name if name != "mask_decoder_networks" else "mask_generation", 0)
        rows.append((f"  {name} at the rate", f"{100 * share:.0f} % ({flops / 1e9:.0f} GFLOP)"))
    return rows


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
