"""What a Hugging Face Space reads: the README's front matter, and the GPU time the app
asks a ZeroGPU Space for, per call."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from maskadapter.ui import events

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

    monkeypatch.setattr(events, "spaces", FakeSpaces)

    def segment(image, vocabulary, points_per_side=32):
        return vocabulary

    def click(kind, vocabulary):
        return kind

    assert events.gpu(segment)(np.zeros((768, 1024, 3), np.uint8), "cat", points_per_side=32) == "cat"
    events.gpu(segment)(np.zeros((4000, 6000, 3), np.uint8), "cat", 64)
    events.gpu(segment)(np.zeros((1000, 1000, 3), np.uint8), "cat", 64)
    events.gpu(click)("positive", "cat")
    # seconds = int(min(120, max(15, 2 * (5 + 2 * megapixels + 3 * points / 1024)))), points = side**2:
    # 768 x 1024, 32: 2 * (5 + 2 * 0.786432 + 3 * 1024 / 1024) = 19.145728 -> 19
    # 4000 x 6000, 64: 2 * (5 + 2 * 24 + 3 * 4096 / 1024) = 130 -> capped at 120
    # 1000 x 1000, 64: 2 * (5 + 2 * 1 + 3 * 4096 / 1024) = 38 -> 38
    # a click (no image argument: 1 megapixel assumed, no grid): 2 * (5 + 2 * 1 + 0) = 14 -> raised to 15
    assert asked == [19, 120, 38, 15]
    monkeypatch.setattr(events, "spaces", None)
    assert events.gpu(segment) is segment  # nothing to do off a Space
