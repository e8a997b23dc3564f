"""What a Hugging Face Space reads: the README's front matter, and the GPU time the app
asks a ZeroGPU Space for, per call."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

import app
from maskadapter.service import gpu_seconds

ROOT = Path(__file__).resolve().parent.parent


def test_front_matter_fits_a_zerogpu_space():
    text = (ROOT / "README.md").read_text()
    assert text.startswith("---\n")
    front = dict(line.split(": ", 1) for line in text.split("---\n")[1].strip().splitlines() if ": " in line)
    assert front["sdk"] == "gradio" and (ROOT / front["app_file"]).is_file()
    assert front["python_version"].strip('"') in ("3.10", "3.12")  # the versions ZeroGPU offers
    pins = dict(re.findall(r"^([\w-]+)==([\w.]+)", (ROOT / "requirements.txt").read_text(), re.MULTILINE))
    assert front["sdk_version"] == pins["gradio"]


def test_gpu_time_is_asked_per_call(monkeypatch):
    asked = []

    class FakeSpaces:  # the `spaces` package's decorator, recording the duration callable
        @staticmethod
        def GPU(duration):  # the package's name
            def decorate(fn):
                def wrapper(*args, **kwargs):
                    asked.append(duration(*args, **kwargs))
                    return fn(*args, **kwargs)

                return wrapper

            return decorate

    monkeypatch.setattr(app, "spaces", FakeSpaces)

    def segment(image, vocabulary, points_per_side=32):
        return vocabulary

    def click(kind, vocabulary):
        return kind

    assert app.gpu(segment)(np.zeros((768, 1024, 3), np.uint8), "cat", points_per_side=32) == "cat"
    app.gpu(segment)(np.zeros((4000, 6000, 3), np.uint8), "cat", 64)
    app.gpu(click)("positive", "cat")
    assert asked == [gpu_seconds((768, 1024), 32), 120, gpu_seconds(None)]
    assert 15 <= asked[0] < asked[1] and asked[2] == 15
    monkeypatch.setattr(app, "spaces", None)
    assert app.gpu(segment) is segment  # nothing to do off a Space
