"""Where model work runs and in what arithmetic: the device, its precision, running out
of its memory (``halving_on_oom``) and compiling for it (``compile_sam2``).

``precision`` (the setting of that name):

- ``"auto"``: bf16 autocast on CUDA GPUs of compute capability 8 or more, bf16 on
  CPUs that do bf16 arithmetic natively (AMX or AVX-512 BF16, detected once), float32
  everywhere else: on older GPUs too (sam2 runs in bf16 or float32 upstream, and
  float16 is not tested end to end here), and on a CPU without native bf16, which
  would emulate it several times slower than float32;
- ``"float32"``: no autocast anywhere;
- ``"bf16"``: bf16 autocast on any device.

Under autocast the networks' matrix products and convolutions run in the low
precision; what the method needs in float32 stays there whatever the setting (the
adapter's pooling softmax, class logits, mask-pooling sums, SAM-2's mask decisions:
see ``clip_features`` and ``generator``).
"""

from __future__ import annotations

import functools
import itertools
import logging
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import torch

from maskadapter.errors import InputError, ResourceError
from maskadapter.settings import check_precision

T = TypeVar("T")
log = logging.getLogger(__name__)

_CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")  # /proc/cpuinfo names


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AMX tiles or AVX-512 BF16)."""
    cpu = torch.cpu
    checks = [getattr(cpu, name, None) for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported")]
    if all(callable(check) for check in checks):
        return any(check() for check in checks)
    try:  # an older torch without the checks: the kernel's CPU flags
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return any(flag in flags for flag in _CPU_BF16_FLAGS)


def autocast_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """The autocast dtype of model work on ``device`` under ``precision`` (see the
    module docstring); None means float32, no autocast."""
    check_precision(precision)
    if precision == "float32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        major, _ = torch.cuda.get_device_capability(device)
        return torch.bfloat16 if major >= 8 else None
    if device.type == "cpu" and cpu_has_native_bf16():
        return torch.bfloat16
    return None


def precision_name(dtype: torch.dtype | None) -> str:
    """``"float32"``, ``"bfloat16"`` or ``"float16"``: what an autocast dtype means."""
    return "float32" if dtype is None else str(dtype).removeprefix("torch.")


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; anything else must be usable here."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise InputError(f"unknown device {name!r}; use auto, cpu or cuda[:N]") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {name!r} asked for, but CUDA is not available here")
    return device


@dataclass(frozen=True)
class ModelToken:
    """A name for one model object, never given to another one (unlike ``id``, which
    Python reuses once an object is freed): cache keys of what a model computed."""

    serial: int


_tokens: weakref.WeakKeyDictionary[torch.nn.Module, ModelToken] = weakref.WeakKeyDictionary()
_serials = itertools.count(1)
_tokens_lock = threading.Lock()


def model_token(model: torch.nn.Module) -> ModelToken:
    """The ``ModelToken`` of ``model`` (the same for the object's whole life)."""
    with _tokens_lock:
        token = _tokens.get(model)
        if token is None:
            token = _tokens[model] = ModelToken(next(_serials))
        return token


def halving_on_oom(run: Callable[[int], T], size: int, what: str) -> T:
    """``run(size)``; when the device runs out of memory, its cache is freed and ``run``
    is retried with half the size, down to 1; then ``ResourceError``. ``what`` says
    where, for the messages ("on SAM-2's point batches")."""
    while True:
        try:
            return run(size)
        except torch.OutOfMemoryError:
            if size <= 1:
                raise ResourceError(
                    f"the device ran out of memory {what}, even one at a time; "
                    "try a smaller image, fewer points per side or fewer classes"
                ) from None
            size //= 2
            log.warning("out of device memory %s; retrying %d at a time", what, size)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()


def compile_sam2(sam_model: torch.nn.Module) -> None:
    """``torch.compile`` SAM-2's image encoder and mask decoder in place (the setting
    ``compile``; worth it on a GPU for many images, costly on the first call)."""
    sam_model.image_encoder = torch.compile(sam_model.image_encoder)
    sam_model.sam_mask_decoder = torch.compile(sam_model.sam_mask_decoder, dynamic=True)
