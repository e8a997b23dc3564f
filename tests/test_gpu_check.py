"""The GPU check's scripts (docs/deploy.md, GPU check): .ci/gpu reaches no network and says
in one line that CUDA is missing; .ci/gpu-wheels carries requirements.txt's versions and
never torch; the tested floors of pyproject.toml are the versions docs/deploy.md lists."""

from __future__ import annotations

import os
import re
import subprocess
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CI = ROOT / ".ci"
NETWORK = re.compile(r"\b(curl|wget|git\s+(fetch|clone|pull)|pip\s+(download|wheel)|hf\s+download|huggingface-cli)\b")


def _code(path: Path) -> list[str]:
    """The script's lines without comments (a heredoc's Python comments included)."""
    return [line.split("#", 1)[0] for line in path.read_text().splitlines() if line.split("#", 1)[0].strip()]


def _pins(text: str) -> dict[str, str]:
    return {name.lower().replace("_", "-"): version for name, version in re.findall(r"([\w.-]+)==([\w.]+)", text)}


@pytest.mark.parametrize("script", ["gpu", "gpu-site"])
def test_the_gpu_check_reaches_no_network(script):
    lines = _code(CI / script)
    assert not [line for line in lines if NETWORK.search(line)]
    installs = [line for line in lines if re.search(r"pip\"? install", line)]
    assert all("--no-index" in line and "--no-deps" in line for line in installs), installs


@pytest.mark.slow
def test_the_gpu_check_without_cuda_says_so_in_one_line(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is here")
    env = {**os.environ, "PY": __import__("sys").executable, "OUT": str(tmp_path / "out")}
    out = subprocess.run(["bash", str(CI / "gpu")], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    lines = (out.stdout + out.stderr).strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu: no CUDA"), lines
    assert not (tmp_path / "out").exists()  # nothing measured, nothing written


def test_the_gpu_wheels_are_the_pinned_versions_without_torch():
    wheels = _pins("\n".join(_code(CI / "gpu-wheels")))
    pinned = _pins((ROOT / "requirements.txt").read_text())
    assert {"sam2", "open-clip-torch", "hydra-core", "iopath", "pycocotools", "av"} <= set(wheels)
    assert {name: v for name, v in wheels.items() if name in pinned} == {n: pinned[n] for n in wheels if n in pinned}
    assert not {"torch", "torchvision", "gradio"} & set(wheels)
    assert "/gpu-wheels/" in (ROOT / ".gitignore").read_text().splitlines()


def test_the_floors_are_the_tested_versions():
    """A floor below requirements.txt's pin was run with the whole suite (.ci/oldest), and
    docs/deploy.md lists it."""
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    floors = dict(re.match(r"([\w-]+)>=([\w.]+)", dep).groups() for dep in deps)
    pinned = _pins((ROOT / "requirements.txt").read_text())
    deploy = (ROOT / "docs" / "deploy.md").read_text()
    below = {name: low for name, low in floors.items() if low != pinned[name.replace("_", "-").lower()]}
    assert set(below) == {"torch", "torchvision", "huggingface_hub"}
    for name, low in below.items():
        assert re.search(rf"\b{name} {re.escape(low)}(\.0)?\b", deploy), name
