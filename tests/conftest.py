"""Shared fixtures: tiny random models saved to files and loaded back through the
real builders, a small example photo, and a synthetic SAM-2 decoder for varied masks."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

if TYPE_CHECKING:
    import torch

    from maskadapter.engine.segmenter import Segmenter
    from maskadapter.engine.weights import ModelFiles

# torch and the package are imported where they are used: under `pytest -n 2` the
# controlling process only hands out tests and need not spend seconds importing them

EXAMPLES = ROOT / "examples"


def pytest_addoption(parser):
    parser.addoption(
        "--cpu-bf16",
        choices=("detect", "native"),
        default="detect",
        help="native: run as on a CPU with AMX / AVX-512 BF16, where precision 'auto' means bf16 "
        "(each worker's detection answers yes; processes the tests start get MASKADAPTER_PRECISION=bf16); "
        "slow where bf16 is emulated, for checking that the suite holds on such CPUs",
    )


def pytest_configure(config):
    if config.getoption("--cpu-bf16") == "native":
        from maskadapter.engine import runtime

        detect = runtime.cpu_has_native_bf16

        def native() -> bool:
            return True

        native.__wrapped__ = detect.__wrapped__  # the real detection, for the test that checks it
        runtime.cpu_has_native_bf16 = native
        os.environ.setdefault("MASKADAPTER_PRECISION", "bf16")


if os.environ.get("PYTEST_XDIST_WORKER"):
    import torch

    # pytest -n 2 on two cores: one thread per worker, so the workers do not fight over cores;
    # the processes the tests start (the app, the CLI, examples) inherit one OpenMP thread
    # too (two threads each beside the other worker spin and wait on each other)
    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def small_image(name: str = "chelsea.png", width: int = 160) -> np.ndarray:
    """An example photo scaled to ``width`` pixels, (H, W, 3) uint8 RGB."""
    with Image.open(EXAMPLES / name) as im:
        im = im.convert("RGB")
        height = round(im.height * width / im.width)
        return np.asarray(im.resize((width, height), Image.BILINEAR))


def held_arrays(obj: object):
    """Every tensor and array in ``obj`` (dicts, lists, tuples and dataclasses walked),
    as the tests count what a session holds."""
    import torch

    if isinstance(obj, torch.Tensor | np.ndarray):
        yield obj
    elif isinstance(obj, dict):
        for value in obj.values():
            yield from held_arrays(value)
    elif isinstance(obj, list | tuple):
        for value in obj:
            yield from held_arrays(value)
    elif hasattr(obj, "__dataclass_fields__"):
        for name in obj.__dataclass_fields__:
            yield from held_arrays(getattr(obj, name))


def array_bytes(arrays) -> int:
    return sum(a.nbytes if isinstance(a, np.ndarray) else a.numel() * a.element_size() for a in arrays)


@pytest.fixture(scope="session")
def tiny_files(tmp_path_factory) -> ModelFiles:
    from maskadapter.engine.weights import save_tiny_random

    return save_tiny_random(tmp_path_factory.mktemp("tiny_models"))


@pytest.fixture(scope="session")
def tiny_models(tiny_files):
    from maskadapter.engine.weights import build_models

    return build_models(tiny_files, "cpu")


@pytest.fixture()
def segmenter(tiny_models, tmp_path) -> Segmenter:
    """A segmenter over the tiny models with a small CLIP input size and its own cache,
    in float32 (the tests that use it compare with float32 recomputations; on a CPU with
    native bf16, ``auto`` would mean bf16)."""
    from maskadapter.engine.segmenter import Segmenter
    from maskadapter.engine.transforms import ImageTransform

    transform = ImageTransform(short_side=224, max_size=320)
    return Segmenter(tiny_models, "cpu", transform, str(tmp_path / "cache"), precision="float32")


@pytest.fixture()
def image() -> np.ndarray:
    return small_image()


class SyntheticSAM:
    """Replaces SAM-2's mask-decoder outputs with varied discs around each prompt point.

    Random SAM-2 weights predict nearly the same mask for every prompt, so filters
    and NMS would have nothing to do. The real prompt encoder and decoder still run
    (sam2's ``MaskDecoder`` for clicks and sam2's generator, ``PointDecoder`` for our
    automatic generator); their outputs are replaced: output k of a point at (x, y) is
    a disc centred there whose radius and edge sharpness depend on the point and on k,
    with an IoU prediction that varies too.
    """

    def __init__(
        self, model: torch.nn.Module, sharpness: tuple[float, float] = (0.6, 0.5), speckle: bool = False
    ) -> None:
        self.model = model
        self.sharpness = sharpness  # edge sharpness = base + spread * |cos(...)|
        self.speckle = speckle  # small squares of flipped sign: holes inside the discs, specks outside
        self.coords = None
        self._encoder_forward = model.sam_prompt_encoder.forward
        self._decoder_forward = model.sam_mask_decoder.forward
        from maskadapter.engine.point_decoder import PointDecoder

        self._point_decoder = PointDecoder  # the class whose decode is replaced while entered
        self._point_decode = PointDecoder.decode

    def __enter__(self) -> SyntheticSAM:
        import torch

        def encoder(points=None, boxes=None, masks=None):
            self.coords = None if points is None else points[0].detach().float()
            return self._encoder_forward(points=points, boxes=boxes, masks=masks)

        def replaced(low_res: torch.Tensor, ious: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            B, M, H, W = low_res.shape
            centre = self.coords[:, 0, :] * (W / 1024.0)  # (B, 2) in low-res pixels
            ys, xs = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
            seed = centre[:, 0] * 7.31 + centre[:, 1] * 3.17  # (B,)
            logits = torch.empty(B, M, H, W)
            scores = torch.empty(B, M)
            for k in range(M):
                radius = 20.0 + 18.0 * k + 12.0 * torch.sin(seed + k)  # (B,)
                sharp = self.sharpness[0] + self.sharpness[1] * torch.cos(seed * 1.7 + k).abs()
                dist = ((xs[None] - centre[:, 0, None, None]) ** 2 + (ys[None] - centre[:, 1, None, None]) ** 2).sqrt()
                logits[:, k] = sharp[:, None, None] * (radius[:, None, None] - dist)
                scores[:, k] = 0.75 + 0.24 * torch.sin(seed * 0.9 + 2 * k)
            if self.speckle:
                logits = torch.where(_squares(H, W), -2.0 * logits.sign(), logits)
            return logits.to(low_res.dtype), scores.to(ious.dtype)

        def decoder(*args, **kwargs):  # sam2's decoder (clicks, sam2's own generator)
            low_res, ious, tokens, obj = self._decoder_forward(*args, **kwargs)
            return *replaced(low_res, ious), tokens, obj

        def point_decoder(decoder, coords, multimask=True):  # the automatic generator's decoder
            return replaced(*self._point_decode(decoder, coords, multimask))

        self.model.sam_prompt_encoder.forward = encoder
        self.model.sam_mask_decoder.forward = decoder
        self._point_decoder.decode = point_decoder
        return self

    def __exit__(self, *exc) -> None:
        self.model.sam_prompt_encoder.forward = self._encoder_forward
        self.model.sam_mask_decoder.forward = self._decoder_forward
        self._point_decoder.decode = self._point_decode


def _squares(h: int, w: int, tile: int = 24) -> torch.Tensor:
    """(h, w) bool: in each ``tile`` x ``tile`` cell one square of side 3 to 13 pixels
    (areas 9 to 169, both sides of a 100-pixel limit), one cell in three left empty."""
    import torch

    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    ty, tx = ys // tile, xs // tile
    side = 3 + (ty * 5 + tx * 3) % 11
    inside = (ys % tile >= 2) & (ys % tile < 2 + side) & (xs % tile >= 2) & (xs % tile < 2 + side)
    return inside & ((ty + 2 * tx) % 3 != 0)


@pytest.fixture()
def synthetic_sam(tiny_models):
    with SyntheticSAM(tiny_models.sam2) as synthetic:
        yield synthetic


class AppProcess:
    """`python app.py --tiny-random` as a separate process, as a user starts it, with
    extra environment variables; ``url``, ``pid`` and the ``log`` text once stopped."""

    def __init__(self, workdir: Path, env: dict[str, str] | None = None) -> None:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}/"
        self.log_path = workdir / "app.log"
        self.env = {
            **os.environ,
            "MASKADAPTER_CACHE_DIR": str(workdir / "cache"),
            "MASKADAPTER_SHORT_SIDE": "320",
            "MASKADAPTER_MAX_SIZE": "480",
            "GRADIO_ANALYTICS_ENABLED": "False",
            **(env or {}),
        }
        self.command = [sys.executable, "app.py", "--tiny-random", "--port", str(port)]

    def __enter__(self) -> AppProcess:
        import subprocess
        import time
        import urllib.request

        with open(self.log_path, "w") as out:
            self.proc = subprocess.Popen(self.command, cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT)
        self.pid = self.proc.pid
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(self.url, timeout=2) as response:
                    if response.status == 200:
                        return self
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.__exit__()
                    raise RuntimeError(f"the app did not start:\n{self.log[-3000:]}") from None
                time.sleep(0.5)

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)

    @property
    def log(self) -> str:
        return self.log_path.read_text()

    def rss(self) -> int:
        """The app process's resident memory in bytes."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")


# The files that take longest on 2 cores, longest first. Under README's `pytest -n 2`
# each file runs in one worker (--dist loadfile, pyproject.toml); handing out the long
# ones first keeps both workers busy to the end instead of leaving one long file alone
# at the end. A file missing here runs after these, in its usual order.
LONGEST_FIRST = (
    "test_app", "test_api", "test_docs", "test_progressive", "test_evaluate", "test_batch_ray", "test_video",
    "test_benchmark", "test_load", "test_install", "test_cli", "test_precision", "test_concurrency",
    "test_generator", "test_semantic",
)  # fmt: skip


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.stem, len(rank)))  # stable: a file's tests keep their order

