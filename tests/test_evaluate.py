"""The evaluation command on small datasets written in the benchmark layouts: both mask
sources end to end with tiny random models, metrics recomputed here from the written
predictions, resume, the other layouts, and bad datasets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from maskadapter.__main__ import main as cli_main
from maskadapter.cli import evaluate, evaluate_options, evaluate_predict, evaluate_run
from maskadapter.cli.datasets import DatasetError, find_samples, layout, read_labels, scan

ROOT = Path(__file__).resolve().parent.parent
SIZES = [(96, 72), (120, 90), (80, 64)]  # (width, height) of the images


def _photo(width: int, height: int) -> Image.Image:
    with Image.open(ROOT / "examples" / "chelsea.png") as im:
        return im.convert("RGB").resize((width, height))


def _blocks(height: int, width: int, classes: tuple[int, int, int, int, int], ignore: int, dtype) -> np.ndarray:
    """Ground truth of five blocks separated by one-pixel ignore lines, so that relabelling
    a block never merges it with another: top-left, top-right, bottom left / middle /
    right thirds get ``classes``; the bottom-left and bottom-right blocks share a class
    in the tests, two regions of one class. Two ignore columns on the left edge."""
    gt = np.full((height, width), ignore, dtype=dtype)
    h2, w2, w3 = height // 2, width // 2, width // 3
    gt[:h2, :w2] = classes[0]
    gt[:h2, w2 + 1 :] = classes[1]
    gt[h2 + 1 :, :w3] = classes[2]
    gt[h2 + 1 :, w3 + 1 : 2 * w3] = classes[3]
    gt[h2 + 1 :, 2 * w3 + 1 :] = classes[4]
    gt[:, :2] = ignore
    return gt


def _write(images: Path, labels: Path, stem: str, photo: Image.Image, gt: np.ndarray, ext: str) -> None:
    images.mkdir(parents=True, exist_ok=True)
    labels.mkdir(parents=True, exist_ok=True)
    photo.save(images / f"{stem}.jpg", quality=90)
    Image.fromarray(gt).save(labels / f"{stem}{ext}")


def write_ade(root: Path, classes=(3, 149, 12, 0, 12)) -> list[Path]:
    """Three images in the ADE20K-150 layout; returns the label files."""
    base = root / "ADEChallengeData2016"
    paths = []
    for i, (w, h) in enumerate(SIZES):
        stem = f"ADE_val_{i + 1:08d}"
        gt = _blocks(h, w, classes, 255, np.uint8)
        _write(base / "images/validation", base / "annotations_detectron2/validation", stem, _photo(w, h), gt, ".png")
        paths.append(base / "annotations_detectron2/validation" / f"{stem}.png")
    return paths


def _args(root: Path, out: Path, tmp_path: Path, *extra: str) -> list[str]:
    # one text-embedding cache for the session's tests (tmp_path's parent: this run's and
    # this worker's base): each benchmark's class names are encoded once, not per test
    return [
        "--root", str(root), "--out", str(out), "--tiny-random", "--device", "cpu",
        "--cache-dir", str(tmp_path.parent / "text-cache"), "--points-per-side", "4", "--short-side", "224",
        "--max-size", "320", "--quiet", *extra,
    ]  # fmt: skip


def _recompute(out: Path, label_files: list[Path], num_classes: int, ignore: int) -> dict:
    """detectron2's mIoU, fwIoU, pACC and mACC in percent, straight from the prediction
    and label files, pixel by pixel: a pixel whose ground truth is ignore counts nowhere,
    an unlabelled prediction (the ignore value in the PNG: detectron2's void) counts
    nowhere either. Also the number of counted pixels left unlabelled, and the strict
    pACC (unlabelled pixels counted as wrong)."""
    tp = np.zeros(num_classes)
    gt_px = np.zeros(num_classes)  # ground-truth pixels with a label predicted
    pred_px = np.zeros(num_classes)
    counted = unlabelled = 0
    for label_file in label_files:
        gt = np.array(Image.open(label_file)).astype(np.int64)
        pred = np.array(Image.open(out / "predictions" / (label_file.stem + ".png"))).astype(np.int64)
        assert pred.shape == gt.shape
        valid = gt != ignore
        labelled = valid & (pred != ignore)
        for c in range(num_classes):
            tp[c] += np.sum((pred == c) & (gt == c) & valid)
            gt_px[c] += np.sum((gt == c) & labelled)
            pred_px[c] += np.sum((pred == c) & valid)
        counted += np.sum(valid)
        unlabelled += np.sum(valid & (pred == ignore))
    union = gt_px + pred_px - tp
    in_gt = gt_px > 0
    iou = tp[in_gt] / union[in_gt]
    return {
        "mIoU": 100 * iou.mean(),
        "fwIoU": 100 * np.sum(iou * gt_px[in_gt]) / gt_px.sum(),
        "pACC": 100 * tp.sum() / gt_px.sum(),
        "mACC": 100 * np.mean(tp[in_gt] / gt_px[in_gt]),
        "strict_pACC": 100 * tp.sum() / counted,
        "unlabelled": unlabelled,
    }


def _metrics(out: Path) -> dict:
    return json.loads((out / "metrics.json").read_text())


def _majority(out: Path, label_file: Path, where: tuple[slice, slice]) -> int:
    """The class predicted most often in ``where`` (255 when nothing there is labelled)."""
    pred = np.array(Image.open(out / "predictions" / (label_file.stem + ".png")))[where]
    values, counts = np.unique(pred[pred != 255], return_counts=True)
    return int(values[np.argmax(counts)]) if len(values) else 255


@pytest.mark.parametrize("masks", ["sam2", "ground-truth"])
def test_ade20k_end_to_end_metrics_match_a_recomputation(tmp_path, masks):
    root, out = tmp_path / "datasets", tmp_path / "out"
    labels = write_ade(root)
    args = ["--dataset", "ade20k", "--masks", masks, *_args(root, out, tmp_path)]
    assert evaluate.main(args) == 0

    # give each image's top-left block the class predicted there, so that some pixels are
    # right (predictions depend on the image and the block shapes only, never on ids)
    for label_file in labels:
        gt = np.array(Image.open(label_file))
        h2, w2 = gt.shape[0] // 2, gt.shape[1] // 2
        predicted = _majority(out, label_file, (slice(0, h2), slice(2, w2)))
        if predicted != 255:
            gt[:h2, 2:w2] = predicted
        Image.fromarray(gt).save(label_file)
    assert evaluate.main([*args, "--overwrite"]) == 0

    metrics = _metrics(out)
    expected = _recompute(out, labels, 150, 255)
    assert metrics["pACC"] > 0  # some pixels are right: the comparison below means something
    for name in ("mIoU", "fwIoU", "pACC", "mACC", "strict_pACC"):
        assert metrics[name] == pytest.approx(expected[name], abs=1e-9), name
    assert metrics["unlabelled_pixels"] == expected["unlabelled"]
    assert metrics["compare_with_paper"] == "mIoU"
    if masks == "sam2":  # unlabelled pixels occur (and are left out of the headline above)
        assert expected["unlabelled"] > 0 and metrics["strict_pACC"] < metrics["pACC"]
    assert metrics["images"] == 3 and metrics["images_timed"] == 3 and isinstance(metrics["seconds_per_image"], float)
    assert metrics["weights"]["real"] is False and "meaningless" in metrics["weights"]["note"]
    assert metrics["settings"]["masks"] == masks and metrics["settings"]["models"]["short_side"] == 224
    assert set(metrics["IoU"]) >= {"wall", "person", "flag"} and len(metrics["per_class"]) == 150
    for label_file in labels:
        gt = np.array(Image.open(label_file))
        pred = np.array(Image.open(out / "predictions" / (label_file.stem + ".png")))
        assert pred.dtype == np.uint8
        if masks == "ground-truth":  # one class per region; ignore pixels stay unlabelled
            assert np.all(pred[gt == 255] == 255)
            for c in np.unique(gt[gt != 255]):
                assert len(np.unique(pred[gt == c])) == 1 or c == 12  # class 12: two regions


def test_clip_input_size_defaults_to_the_published_evaluation(monkeypatch):
    for name in ("INPUT_SIZE", "SHORT_SIDE", "MAX_SIZE"):
        monkeypatch.delenv(f"MASKADAPTER_{name}", raising=False)
    parse = evaluate.build_parser().parse_args
    base = ["--dataset", "ade20k", "--out", "o"]
    settings = evaluate._settings(parse(base))
    assert (settings.input_size, settings.short_side, settings.max_size) == ("eval896", 896, 896)
    settings = evaluate._settings(parse([*base, "--input-size", "detectron2"]))
    assert (settings.short_side, settings.max_size) == (800, 1333)
    assert evaluate._settings(parse([*base, "--short-side", "512"])).short_side == 512
    monkeypatch.setenv("MASKADAPTER_INPUT_SIZE", "detectron2")
    assert evaluate._settings(parse(base)).short_side == 800


def test_ground_truth_regions_and_classes(tmp_path):
    """Regions: the two blocks of one class are two masks; classes: one mask per class."""
    gt = _blocks(30, 45, (5, 7, 9, 11, 9), 255, np.uint8).astype(np.int32)
    gt[gt == 255] = -1
    ids, count = evaluate_predict.ground_truth_segments(gt, "regions")
    assert count == 5
    assert np.all(ids[gt < 0] == -1)
    for c in (5, 7, 11):
        assert len(np.unique(ids[gt == c])) == 1
    assert len(np.unique(ids[gt == 9])) == 2
    ids, count = evaluate_predict.ground_truth_segments(gt, "classes")
    assert count == 4 and len(np.unique(ids[gt == 9])) == 1
    with pytest.raises(ValueError, match="masks must be one of sam2, ground-truth"):
        evaluate_options.EvalOptions(masks="gt")
    diagonal = np.full((4, 4), -1, np.int32)
    diagonal[0, 0] = diagonal[1, 1] = 3  # corners touching: one region with 8-connectivity
    assert evaluate_predict.ground_truth_segments(diagonal, "regions")[1] == 1


def test_rerun_resumes_from_saved_predictions(tmp_path, monkeypatch):
    root, out = tmp_path / "datasets", tmp_path / "out"
    write_ade(root)
    args = ["--dataset", "ade20k", "--masks", "ground-truth", *_args(root, out, tmp_path)]
    calls = []
    predict = evaluate_run.predict
    monkeypatch.setattr(evaluate_run, "predict", lambda *a, **k: calls.append(1) or predict(*a, **k))

    assert evaluate.main([*args, "--limit", "2"]) == 0
    assert len(calls) == 2 and _metrics(out)["images"] == 2
    assert evaluate.main(args) == 0  # the third image only
    assert len(calls) == 3
    first = _metrics(out)
    assert first["images"] == 3 and first["images_timed"] == 3
    assert evaluate.main(args) == 0  # everything read back
    assert len(calls) == 3
    again = _metrics(out)
    assert again["mIoU"] == first["mIoU"] and again["seconds_per_image"] == first["seconds_per_image"]

    # an interrupted write leaves no prediction behind (only a temporary file): that
    # image is redone; so is a saved prediction that cannot be used
    (out / "predictions" / "ADE_val_00000002.png").rename(out / "predictions" / ".ADE_val_00000002.png.99.tmp")
    (out / "predictions" / "ADE_val_00000003.png").write_bytes(b"damaged")
    assert evaluate.main(args) == 0
    assert len(calls) == 5 and _metrics(out)["mIoU"] == first["mIoU"]
    assert (_metrics(out)["predicted"], _metrics(out)["read_back"]) == (2, 1)
    assert not list((out / "predictions").glob(".*.tmp"))

    # a setting that changes no prediction (points per batch) resumes too
    assert evaluate.main([*args, "--points-per-batch", "16"]) == 0
    assert len(calls) == 5

    # other settings: refused, then redone with --overwrite
    other = ["--dataset", "ade20k", "--masks", "sam2", *_args(root, out, tmp_path)]
    assert evaluate.main(other) == 2
    assert evaluate.main([*other, "--overwrite"]) == 0
    assert len(calls) == 8 and _metrics(out)["settings"]["masks"] == "sam2"

    # predictions without a readable run.json: their settings are unknown
    (out / "run.json").write_text("{not json")
    assert evaluate.main(other) == 2


def test_sessions_are_dropped_after_each_image(segmenter, tmp_path):
    """An evaluation sees each image once: the store keeps none of them."""
    root, out = tmp_path / "datasets", tmp_path / "out"
    write_ade(root)
    data = layout("ade20k")
    (out / "predictions").mkdir(parents=True)
    vocabulary = segmenter.vocabulary("", [data.key])
    options = evaluate_options.EvalOptions(masks="ground-truth")
    run = evaluate_run.evaluate(segmenter, data, vocabulary, find_samples(data, root), out, options, {})
    assert not run.failed and len(run.seconds) == 3 and run.matrix.counts.sum() > 0
    assert (run.predicted, run.read_back) == (3, 0)
    assert len(segmenter.store) == 0 and segmenter.stats["clip_image_encodings"] == 3


def test_refusal_names_the_changed_settings(tmp_path, capsys):
    root, out = tmp_path / "datasets", tmp_path / "out"
    write_ade(root)
    common = ["--dataset", "ade20k", "--masks", "ground-truth", "--limit", "1", *_args(root, out, tmp_path)]
    assert evaluate.main(common) == 0
    capsys.readouterr()
    assert evaluate.main([*common, "--gt-segments", "classes"]) == 2
    err = capsys.readouterr().err
    assert "other settings (changed: gt_segments)" in err and "--overwrite" in err
    assert evaluate.main([*common, "--short-side", "256"]) == 2
    assert "(changed: models.short_side)" in capsys.readouterr().err


# the other layouts: (dataset, images folder, labels folder, label extension, ignore, dtype, classes)
OTHER_LAYOUTS = [
    ("ade20k_847", "ADE20K_2021_17_01/images_detectron2/validation",
     "ADE20K_2021_17_01/annotations_detectron2/validation", ".tif", 65535, np.uint16, 847),
    ("pascal_context", "pascal_ctx_d2/images/validation", "pascal_ctx_d2/annotations_ctx59/validation",
     ".png", 255, np.uint8, 59),
    ("pascal_context_459", "pascal_ctx_d2/images/validation", "pascal_ctx_d2/annotations_ctx459/validation",
     ".tif", 65535, np.uint16, 459),
    ("pascal_voc", "pascal_voc_d2/images/validation", "pascal_voc_d2/annotations_pascal20/validation",
     ".png", 255, np.uint8, 20),
    ("coco", "coco/val2017", "coco/panoptic_semseg_val2017", ".png", 255, np.uint8, 133),
]  # fmt: skip


@pytest.mark.parametrize(("name", "images", "labels", "ext", "ignore", "dtype", "k"), OTHER_LAYOUTS)
def test_other_layouts_are_read(tmp_path, name, images, labels, ext, ignore, dtype, k):
    root = tmp_path / "datasets"
    classes = (0, k - 1, k // 2, 1, k // 2)
    stems = ["2008_000002", "2008_000123"]
    for stem, (w, h) in zip(stems, SIZES, strict=False):
        _write(root / images, root / labels, stem, _photo(w, h), _blocks(h, w, classes, ignore, dtype), ext)
    _photo(50, 40).save(root / images / "no_labels.jpg")  # an image without labels is left out
    data = layout(name)
    samples = find_samples(data, root)
    assert [s.stem for s in samples] == stems
    for sample, (w, h) in zip(samples, SIZES, strict=False):
        gt = read_labels(sample.labels, data)
        expected = _blocks(h, w, classes, ignore, dtype).astype(np.int64)
        assert gt.shape == (h, w)
        assert np.array_equal(gt, np.where(expected == ignore, -1, expected))
    assert len(find_samples(data, root, limit=1)) == 1


def test_sixteen_bit_benchmark_end_to_end(tmp_path):
    """Pascal Context 459: 16-bit TIFF labels in, 16-bit PNG predictions out (65535 unlabelled)."""
    root, out = tmp_path / "datasets", tmp_path / "out"
    base = root / "pascal_ctx_d2"
    gt = _blocks(72, 96, (0, 458, 200, 1, 200), 65535, np.uint16)
    _write(
        base / "images/validation", base / "annotations_ctx459/validation", "2008_000002", _photo(96, 72), gt, ".tif"
    )
    args = ["--dataset", "pascal_context_459", "--masks", "ground-truth", *_args(root, out, tmp_path)]
    assert cli_main(["evaluate", *args]) == 0  # also through the maskadapter CLI
    pred = np.array(Image.open(out / "predictions" / "2008_000002.png"))
    assert pred.dtype == np.uint16 and pred.shape == gt.shape
    assert np.all(pred[gt == 65535] == 65535) and np.all(pred[gt != 65535] < 459)
    expected = _recompute(out, [base / "annotations_ctx459/validation/2008_000002.tif"], 459, 65535)
    assert _metrics(out)["mIoU"] == pytest.approx(expected["mIoU"], abs=1e-4)
    assert _metrics(out)["pACC"] == pytest.approx(expected["pACC"], abs=1e-4)


def test_labels_of_another_format_are_named(tmp_path):
    root = tmp_path / "datasets"
    base = root / "pascal_ctx_d2"
    gt = _blocks(40, 50, (0, 58, 5, 6, 5), 255, np.uint8)
    _write(base / "images/validation", base / "annotations_ctx459/validation", "a", _photo(50, 40), gt, ".png")
    with pytest.raises(DatasetError, match=r"\(\*\.tif\) \(found \*\.png files there\)"):
        find_samples(layout("pascal_context_459"), root)


def test_ade20k_847_is_found_where_fcclip_script_writes_it(tmp_path):
    root = tmp_path / "datasets"
    base = root / "ade" / "ADE20K_2021_17_01"
    gt = _blocks(40, 50, (0, 846, 5, 6, 5), 65535, np.uint16)
    _write(
        base / "images_detectron2/validation",
        base / "annotations_detectron2/validation",
        "a",
        _photo(50, 40),
        gt,
        ".tif",
    )
    assert [s.stem for s in find_samples(layout("ade20k_847"), root)] == ["a"]


def test_bad_datasets_get_clear_messages(tmp_path, capsys):
    root, out = tmp_path / "datasets", tmp_path / "out"
    with pytest.raises(DatasetError, match=r"no folder .*ADEChallengeData2016/images/validation.*prepare_ade20k"):
        find_samples(layout("ade20k"), root)
    assert evaluate.main(["--dataset", "ade20k", *_args(root, out, tmp_path)]) == 2
    assert "ADE20K-150: no folder" in capsys.readouterr().err

    labels = write_ade(root)
    raw = np.array(Image.open(labels[1]))
    raw[5, 5] = 150  # raw ADE annotations count 1..150: 150 is no class of the prepared labels
    Image.fromarray(raw).save(labels[1])
    message = "has value 150, but ADE20K-150 labels are 0-149 and 255"
    with pytest.raises(DatasetError, match=message):
        read_labels(labels[1], layout("ade20k"))
    # broken ground truth stops the run (the first image's prediction is kept for a rerun)
    assert evaluate.main(["--dataset", "ade20k", "--masks", "ground-truth", *_args(root, out, tmp_path)]) == 2
    assert message in capsys.readouterr().err
    assert (out / "predictions" / "ADE_val_00000001.png").is_file() and not (out / "metrics.json").exists()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(labels[1])
    with pytest.raises(DatasetError, match="one integer channel"):
        read_labels(labels[1], layout("ade20k"))

    # bad images fail alone: the others are evaluated, the failures listed, exit code 3
    second = root / "second"
    labels = write_ade(second)
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(labels[2])  # not the image's size
    (second / "ADEChallengeData2016/images/validation/ADE_val_00000002.jpg").write_bytes(b"not a jpeg")
    args = ["--dataset", "ade20k", "--masks", "ground-truth", *_args(second, tmp_path / "out2", tmp_path)]
    assert evaluate.main(args) == 3
    metrics = _metrics(tmp_path / "out2")
    assert metrics["images"] == 1
    reasons = {f["stem"]: f["reason"] for f in metrics["failed"]}
    assert "not an image file" in reasons["ADE_val_00000002"]
    assert "80x64 but its labels are 10x10" in reasons["ADE_val_00000003"]
    assert evaluate.main([*args[:-1], "--limit", "0"]) == 2
    with pytest.raises(SystemExit):
        evaluate.main(["--dataset", "cityscapes", *_args(second, out, tmp_path)])

    # no image evaluated: exit code 2
    for name in ("ADE_val_00000001", "ADE_val_00000003"):
        (second / f"ADEChallengeData2016/images/validation/{name}.jpg").write_bytes(b"")
    capsys.readouterr()
    assert evaluate.main([*args, "--overwrite"]) == 2
    assert _metrics(tmp_path / "out2")["images"] == 0
    assert "error: no image could be evaluated" in capsys.readouterr().err

    # two images of one name, and images or labels without a partner
    third = root / "third"
    write_ade(third)
    images = third / "ADEChallengeData2016/images/validation"
    (images / "extra.jpg").write_bytes((images / "ADE_val_00000001.jpg").read_bytes())
    (third / "ADEChallengeData2016/annotations_detectron2/validation/lonely.png").write_bytes(labels[0].read_bytes())
    split = scan(layout("ade20k"), third)
    assert split.images_without_labels == ["extra"] and split.labels_without_images == ["lonely"]
    assert (
        evaluate.main(["--dataset", "ade20k", "--masks", "ground-truth", *_args(third, tmp_path / "o3", tmp_path)]) == 0
    )
    metrics = _metrics(tmp_path / "o3")
    assert (metrics["images_without_labels"], metrics["labels_without_images"], metrics["images_found"]) == (1, 1, 3)
    assert any("has 2000 validation images, 3 found here" in note for note in metrics["notes"])
    assert "1 image without a label image, left out: extra" in metrics["notes"]
    for flags, note in (
        (
            ["--masks", "ground-truth", "--granularity", "0.5", "--points-per-batch", "8"],
            "--granularity, --points-per-",
        ),
        (["--masks", "sam2", "--gt-segments", "classes"], "--gt-segments: for --masks ground-truth only"),
    ):
        capsys.readouterr()
        assert (
            evaluate.main(
                ["--dataset", "ade20k", *flags, "--limit", "1", *_args(third, tmp_path / "o4", tmp_path), "--overwrite"]
            )
            == 0
        )
        assert f"note: {note}" in capsys.readouterr().err
    (images / "ADE_val_00000001.JPG").write_bytes((images / "ADE_val_00000001.jpg").read_bytes())
    with pytest.raises(DatasetError, match="ADE_val_00000001.JPG and ADE_val_00000001.jpg share a name"):
        scan(layout("ade20k"), third)
