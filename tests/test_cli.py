"""The command line: two images in one call, three outputs each."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from maskadapter.export import decode_rle

ROOT = Path(__file__).resolve().parent.parent


def _run(args, tmp_path, **env):
    full_env = {**os.environ, "MASKADAPTER_CACHE_DIR": str(tmp_path / "cache"), **env}
    return subprocess.run(
        [sys.executable, "-m", "maskadapter", *args],
        cwd=ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_cli_two_images_three_outputs_each(tmp_path):
    small = tmp_path / "small"
    small.mkdir()
    for name in ("chelsea.png", "coffee.png"):
        with Image.open(ROOT / "examples" / name) as im:
            im.convert("RGB").resize((im.width // 3, im.height // 3)).save(small / name)
    out = tmp_path / "out"
    result = _run(
        [
            str(small / "chelsea.png"),
            str(small / "coffee.png"),
            "--vocab",
            "cat, cup | mug",
            "--predefined",
            "pascal_voc",
            "--out",
            str(out),
            "--tiny-random",
            "--points-per-side",
            "4",
            "--pred-iou-thresh",
            "0",
            "--stability-score-thresh",
            "0",
            "--short-side",
            "128",
            "--max-size",
            "256",
        ],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "random weights" in result.stderr
    for stem, name in (("chelsea", "chelsea.png"), ("coffee", "coffee.png")):
        with Image.open(small / name) as im:
            w, h = im.size
        overlay = np.asarray(Image.open(out / f"{stem}_overlay.png"))
        labels = np.asarray(Image.open(out / f"{stem}_labels.png"))
        data = json.loads((out / f"{stem}_segments.json").read_text())
        assert overlay.shape[1] == w and overlay.shape[0] >= h and overlay.shape[2] == 3
        assert labels.shape == (h, w)
        assert data["image"] == {"width": w, "height": h, "file": name}
        # the typed "cat" is dropped for VOC's cat, which keeps its place in the whole VOC list
        assert data["labels"][:2] == ["cup", "aeroplane"] and len(data["labels"]) == 1 + 20
        assert data["labels"][1 + 7] == "cat"
        assert len(data["segments"]) >= 1
        for seg in data["segments"]:
            mask = decode_rle(seg["segmentation"])
            assert mask.shape == (h, w) and int(mask.sum()) == seg["area"]
            assert seg["label"] in data["labels"]
            # the label map shows this class somewhere inside the mask
            assert (labels[mask] == seg["class_id"] + 1).any()


def test_cli_help_and_errors(tmp_path):
    help_text = _run(["--help"], tmp_path)
    assert help_text.returncode == 0
    for flag in (
        "--vocab",
        "--predefined",
        "--out",
        "--mode",
        "--sam-checkpoint",
        "--clip-checkpoint",
        "--adapter-checkpoint",
        "--tiny-random",
        "--device",
        "--cache-dir",
        "MASKADAPTER_DEVICE",
    ):
        assert flag in help_text.stdout
    missing = _run([str(tmp_path / "none.png"), "--vocab", "cat", "--out", str(tmp_path), "--tiny-random"], tmp_path)
    assert missing.returncode == 2 and "cannot read image" in missing.stderr
    assert "Traceback" not in missing.stderr
    empty = _run(
        [str(ROOT / "examples" / "chelsea.png"), "--vocab", " , ", "--out", str(tmp_path), "--tiny-random"], tmp_path
    )
    assert empty.returncode == 2 and "vocabulary is empty" in empty.stderr


def test_cli_applies_exif_orientation_and_refuses_non_images(tmp_path, capsys):
    from maskadapter.__main__ import main

    stored = np.zeros((32, 64, 3), np.uint8)  # 64 wide, 32 high as stored
    stored[:, 32:] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # shown a quarter turn clockwise: 32 wide, 64 high
    photo = tmp_path / "turned.jpg"
    Image.fromarray(stored).save(photo, exif=exif)
    out = tmp_path / "out"
    common = ["--tiny-random", "--cache-dir", str(tmp_path / "cache"), "--device", "cpu"]
    small = ["--points-per-side", "4", "--pred-iou-thresh", "0", "--stability-score-thresh", "0"]
    code = main([str(photo), "--vocab", "cat", "--out", str(out), *common, *small, "--short-side", "64"])
    assert code == 0, capsys.readouterr().err[-2000:]
    with Image.open(out / "turned_labels.png") as labels:
        assert labels.size == (32, 64)
    assert json.loads((out / "turned_segments.json").read_text())["image"]["width"] == 32

    text = tmp_path / "notes.txt"
    text.write_text("not a picture")
    capsys.readouterr()
    assert main([str(text), "--vocab", "cat", "--out", str(out), *common]) == 2
    err = capsys.readouterr().err
    assert f"cannot read image {text}: not an image file (could not read 'notes.txt': unknown format" in err
