"""The README's command-line and Python examples run as written, offline.

A block is found by the HTML comment on the line before its fence (``<!-- test: cli -->``,
``<!-- test: python -->``; GitHub and the Space page do not show it). Each runs as a
newcomer would run it from a clone: in a scratch directory that holds a link to the
repository's ``examples/`` (so the README's relative paths work and what the examples
write, ``out/`` and ``overlay.png``, lands there, never in the repository), with
``python`` on the PATH being this interpreter, the package importable from the
repository, and the text-embedding cache in the scratch directory.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"


def readme_block(name: str) -> tuple[str, str]:
    """(language, code) of the fenced block right after ``<!-- test: name -->``."""
    pattern = rf"^<!-- test: {re.escape(name)} -->\n```(\w+)\n(.*?)^```$"
    found = re.findall(pattern, README.read_text(encoding="utf-8"), flags=re.MULTILINE | re.DOTALL)
    assert len(found) == 1, f"README.md needs exactly one block marked <!-- test: {name} -->, found {len(found)}"
    return found[0]


@pytest.fixture()
def clone(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A scratch working directory like a clone's root, and the environment to run in."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "examples").symlink_to(ROOT / "examples", target_is_directory=True)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    python = bin_dir / "python"  # the README says `python`: this interpreter (a venv's stays one)
    python.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    python.chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        "MASKADAPTER_CACHE_DIR": str(tmp_path / "cache"),
        "HF_HUB_OFFLINE": "1",  # offline as promised: nothing may be downloaded
    }
    return work, env


def test_readme_cli_example(clone):
    work, env = clone
    language, code = readme_block("cli")
    assert language == "bash" and "--tiny-random" in code
    done = subprocess.run(
        ["bash", "-e", "-c", code], cwd=work, env=env, capture_output=True, text=True, timeout=600, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    images = re.findall(r"(examples/\S+)", code)
    assert images, "the CLI example names no example image"
    for image in images:
        assert (ROOT / image).is_file(), f"the README names {image}, which does not exist"
        segments = json.loads((work / "out" / f"{Path(image).stem}_segments.json").read_text())
        assert len(segments["segments"]) >= 1
        assert (work / "out" / f"{Path(image).stem}_overlay.png").is_file()
    assert len(done.stdout.splitlines()) == len(images)


def test_readme_python_example(clone):
    work, env = clone
    language, code = readme_block("python")
    assert language == "python" and "Settings(tiny_random=True)" in code
    done = subprocess.run(
        [sys.executable, "-"], input=code, cwd=work, env=env, capture_output=True, text=True, timeout=600, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert (work / "overlay.png").is_file()
    assert done.stdout.strip().startswith("[('")  # at least one (label, score)
