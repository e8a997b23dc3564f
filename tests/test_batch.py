"""Batch labelling: recursive inputs and kept structure, failures recorded, resume,
COCO export, ``@list.txt`` inputs, the ``maskadapter batch`` dispatch and the engines."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from maskadapter.cli import batch, batch_jobs, common
from maskadapter.output.export import decode_rle

ROOT = Path(__file__).resolve().parent.parent


def _small(name: str, dest: Path, width: int) -> None:
    """An example photo resized to ``width`` pixels wide, saved at ``dest``."""
    with Image.open(ROOT / "examples" / name) as im:
        im = im.convert("RGB")
        im.resize((width, round(im.height * width / im.width))).save(dest)


@pytest.fixture()
def tree(tmp_path: Path) -> Path:
    """in/chelsea.png, in/sub/coffee.jpg, in/sub/deeper/cat2.png and in/broken.png (corrupt)."""
    root = tmp_path / "in"
    (root / "sub" / "deeper").mkdir(parents=True)
    _small("chelsea.png", root / "chelsea.png", 120)
    _small("coffee.png", root / "sub" / "coffee.jpg", 100)
    _small("chelsea.png", root / "sub" / "deeper" / "cat2.png", 140)
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    (root / "notes.txt").write_text("not an image name: ignored")
    return root


def _common(tmp_path: Path) -> list[str]:
    return [
        "--vocab",
        "cat, cup | mug, sky",
        "--tiny-random",
        "--device",
        "cpu",
        "--cache-dir",
        str(tmp_path / "cache"),
        "--points-per-side",
        "4",
        "--short-side",
        "224",
        "--max-size",
        "320",
        "--quiet",
    ]


class CountingLoads:
    """Wraps the ``load_image`` that batch's reads go through (``read_image_file`` in
    ``maskadapter.cli.common``) to count the images decoded."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.paths: list[Path] = []
        original = common.load_image

        def counted(source: object) -> np.ndarray:
            self.paths.append(Path(source))
            return original(source)

        monkeypatch.setattr(common, "load_image", counted)


@pytest.mark.slow
def test_batch_tree_failure_resume_and_coco(tree, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    coco_path = tmp_path / "results.json"
    loads = CountingLoads(monkeypatch)
    code = batch.main([str(tree), "--out", str(out), "--coco", str(coco_path), "--overlay", *_common(tmp_path)])
    err = capsys.readouterr().err
    assert code == common.EXIT_PARTIAL == 3, err[-3000:]
    assert "broken.png" in err and "Traceback" not in err
    assert len(loads.paths) == 4

    # the structure is kept, the corrupt file recorded with its reason, the others done
    done = {"chelsea", "sub/coffee", "sub/deeper/cat2"}
    for stem in done:
        for suffix in ("_labels.png", "_segments.json", "_overlay.png"):
            assert (out / f"{stem}{suffix}").is_file(), stem + suffix
    assert not list(out.rglob("*.tmp")) and not (out / "broken_labels.png").exists()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"] == {"images": 4, "labelled": 3, "skipped": 0, "failed": 1}
    assert [f["file"] for f in summary["failed"]] == ["broken.png"]
    reason = summary["failed"][0]["reason"]
    assert "cannot read image" in reason and "not an image file" in reason and "\n" not in reason
    assert {d["file"] for d in summary["done"]} == {"chelsea.png", "sub/coffee.jpg", "sub/deeper/cat2.png"}
    # each image's count is the number of segments in its JSON
    segment_counts = {
        d["file"]: len(json.loads((out / f"{d['file'].rsplit('.', 1)[0]}_segments.json").read_text())["segments"])
        for d in summary["done"]
    }
    assert {d["file"]: d["segments"] for d in summary["done"]} == segment_counts
    assert min(segment_counts.values()) >= 1
    assert summary["settings"]["labels"] == ["cat", "cup", "sky"]
    assert summary["settings"]["mode"] == "semantic"
    assert summary["settings"]["mask_settings"]["points_per_side"] == 4
    assert summary["settings"]["models"]["tiny_random"] is True
    assert isinstance(summary["images_per_second"], float)  # a figure, not a limit

    # COCO: loads with pycocotools; each annotation is its class in the label map
    from pycocotools.coco import COCO

    coco = COCO(str(coco_path))
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == ["cat", "cup", "sky"]
    images = coco.loadImgs(coco.getImgIds())
    assert {im["file_name"] for im in images} == {"chelsea.png", "sub/coffee.jpg", "sub/deeper/cat2.png"}
    total = 0
    for im in images:
        stem = im["file_name"].rsplit(".", 1)[0]
        labels = np.asarray(Image.open(out / f"{stem}_labels.png"))
        assert labels.shape == (im["height"], im["width"])
        anns = coco.loadAnns(coco.getAnnIds(imgIds=im["id"]))
        assert {a["category_id"] for a in anns} == set(np.unique(labels[labels > 0]).tolist())
        for ann in anns:
            assert isinstance(ann["segmentation"]["counts"], str) and ann["iscrowd"] == 0
            mask = coco.annToMask(ann).astype(bool)
            np.testing.assert_array_equal(mask, labels == ann["category_id"])
            assert ann["area"] == int(mask.sum())
            x, y, w, h = ann["bbox"]
            ys, xs = np.nonzero(mask)
            assert (x, y, x + w, y + h) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
            total += 1
    assert total >= 3

    # a rerun decodes only the failed image; finished outputs are left as they are
    before = (out / "chelsea_segments.json").stat().st_mtime_ns
    loads.paths.clear()
    code = batch.main([str(tree), "--out", str(out), "--coco", str(coco_path), "--overlay", *_common(tmp_path)])
    capsys.readouterr()
    assert code == 3 and [p.name for p in loads.paths] == ["broken.png"]
    assert (out / "chelsea_segments.json").stat().st_mtime_ns == before
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"] == {"images": 4, "labelled": 0, "skipped": 3, "failed": 1}
    # the skipped images are listed with the counts of their outputs
    assert {d["file"]: (d["skipped"], d["segments"]) for d in summary["done"]} == {
        file: (True, count) for file, count in segment_counts.items()
    }
    assert len(COCO(str(coco_path)).getAnnIds()) == total  # the COCO file covers skipped images too

    # other settings: every image is labelled again
    loads.paths.clear()
    (tree / "broken.png").unlink()
    changed = [a if a != "cat, cup | mug, sky" else "cat, sky" for a in _common(tmp_path)]
    assert batch.main([str(tree), "--out", str(out), *changed]) == 0
    assert len(loads.paths) == 3
    assert json.loads((out / "chelsea_segments.json").read_text())["labels"] == ["cat", "sky"]


@pytest.mark.slow
def test_batch_list_file_and_dispatch(tree, tmp_path, monkeypatch, capsys):
    from maskadapter.__main__ import main as cli_main

    listing = tmp_path / "list.txt"
    listing.write_text(f"# images to label\nin/chelsea.png\n\n{tree / 'sub' / 'coffee.jpg'}\n")
    out = tmp_path / "out"
    loads = CountingLoads(monkeypatch)
    code = cli_main(["batch", f"@{listing}", "--out", str(out), *_common(tmp_path)])
    assert code == 0, capsys.readouterr().err[-3000:]
    assert sorted(p.name for p in loads.paths) == ["chelsea.png", "coffee.jpg"]
    for stem in ("chelsea", "coffee"):  # files named directly: written at the top of --out
        assert (out / f"{stem}_labels.png").is_file() and not (out / f"{stem}_overlay.png").exists()
        data = json.loads((out / f"{stem}_segments.json").read_text())
        assert data["batch"]["fingerprint"] and len(data["segments"]) >= 1
        labels = np.asarray(Image.open(out / f"{stem}_labels.png"))
        for seg in data["segments"]:
            np.testing.assert_array_equal(decode_rle(seg["segmentation"]), labels == seg["class_id"] + 1)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"]["labelled"] == 2 and summary["failed"] == []


def test_batch_inputs_and_errors(tree, tmp_path, capsys):
    out = tmp_path / "out"
    jobs = batch_jobs.plan_jobs([str(tree)], out)
    assert [j.relative for j in jobs] == ["broken.png", "chelsea.png", "sub/coffee.jpg", "sub/deeper/cat2.png"]
    assert jobs[2].output("_labels.png") == out / "sub" / "coffee_labels.png"
    globbed = batch_jobs.plan_jobs([str(tree / "sub" / "**" / "*.png")], out)
    assert [j.relative for j in globbed] == ["deeper/cat2.png"]
    assert batch_jobs.plan_jobs([str(tree), str(tree / "chelsea.png")], out) == jobs  # each source once

    common = ["--vocab", "cat", "--out", str(out), "--tiny-random", "--cache-dir", str(tmp_path / "cache")]
    assert batch.main([str(tmp_path / "none" / "*.png"), *common]) == 2
    assert "no image file matches" in capsys.readouterr().err
    assert batch.main([f"@{tmp_path / 'missing.txt'}", *common]) == 2
    assert "cannot read input list" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert batch.main([str(empty), *common]) == 2
    assert "no images in directory" in capsys.readouterr().err
    assert not out.exists()  # nothing run, nothing written


def test_batch_help_loads_no_model_code():
    """``maskadapter batch --help`` in a fresh process: torch is never imported (it took
    seconds of imports before the help appeared)."""
    code = (
        "import sys\n"
        "from maskadapter.__main__ import main\n"
        "try:\n"
        "    main(['batch', '--help'])\n"
        "except SystemExit as done:\n"
        "    assert done.code == 0\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "False" and "usage: maskadapter batch" in out.stdout


def test_engines_have_one_name_each():
    """``--engine`` offers exactly ``ENGINES``' names, each one engine function."""
    from maskadapter.cli import batch_local, batch_ray

    assert {name: batch.engine(name) for name in batch.ENGINES} == {
        "local": batch_local.run_local,
        "ray": batch_ray.run_ray,
    }
    engine = next(action for action in batch.build_parser()._actions if action.dest == "engine")
    assert tuple(engine.choices) == tuple(batch.ENGINES)


@pytest.mark.parametrize("flag, value", [("--score-threshold", "1.5"), ("--granularity", "-0.1")])
def test_painting_values_out_of_range_are_refused_before_loading(tmp_path, capsys, monkeypatch, flag, value):
    from maskadapter.cli import batch, evaluate, label
    from maskadapter.engine.segmenter import Segmenter

    def never(*args, **kwargs):
        raise AssertionError("models loaded for a run that a bad argument ends")

    monkeypatch.setattr(Segmenter, "from_settings", never)
    photo = tmp_path / "a.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(photo)
    assert batch.main([str(photo), "--vocab", "cat", "--out", str(tmp_path / "out"), "--tiny-random", flag, value]) == 2
    assert evaluate.main(["--dataset", "ade20k", "--out", str(tmp_path / "eval"), "--tiny-random", flag, value]) == 2
    assert label.main([str(photo), "--vocab", "cat", "--out", str(tmp_path / "out"), "--tiny-random", flag, value]) == 2
    err = capsys.readouterr().err
    assert err.count("must be between 0 and 1") == 3 and f"got {float(value)}" in err, err
    assert not (tmp_path / "out").exists()
