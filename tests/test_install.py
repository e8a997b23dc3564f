"""The distribution: built and installed with pip (no dependencies: the running
environment's are reused), then used from another directory without the checkout."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow

# left out of the copy that is built: not part of the distribution, or build leftovers
# (a stale build/ would let a file that is gone from the checkout slip into the wheel)
NOT_BUILT = (
    ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", ".ruff_cache",
    ".hypothesis", ".cache", "outputs", "test-artifacts", "tests", "docs", "examples", "gpu-wheels",
    "gpu-results",
)  # fmt: skip


def _setuptools_can_build() -> bool:
    try:
        import setuptools
    except ImportError:
        return False
    return int(setuptools.__version__.split(".")[0]) >= 77  # [build-system] requires


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """``pip install --no-deps --target SITE`` of a copy of the checkout. The build runs
    without isolation (no network): it uses this environment's setuptools."""
    if not _setuptools_can_build():
        pytest.fail("needs setuptools>=77 in this environment to build without network (requirements-dev.txt pins it)")
    base = tmp_path_factory.mktemp("install")
    source = base / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*NOT_BUILT))
    target = base / "site"
    out = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-input",
         "--disable-pip-version-check", "--target", str(target), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return target


def _run(args: list[str], site: Path, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MASKADAPTER_")}
    env.update(PYTHONPATH=str(site), MASKADAPTER_CACHE_DIR=str(cwd / "cache"))
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_installed_copy_is_used_with_its_data(site, tmp_path):
    code = (
        "import json, sys, maskadapter, maskadapter.service, maskadapter.__main__, maskadapter.cli.benchmark_run\n"
        "from maskadapter.engine import vocabulary, weights\n"
        "print(json.dumps({'package': maskadapter.__file__, 'sam2': str(weights.TINY_SAM2_CONFIG),\n"
        "    'clip': str(weights.TINY_CLIP_CONFIG), 'vocab': str(vocabulary.VOCABULARY_DIR),\n"
        "    'gradio': 'gradio' in sys.modules}))\n"
    )
    out = _run([sys.executable, "-c", code], site, tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    found = json.loads(out.stdout.strip().splitlines()[-1])
    package = site / "maskadapter"
    assert Path(found["package"]) == package / "__init__.py"
    assert Path(found["sam2"]) == package / "sam2_configs" / "sam2.1_hiera_tiny_random.yaml"
    assert Path(found["clip"]) == package / "clip_configs" / "tiny-random-convnext.json"
    assert Path(found["vocab"]) == package / "vocabularies"
    assert not found["gradio"], "the package imported gradio (only app.py needs it)"
    for path in (found["sam2"], found["clip"], package / "py.typed"):
        assert Path(path).is_file(), path
    assert len(list((package / "vocabularies").glob("*.txt"))) == 6


def test_console_script(site, tmp_path):
    script = site / "bin" / "maskadapter"
    assert script.is_file()
    # run by this interpreter whatever the shebang says
    out = _run([sys.executable, str(script), "--help"], site, tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "--tiny-random" in out.stdout and "--vocab" in out.stdout

    photo = tmp_path / "chelsea.png"
    with Image.open(ROOT / "examples" / "chelsea.png") as im:
        im.convert("RGB").resize((im.width // 2, im.height // 2)).save(photo)
    dest = tmp_path / "out"
    args = [str(photo), "--vocab", "cat, wall", "--tiny-random", "--out", str(dest), "--points-per-side", "8",
            "--short-side", "224", "--max-size", "320", "--device", "cpu",
            # random weights: SAM-2's quality filters would drop every mask
            "--pred-iou-thresh", "0", "--stability-score-thresh", "0"]  # fmt: skip
    out = _run([sys.executable, str(script), *args], site, tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    for suffix in ("_overlay.png", "_labels.png", "_segments.json"):
        assert (dest / f"chelsea{suffix}").is_file(), suffix
    segments = json.loads((dest / "chelsea_segments.json").read_text())["segments"]
    assert len(segments) >= 1
