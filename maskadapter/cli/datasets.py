"""The benchmark datasets in the detectron2-prepared layouts (FC-CLIP / Mask-Adapter).

Each benchmark is a folder of validation images and a folder of label images with the
same file stems, under a root (``--root``, else ``$DETECTRON2_DATASETS``, else
``./datasets``). Label images hold benchmark class ids, 0 .. K-1, in the order of the
predefined vocabulary of the same name, and one ignore value:

==================  ======================================================  =========================
dataset             images / labels (under the root)                        labels
==================  ======================================================  =========================
ade20k              ADEChallengeData2016/images/validation/*.jpg             PNG uint8, 0-149, 255
                    ADEChallengeData2016/annotations_detectron2/validation/
ade20k_847          ADE20K_2021_17_01/images_detectron2/validation/*.jpg     TIFF uint16, 0-846, 65535
                    ADE20K_2021_17_01/annotations_detectron2/validation/
pascal_context      pascal_ctx_d2/images/validation/*.jpg                    PNG uint8, 0-58, 255
                    pascal_ctx_d2/annotations_ctx59/validation/
pascal_context_459  pascal_ctx_d2/images/validation/*.jpg                    TIFF uint16, 0-458, 65535
                    pascal_ctx_d2/annotations_ctx459/validation/
pascal_voc          pascal_voc_d2/images/validation/*.jpg                    PNG uint8, 0-19, 255
                    pascal_voc_d2/annotations_pascal20/validation/
coco                coco/val2017/*.jpg                                       PNG uint8, 0-132, 255
                    coco/panoptic_semseg_val2017/
==================  ======================================================  =========================

(FC-CLIP's ``prepare_ade20k_full_sem_seg.py`` writes ADE20K-847 under
``ade/ADE20K_2021_17_01``; that place is found too.)

Predictions are label images too: ``STEM.png`` in benchmark ids, uint8 with 255 for an
unlabelled pixel when the benchmark has fewer than 255 classes, else 16-bit with 65535.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from maskadapter.errors import InputError

ROOT_ENV = "DETECTRON2_DATASETS"
PREPARE = "the FC-CLIP / Mask-Adapter dataset instructions (datasets/README.md and datasets/prepare_*.py there)"


class DatasetError(InputError):
    """A benchmark dataset is missing, incomplete or not in the expected layout."""


@dataclass(frozen=True)
class Layout:
    """Where one benchmark's validation split lies under the root, and how its labels read.

    ``folders``: the benchmark's top folder and the places it may be (relative to the
    root, first found wins); ``images`` and ``labels``: folders under it.
    """

    key: str  # also the predefined vocabulary's key
    title: str
    num_classes: int
    folders: tuple[str, ...]
    images: str
    labels: str
    label_ext: str
    ignore: int
    prepare: str  # the preparation script that makes the labels
    val_images: int  # images in the full validation split

    @property
    def label_dtype(self) -> type:
        return np.uint8 if self.ignore == 255 else np.uint16


LAYOUTS: dict[str, Layout] = {
    layout.key: layout
    for layout in (
        Layout(
            "ade20k", "ADE20K-150", 150, ("ADEChallengeData2016",),
            "images/validation", "annotations_detectron2/validation", ".png", 255, "prepare_ade20k_sem_seg.py", 2000,
        ),
        Layout(
            "ade20k_847", "ADE20K-847", 847, ("ADE20K_2021_17_01", "ade/ADE20K_2021_17_01"),
            "images_detectron2/validation", "annotations_detectron2/validation", ".tif", 65535,
            "prepare_ade20k_full_sem_seg.py", 2000,
        ),
        Layout(
            "pascal_context", "Pascal Context 59", 59, ("pascal_ctx_d2",),
            "images/validation", "annotations_ctx59/validation", ".png", 255, "prepare_pascal_ctx_sem_seg.py", 5105,
        ),
        Layout(
            "pascal_context_459", "Pascal Context 459", 459, ("pascal_ctx_d2",),
            "images/validation", "annotations_ctx459/validation", ".tif", 65535,
            "prepare_pascal_ctx_full_sem_seg.py", 5105,
        ),
        Layout(
            "pascal_voc", "Pascal VOC 20", 20, ("pascal_voc_d2",),
            "images/validation", "annotations_pascal20/validation", ".png", 255, "prepare_pascal_voc_sem_seg.py", 1449,
        ),
        Layout(
            "coco", "COCO panoptic 133 (semantic)", 133, ("coco",),
            "val2017", "panoptic_semseg_val2017", ".png", 255, "prepare_coco_semantic_annos_from_panoptic_annos.py",
            5000,
        ),
    )
}  # fmt: skip
IMAGE_EXT = ".jpg"


@dataclass(frozen=True)
class Sample:
    """One validation image and its label image."""

    stem: str
    image: Path
    labels: Path


def dataset_root(root: str | os.PathLike | None = None) -> Path:
    """``root``, else ``$DETECTRON2_DATASETS``, else ``./datasets``."""
    if root is not None:
        return Path(root).expanduser()
    return Path(os.environ.get(ROOT_ENV) or "datasets").expanduser()


def layout(name: str) -> Layout:
    """The layout of a dataset key (``ade20k``, ``ade20k_847``, ...; ``-`` works as ``_``)."""
    key = name.strip().lower().replace("-", "_")
    if key not in LAYOUTS:
        raise DatasetError(f"unknown dataset {name!r}; choose from {', '.join(LAYOUTS)}")
    return LAYOUTS[key]


def _where(data: Layout, root: Path) -> Path:
    """The benchmark's folder under ``root``: the first of ``data.folders`` that exists."""
    for folder in data.folders:
        if (root / folder).is_dir():
            return root / folder
    return root / data.folders[0]


@dataclass(frozen=True)
class Split:
    """What ``scan`` found: the (image, labels) pairs in stem order, and the stems of the
    images without labels and of the labels without images (left out)."""

    samples: list[Sample]
    images_without_labels: list[str]
    labels_without_images: list[str]


def scan(data: Layout, root: str | os.PathLike) -> Split:
    """The dataset's validation images paired with their label images by file stem.

    Raises ``DatasetError`` saying which folder is missing, when no image has labels,
    or when two images share a stem (``a.jpg`` and ``a.JPG``); each message names the
    preparation script that makes the layout.
    """
    base = _where(data, Path(root))
    image_dir, label_dir = base / data.images, base / data.labels
    made_by = (
        f"the layout comes from {PREPARE}, the labels from {data.prepare}; "
        f"point --root (or ${ROOT_ENV}) at the folder that holds {data.folders[0]}"
    )
    for folder, what in ((image_dir, f"*{IMAGE_EXT}"), (label_dir, f"*{data.label_ext}")):
        if not folder.is_dir():
            raise DatasetError(f"{data.title}: no folder {folder} (expected {what} there; {made_by})")
    files = [p for p in label_dir.iterdir() if p.is_file()]
    labels = {p.stem: p for p in files if p.suffix.lower() == data.label_ext}
    images: dict[str, Path] = {}
    for path in sorted(p for p in image_dir.iterdir() if p.suffix.lower() == IMAGE_EXT and p.is_file()):
        other = images.setdefault(path.stem, path)
        if other != path:
            raise DatasetError(f"{data.title}: {other.name} and {path.name} share a name; keep one")
    stems = sorted(images)
    samples = [Sample(stem, images[stem], labels[stem]) for stem in stems if stem in labels]
    if not samples:
        others = sorted({p.suffix.lower() for p in files} - {data.label_ext})
        found = f" (found {', '.join('*' + ext for ext in others)} files there)" if others else ""
        raise DatasetError(
            f"{data.title}: no image in {image_dir} (*{IMAGE_EXT}) has a label image of the same name in "
            f"{label_dir} (*{data.label_ext}){found}; {made_by}"
        )
    return Split(
        samples,
        [stem for stem in stems if stem not in labels],
        sorted(stem for stem in labels if stem not in images),
    )


def find_samples(data: Layout, root: str | os.PathLike, limit: int | None = None) -> list[Sample]:
    """The first ``limit`` (default all) (image, labels) pairs of ``scan``, in stem order;
    images without labels are left out, as detectron2 does."""
    samples = scan(data, root).samples
    return samples[:limit] if limit is not None else samples


def read_labels(path: str | os.PathLike, data: Layout) -> np.ndarray:
    """(H, W) int32 ground truth of one label image: class ids 0..K-1, -1 for ignore.

    Raises ``DatasetError`` for an unreadable file, more than one channel, or a value
    that is neither a class id nor the ignore value (labels not prepared for this
    benchmark, e.g. the raw annotations).
    """
    try:
        with Image.open(path) as im:
            values = np.asarray(im)
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise DatasetError(f"cannot read label image {path}: {err} (labels are made by {data.prepare})") from None
    if values.ndim != 2 or values.dtype.kind not in "ui":
        raise DatasetError(
            f"label image {path} must have one integer channel, got {values.dtype} {values.shape}; "
            f"were the labels made by {data.prepare}?"
        )
    gt = values.astype(np.int32)
    ignored = gt == data.ignore
    bad = ~ignored & ((gt < 0) | (gt >= data.num_classes))
    if bad.any():
        raise DatasetError(
            f"label image {path} has value {int(gt[bad][0])}, but {data.title} labels are 0-{data.num_classes - 1} "
            f"and {data.ignore} (ignore); were they made by {data.prepare}?"
        )
    gt[ignored] = -1
    return gt


def prediction_path(out: Path, stem: str) -> Path:
    """Where the evaluation writes the prediction of image ``stem``: ``OUT/predictions/STEM.png``."""
    return out / "predictions" / f"{stem}.png"


def encode_prediction(label_map: np.ndarray, data: Layout) -> np.ndarray:
    """An (H, W) int label map (-1 unlabelled) as the prediction image's pixels: (H, W)
    uint8 with 255 unlabelled, or uint16 with 65535 for benchmarks of more than 255 classes."""
    return np.where(label_map < 0, data.ignore, label_map).astype(data.label_dtype)


def read_prediction(path: Path, data: Layout) -> np.ndarray:
    """(H, W) int32 label map of a prediction image (-1 unlabelled); see ``read_labels``."""
    return read_labels(path, data)
