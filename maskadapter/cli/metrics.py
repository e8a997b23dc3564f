"""Semantic segmentation metrics: exactly detectron2's ``SemSegEvaluator``, plus strict variants.

One confusion matrix over every pixel whose ground truth is not ignore, summed over the
images. An unlabelled pixel of ours (no mask, or below the score threshold) is what
detectron2 calls a void prediction: its evaluator keeps such pixels in the last row of
its matrix and leaves that row out of every sum, so they count for nothing. The
headline metrics (``mIoU``, ``fwIoU``, ``pACC``, ``mACC``, per-class ``IoU`` and ``ACC``)
are those numbers, the ones the paper's tables report.

Because leaving pixels unlabelled costs nothing there, the share of unlabelled pixels
is reported beside them, with ``strict_*`` variants that count an unlabelled pixel as
wrong for its ground-truth class. The strict figures are this project's, not the paper's.
"""

from __future__ import annotations

import numpy as np

from maskadapter.errors import InputError


class ConfusionMatrix:
    """Pixel counts of (predicted class, ground-truth class).

    Only pixels whose ground truth is not ignore are counted. Rows are the predicted
    class 0..K-1, then K for an unlabelled pixel (detectron2's void prediction);
    columns the ground-truth class 0..K-1.
    """

    def __init__(self, num_classes: int) -> None:
        self.num_classes = int(num_classes)
        self.counts = np.zeros((self.num_classes + 1, self.num_classes), dtype=np.int64)

    def add(self, pred: np.ndarray, gt: np.ndarray) -> None:
        """Count one image: ``pred`` (H, W) int, -1 unlabelled; ``gt`` (H, W) int, -1 ignore."""
        if pred.shape != gt.shape:
            raise InputError(f"prediction {pred.shape} and ground truth {gt.shape} differ in size")
        k = self.num_classes
        keep = gt >= 0
        p = pred[keep].astype(np.int64)
        g = gt[keep].astype(np.int64)
        if p.size and (p.max() >= k or g.max() >= k or p.min() < -1):
            raise InputError(f"class ids must be below {k} (predictions may be -1)")
        p[p < 0] = k
        self.counts += np.bincount(p * k + g, minlength=self.counts.size).reshape(self.counts.shape)

    def metrics(self) -> dict:
        """Percentages, None where undefined (detectron2's NaN; its fwIoU is 0 then).

        detectron2's, unlabelled pixels not counted (TP: diagonal; GT and predicted
        pixels: column and row sums over labelled predictions only):

        - ``IoU`` per class: TP / (GT + predicted - TP), for classes with ground-truth
          pixels (None for the others, even when predicted);
        - ``mIoU``: its mean over the classes with ground-truth pixels;
        - ``fwIoU``: IoU weighted by each class's share of (labelled-prediction) GT pixels;
        - ``ACC`` per class: TP / GT; ``mACC`` its mean; ``pACC``: sum TP / sum GT.

        This project's, unlabelled pixels counted as wrong (not comparable with the
        paper): ``strict_IoU``, ``strict_mIoU``, ``strict_fwIoU``, ``strict_pACC``,
        ``strict_mACC``, the same formulas with every counted pixel in GT; and
        ``unlabelled_share``, the share of counted pixels left unlabelled.
        """
        k = self.num_classes
        labelled = self.counts[:k].astype(np.float64)
        found = _scores(np.diag(labelled), labelled.sum(0), labelled.sum(1))
        strict = _scores(np.diag(labelled), self.counts.sum(0).astype(np.float64), labelled.sum(1))
        pixels = int(self.counts.sum())
        unlabelled = int(self.counts[k].sum())
        return {
            **{name: found[name] for name in ("mIoU", "fwIoU", "pACC", "mACC", "IoU", "ACC")},
            **{f"strict_{name}": strict[name] for name in ("mIoU", "fwIoU", "pACC", "mACC", "IoU")},
            "unlabelled_share": _percent(unlabelled / pixels) if pixels else None,
            "gt_pixels": self.counts.sum(0).tolist(),  # every counted pixel, unlabelled ones too
            "predicted_pixels": self.counts[:k].sum(1).tolist(),
            "pixels": pixels,
            "unlabelled_pixels": unlabelled,
        }


def _percent(value: float) -> float | None:
    return None if not np.isfinite(value) else 100.0 * float(value)


def _scores(tp: np.ndarray, pos_gt: np.ndarray, pos_pred: np.ndarray) -> dict:
    """detectron2's formulas on (K,) true positives, ground-truth and predicted counts."""
    k = len(tp)
    union = pos_gt + pos_pred - tp
    acc_valid = pos_gt > 0
    iou_valid = acc_valid & (union > 0)
    acc = np.divide(tp, pos_gt, out=np.full(k, np.nan), where=acc_valid)
    iou = np.divide(tp, union, out=np.full(k, np.nan), where=iou_valid)
    total = pos_gt.sum()
    weights = pos_gt / total if total else np.zeros(k)
    return {
        "mIoU": _percent(iou[iou_valid].mean()) if iou_valid.any() else None,
        "fwIoU": _percent((iou[iou_valid] * weights[iou_valid]).sum()),  # 0 when no class counts, as detectron2
        "pACC": _percent(tp.sum() / total) if total else None,
        "mACC": _percent(acc[acc_valid].mean()) if acc_valid.any() else None,
        "IoU": [_percent(v) for v in iou],
        "ACC": [_percent(v) for v in acc],
    }
