"""The command line: inputs (files, directories, globs), outputs, plurals, exit codes, quiet logs."""

import contextlib
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from maskadapter.cli.common import EXIT_ERROR, EXIT_PARTIAL, expand_inputs, plural
from maskadapter.errors import InputError
from maskadapter.output.export import decode_rle

ROOT = Path(__file__).resolve().parent.parent


def _run(args, tmp_path, **env):
    """``python -m maskadapter ARGS`` with the cache in ``tmp_path``: its exit code,
    stdout and stderr, run in this process (``main`` as the entry point calls it,
    argparse's exits included; a process start costs seconds of imports, and README's
    example runs in a new one: tests/test_docs.py)."""
    full_env = {**os.environ, "MASKADAPTER_CACHE_DIR": str(tmp_path / "cache"), **env}
    from maskadapter.__main__ import main

    out, err, saved = io.StringIO(), io.StringIO(), dict(os.environ)
    os.environ.update(full_env)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(list(args))
            except SystemExit as exit_:
                code = exit_.code
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return SimpleNamespace(returncode=code, stdout=out.getvalue(), stderr=err.getvalue())


def test_cli_two_images_three_outputs_each(tmp_path):
    small = tmp_path / "small"
    small.mkdir()
    for name in ("chelsea.png", "coffee.png"):
        with Image.open(ROOT / "examples" / name) as im:
            im.convert("RGB").resize((im.width // 3, im.height // 3)).save(small / name)
    out = tmp_path / "out"
    result = _run(
        [
            str(small),  # a directory: its images, sorted
            "--vocab",
            "cat, cup | mug",
            "--predefined",
            "pascal_voc",
            "--out",
            str(out),
            "--tiny-random",  # no thresholds given: random weights open SAM-2's filters
            "--points-per-side",
            "4",
            "--short-side",
            "128",
            "--max-size",
            "256",
        ],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    # one warning about the random weights (what a new process prints besides: README's
    # example in tests/test_docs.py, run as written)
    warnings = [line for line in result.stderr.splitlines() if "random weights" in line]
    assert len(warnings) == 1 and "--pred-iou-thresh and --stability-score-thresh default to 0" in warnings[0]
    lines = result.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == [str(small / "chelsea.png"), str(small / "coffee.png")]
    for line in lines:
        count = int(re.search(r": (\d+) segments?", line).group(1))
        assert count >= 1 and f": {plural(count, 'segment')} ->" in line
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


def test_help_and_argument_errors_answer_without_loading_torch(tmp_path):
    """``maskadapter --help``, an empty vocabulary, an unknown ``--mode`` and a negative
    ``--score-threshold`` are answered before the engine (torch) is imported: in a fresh
    interpreter, torch is never loaded."""
    code = (
        "import contextlib, io, sys\n"
        "from maskadapter.__main__ import main\n"
        "for args in (['--help'], ['x.png', '--vocab', ' ', '--out', 'o'], ['x.png', '--mode', 'x', '--out', 'o'],\n"
        "             ['x.png', '--vocab', 'cat', '--score-threshold', '-1', '--out', 'o']):\n"
        "    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):\n"
        "        try:\n"
        "            code = main(args)\n"
        "        except SystemExit as exit_:\n"
        "            code = exit_.code\n"
        "    print(code)\n"
        "print('torch' in sys.modules)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["0", "2", "2", "2", "False"]
    assert not (tmp_path / "o").exists()


HEAVY = ("torch", "cv2", "sam2", "open_clip", "gradio")  # what --help must not load


def test_every_commands_help_and_argument_errors_answer_without_loading_torch(tmp_path):
    """``--help`` of batch, evaluate, benchmark and video, and argparse's errors (a missing
    clip, a bad choice, a bad number), exit 0 and 2 in a fresh interpreter with none of
    ``HEAVY`` loaded after each: the engines are imported once the arguments are read."""
    calls = [[name, "--help"] for name in ("batch", "evaluate", "benchmark", "video")]
    calls += [
        ["video", "--out", "o"],
        ["video", "x.mp4", "--out", "o", "--max-objects", "many"],
        ["evaluate", "--dataset", "nope", "--out", "o"],
        ["benchmark", "--width", "x"],
        ["batch", "x.png"],
    ]
    code = (
        "import contextlib, io, json, sys\n"
        "from maskadapter.__main__ import main\n"
        f"for args in {calls!r}:\n"
        "    out = io.StringIO()\n"
        "    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):\n"
        "        try:\n"
        "            code = main(args)\n"
        "        except SystemExit as exit_:\n"
        "            code = exit_.code\n"
        f"    loaded = [name for name in {HEAVY!r} if name in sys.modules]\n"
        "    print(json.dumps([args, code, loaded, out.getvalue()]))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    answers = [json.loads(line) for line in done.stdout.splitlines()]
    assert [args for args, *_ in answers] == calls
    for args, exit_code, loaded, printed in answers:
        assert (exit_code, loaded) == ((0, []) if args[1:] == ["--help"] else (2, [])), args
        assert args[1:] != ["--help"] or f"usage: maskadapter {args[0]}" in printed, args
    video_help = " ".join(answers[3][3].split())  # the tracker's defaults reach the help without torch
    assert "(default 20)" in video_help and "tracks per clip (default 16)" in video_help
    assert not (tmp_path / "o").exists()


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
    assert "Exit codes: 0: every image labelled; 2: bad arguments" in " ".join(help_text.stdout.split())
    assert "3: some images failed" in " ".join(help_text.stdout.split())
    missing = _run([str(tmp_path / "none.png"), "--vocab", "cat", "--out", str(tmp_path), "--tiny-random"], tmp_path)
    assert missing.returncode == EXIT_ERROR == 2 and "cannot read image" in missing.stderr
    nothing = _run([str(tmp_path / "*.jpg"), "--vocab", "cat", "--out", str(tmp_path), "--tiny-random"], tmp_path)
    assert nothing.returncode == 2 and "no image file matches" in nothing.stderr
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


def test_plural():
    assert [plural(n, "segment") for n in (0, 1, 2)] == ["0 segments", "1 segment", "2 segments"]


def test_inputs_files_directories_and_globs(tmp_path, monkeypatch):
    photos = tmp_path / "photos"
    (photos / "inner").mkdir(parents=True)
    for name in ("b.PNG", "a.jpg", "c.webp", "notes.txt", "inner/d.png"):
        (photos / name).write_bytes(b"x")
    monkeypatch.chdir(tmp_path)
    # a directory: its image files, sorted, not recursive; a text file named explicitly is taken as given
    assert expand_inputs(["photos", "photos/notes.txt"]) == [
        Path(f"photos/{n}") for n in ("a.jpg", "b.PNG", "c.webp", "notes.txt")
    ]
    # a glob (as quoted on the command line): image files that match, sorted; each path once
    assert expand_inputs(["photos/*", "photos/a.jpg"]) == [Path(f"photos/{n}") for n in ("a.jpg", "b.PNG", "c.webp")]
    assert expand_inputs(["photos/**/*.png"]) == [Path("photos/inner/d.png")]
    assert expand_inputs(["missing.png"]) == [Path("missing.png")]  # reported when read
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no images in directory empty"):
        expand_inputs(["empty"])
    with pytest.raises(InputError, match="no image file matches 'photos/\\*.gif'"):
        expand_inputs(["photos/*.gif"])
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "a.png").write_bytes(b"x")
    with pytest.raises(InputError, match="would write the same outputs"):
        expand_inputs(["photos/a.jpg", "other/a.png"])


def test_one_unreadable_image_among_two_exits_3(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    with Image.open(ROOT / "examples" / "chelsea.png") as im:
        im.convert("RGB").resize((im.width // 3, im.height // 3)).save(images / "chelsea.png")
    (images / "broken.png").write_bytes(b"not a picture")
    out = tmp_path / "out"
    common = ["--out", str(out), "--tiny-random", "--points-per-side", "2", "--short-side", "128", "--max-size", "256"]
    # given flags win over the random-weight defaults: nothing passes a predicted IoU of 1
    result = _run([str(images / "*.png"), "--vocab", "cat, dog", "--pred-iou-thresh", "1", *common], tmp_path)
    assert result.returncode == EXIT_PARTIAL == 3, result.stderr[-3000:]
    assert f"error: cannot read image {images / 'broken.png'}: not an image file" in result.stderr
    assert "1 image labelled, 1 failed" in result.stderr
    assert "--pred-iou-thresh" not in result.stderr and "--stability-score-thresh default to 0" in result.stderr
    assert result.stdout.strip() == f"{images / 'chelsea.png'}: 0 segments -> {out / 'chelsea'}_*.png/json"
    assert (out / "chelsea_segments.json").is_file() and not (out / "broken_segments.json").exists()
    assert "Traceback" not in result.stderr


def test_label_help_names_the_other_commands():
    from maskadapter.__main__ import COMMANDS
    from maskadapter.cli.label import build_parser

    help_text = " ".join(build_parser().format_help().split())
    for command in COMMANDS:
        assert f"maskadapter {command} --help" in help_text


def test_loading_messages_hear_the_model_builders(tiny_files, capsys):
    """The commands' model-loading printer is a progress callback the builders can call
    (each model's line on stderr); with --quiet it prints nothing."""
    from maskadapter.cli.common import loading_messages
    from maskadapter.engine.weights import build_models

    build_models(tiny_files, "cpu", progress=loading_messages(False))
    assert capsys.readouterr().err.splitlines() == ["loading SAM-2", "loading CLIP", "loading Mask-Adapter"]
    build_models(tiny_files, "cpu", progress=loading_messages(True))
    assert capsys.readouterr().err == ""
