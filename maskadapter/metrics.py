"""Semantic segmentation metrics as detectron2's ``SemSegEvaluator`` computes them.

One confusion matrix over every pixel whose ground truth is not ignore, summed over
the images; from it per-class IoU and accuracy, mIoU, fwIoU, pACC and mACC, in percent.
"""

from __future__ import annotations

import numpy as np

from maskadapter.errors import InputError


class ConfusionMatrix:
    """Pixel counts of (predicted class, ground-truth class), as detectron2's
    ``SemSegEvaluator`` keeps them.

    Only pixels whose ground truth is not ignore are counted. Rows are the predicted
    class 0..K-1 and K for an unlabelled pixel; columns the ground-truth class 0..K-1.
    An unlabelled pixel is wrong for its ground-truth class and a false positive of no
    class.
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
        """Percentages (None where undefined):

        - ``IoU`` per class: TP / (TP + FP + FN); None for a class with no ground-truth
          and no predicted pixel;
        - ``mIoU``: the mean over classes with ground-truth or predicted pixels;
        - ``mIoU_gt_classes``: the mean over classes with ground-truth pixels (detectron2
          since July 2022; the two agree whenever every predicted class is in the ground truth);
        - ``fwIoU``: IoU weighted by each class's share of ground-truth pixels;
        - ``ACC`` per class: TP / ground-truth pixels; ``mACC`` its mean over classes
          with ground-truth pixels; ``pACC``: correct pixels / counted pixels.
        """
        k = self.num_classes
        tp = np.diag(self.counts[:k]).astype(np.float64)
        pos_gt = self.counts.sum(0).astype(np.float64)  # unlabelled predictions included
        pos_pred = self.counts[:k].sum(1).astype(np.float64)
        union = pos_gt + pos_pred - tp
        in_gt, seen = pos_gt > 0, union > 0
        iou = np.divide(tp, union, out=np.full(k, np.nan), where=seen)
        acc = np.divide(tp, pos_gt, out=np.full(k, np.nan), where=in_gt)
        total = pos_gt.sum()

        def percent(value: float) -> float | None:
            return None if not np.isfinite(value) else round(100.0 * float(value), 6)

        def mean(values: np.ndarray) -> float | None:
            return percent(values.mean()) if values.size else None

        return {
            "mIoU": mean(iou[seen]),
            "fwIoU": percent((iou[in_gt] * pos_gt[in_gt]).sum() / total) if total else None,
            "pACC": percent(tp.sum() / total) if total else None,
            "mACC": mean(acc[in_gt]),
            "mIoU_gt_classes": mean(iou[in_gt]),
            "IoU": [percent(v) for v in iou],
            "ACC": [percent(v) for v in acc],
            "gt_pixels": pos_gt.astype(np.int64).tolist(),
            "predicted_pixels": pos_pred.astype(np.int64).tolist(),
            "pixels": int(total),
            "unlabelled_pixels": int(self.counts[k].sum()),
        }
