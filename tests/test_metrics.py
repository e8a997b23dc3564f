"""The evaluation's metrics against a transcription of detectron2's ``SemSegEvaluator``.

detectron2 keeps a (K+1) x (K+1) matrix: row = prediction (K: void), column = ground
truth (K: ignore), and computes every metric from the matrix without its last row and
column. The transcription below follows its ``process`` and ``evaluate`` step by step;
an unlabelled pixel of ours is its void prediction. The strict variants must equal
detectron2's formulas with the unlabelled pixels made a real (K+1)-th class that is
never right.
"""

from __future__ import annotations

import numpy as np
import pytest

from maskadapter.cli.metrics import ConfusionMatrix

HEADLINE = ("mIoU", "fwIoU", "pACC", "mACC")


def detectron2(preds: list[np.ndarray], gts: list[np.ndarray], k: int) -> dict:
    """detectron2's SemSegEvaluator on images with predictions in 0..K-1 or -1 (void)
    and ground truth in 0..K-1 or -1 (ignore); NaN where detectron2 gives NaN."""
    conf = np.zeros((k + 1, k + 1), dtype=np.int64)
    for pred, gt in zip(preds, gts, strict=True):
        pred = np.where(pred < 0, k, pred)  # void prediction: the last row
        gt = np.where(gt < 0, k, gt)  # ignore: the last column
        conf += np.bincount((k + 1) * pred.reshape(-1) + gt.reshape(-1), minlength=conf.size).reshape(conf.shape)
    acc = np.full(k, np.nan, dtype=float)
    iou = np.full(k, np.nan, dtype=float)
    tp = conf.diagonal()[:-1].astype(float)
    pos_gt = np.sum(conf[:-1, :-1], axis=0).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        class_weights = pos_gt / np.sum(pos_gt)
        pos_pred = np.sum(conf[:-1, :-1], axis=1).astype(float)
        acc_valid = pos_gt > 0
        acc[acc_valid] = tp[acc_valid] / pos_gt[acc_valid]
        union = pos_gt + pos_pred - tp
        iou_valid = np.logical_and(acc_valid, union > 0)
        iou[iou_valid] = tp[iou_valid] / union[iou_valid]
        macc = np.sum(acc[acc_valid]) / np.sum(acc_valid)
        miou = np.sum(iou[iou_valid]) / np.sum(iou_valid)
        fiou = np.sum(iou[iou_valid] * class_weights[iou_valid])
        pacc = np.sum(tp) / np.sum(pos_gt)
    return {"mIoU": 100 * miou, "fwIoU": 100 * fiou, "mACC": 100 * macc, "pACC": 100 * pacc,
            "IoU": 100 * iou, "ACC": 100 * acc}  # fmt: skip


def _none_as_nan(values) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in np.atleast_1d(values)], dtype=float)


def _random_case(rng: np.random.Generator, k: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """A few images over K classes, some classes absent from the ground truth, some
    never predicted, some predicted only where the ground truth is ignore; ignore and
    void pixels in varying shares (none at all in some cases)."""
    absent = rng.choice(k, size=rng.integers(0, k // 2 + 1), replace=False)  # no gt pixel
    unpredicted = rng.choice(k, size=rng.integers(0, k // 2 + 1), replace=False)
    p_ignore, p_void, p_right = rng.choice([0.0, 0.1, 0.4]), rng.choice([0.0, 0.05, 0.3]), rng.uniform(0, 0.9)
    preds, gts = [], []
    for _ in range(rng.integers(1, 4)):
        shape = tuple(rng.integers(1, 40, size=2))
        present = np.setdiff1d(np.arange(k), absent)
        gt = rng.choice(present, size=shape) if len(present) else np.full(shape, -1)
        pred = np.where(rng.random(shape) < p_right, gt, rng.integers(0, k, size=shape))
        pred = np.where(np.isin(pred, unpredicted), (pred + 1) % k, pred)
        pred = np.where(rng.random(shape) < p_void, -1, pred)
        gt = np.where(rng.random(shape) < p_ignore, -1, gt)
        preds.append(pred)
        gts.append(gt)
    return preds, gts


@pytest.mark.parametrize("seed", range(40))
def test_metrics_equal_detectron2s_on_random_cases(seed):
    rng = np.random.default_rng(seed)
    k = int(rng.integers(1, 12))
    preds, gts = _random_case(rng, k)
    matrix = ConfusionMatrix(k)
    for pred, gt in zip(preds, gts, strict=True):
        matrix.add(pred, gt)
    found = matrix.metrics()
    expected = detectron2(preds, gts, k)
    for name in HEADLINE:
        np.testing.assert_allclose(_none_as_nan(found[name]), expected[name], rtol=0, atol=1e-9, err_msg=name)
    for name in ("IoU", "ACC"):
        np.testing.assert_allclose(_none_as_nan(found[name]), expected[name], rtol=0, atol=1e-9, err_msg=name)

    # strict: unlabelled pixels become a (K+1)-th class, which no ground truth has
    strict = detectron2([np.where(p < 0, k, p) for p in preds], gts, k + 1)
    for name in HEADLINE:
        np.testing.assert_allclose(_none_as_nan(found[f"strict_{name}"]), strict[name], atol=1e-9, err_msg=name)
    np.testing.assert_allclose(_none_as_nan(found["strict_IoU"]), strict["IoU"][:k], atol=1e-9)
    counted = sum(int(np.sum(g >= 0)) for g in gts)
    void = sum(int(np.sum((g >= 0) & (p < 0))) for p, g in zip(preds, gts, strict=True))
    assert (found["pixels"], found["unlabelled_pixels"]) == (counted, void)
    if counted:
        assert found["unlabelled_share"] == pytest.approx(100 * void / counted, abs=1e-9)


def test_the_cases_cover_what_they_should():
    """Across the random cases: absent classes, ignore pixels, void predictions, a class
    predicted without ground truth, and an image with no void at all all occur."""
    seen = set()
    for seed in range(40):
        rng = np.random.default_rng(seed)
        k = int(rng.integers(1, 12))
        preds, gts = _random_case(rng, k)
        gt_all, pred_all = np.concatenate([g.ravel() for g in gts]), np.concatenate([p.ravel() for p in preds])
        seen |= {"ignore"} if (gt_all < 0).any() else set()
        seen |= {"void"} if ((pred_all < 0) & (gt_all >= 0)).any() else {"no void"}
        seen |= {"absent"} if len(np.setdiff1d(np.arange(k), gt_all)) else set()
        predicted_only = np.setdiff1d(pred_all[(gt_all >= 0) & (pred_all >= 0)], gt_all[gt_all >= 0])
        seen |= {"predicted without gt"} if len(predicted_only) else set()
    assert seen == {"ignore", "void", "no void", "absent", "predicted without gt"}


def test_hand_case():
    """Three classes, one row of pixels: ground truth (-1 ignore) and prediction (-1 unlabelled)."""
    matrix = ConfusionMatrix(3)
    matrix.add(np.array([[0, 0, 2, -1, 1, 0, 2, -1]]), np.array([[0, 0, 0, 0, 1, 1, -1, -1]]))
    m = matrix.metrics()
    # detectron2 counts the five labelled pixels whose gt is not ignore:
    # class 0: TP 2, gt 3 (one read as 2), predicted 3 (one gt-1 pixel) -> IoU 2/4, ACC 2/3
    # class 1: TP 1, gt 2, predicted 1 -> IoU 1/2, ACC 1/2; class 2: no ground truth -> none
    assert m["IoU"][:2] == pytest.approx([50.0, 50.0]) and m["IoU"][2] is None
    assert m["mIoU"] == pytest.approx(50.0) and m["pACC"] == pytest.approx(60.0)
    assert m["ACC"][:2] == pytest.approx([200 / 3, 50.0]) and m["ACC"][2] is None
    assert m["mACC"] == pytest.approx((200 / 3 + 50) / 2)
    assert m["fwIoU"] == pytest.approx(50 * 3 / 5 + 50 * 2 / 5)
    # strict: the unlabelled gt-0 pixel is wrong: class 0 gt 4 -> IoU 2/5, ACC 2/4
    assert m["strict_IoU"][:2] == pytest.approx([40.0, 50.0])
    assert m["strict_mIoU"] == pytest.approx(45.0) and m["strict_pACC"] == pytest.approx(50.0)
    assert m["strict_mACC"] == pytest.approx(50.0)
    assert m["strict_fwIoU"] == pytest.approx(40 * 4 / 6 + 50 * 2 / 6)
    assert (m["unlabelled_pixels"], m["pixels"]) == (1, 6) and m["unlabelled_share"] == pytest.approx(100 / 6)


def test_images_add_up_and_edge_cases():
    matrix = ConfusionMatrix(2)
    matrix.add(np.array([[0, 1]]), np.array([[0, 0]]))
    matrix.add(np.array([[-1, -1]]), np.array([[1, -1]]))
    m = matrix.metrics()
    # class 1's one gt pixel is unlabelled: detectron2 does not see it (no IoU for class 1)
    assert m["IoU"][0] == pytest.approx(50.0) and m["IoU"][1] is None and m["pACC"] == pytest.approx(50.0)
    assert m["strict_IoU"] == pytest.approx([50.0, 0.0]) and m["strict_pACC"] == pytest.approx(100 / 3)

    empty = ConfusionMatrix(2)  # nothing counted (all ignore): undefined, not an error
    empty.add(np.array([[0]]), np.array([[-1]]))
    assert all(empty.metrics()[name] is None for name in ("mIoU", "pACC", "mACC", "unlabelled_share"))
    assert empty.metrics()["fwIoU"] == 0.0  # detectron2's sum over no class

    with pytest.raises(ValueError, match="below 3"):
        ConfusionMatrix(3).add(np.array([[3]]), np.array([[0]]))
    with pytest.raises(ValueError, match="differ in size"):
        ConfusionMatrix(3).add(np.zeros((2, 2), int), np.zeros((2, 3), int))
