"""Metric functions against hand-computed cases and an independent (loop) implementation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from runtime.metrics import (
    MetricAccumulator,
    confusion_matrix,
    dice_per_class,
    image_dice,
    iou_per_class,
    mean_iou,
    pixel_accuracy,
)

IGN = 255


def test_confusion_matrix_hand_case() -> None:
    gt = np.array([[0, 0, 1], [1, 2, IGN]])
    pred = np.array([[0, 1, 1], [1, 1, 3]])  # the 3 sits on an ignored pixel: it must not count
    cm = confusion_matrix(gt, pred, num_classes=4, ignore_index=IGN)
    expected = np.zeros((4, 4), np.int64)
    expected[0, 0] = 1
    expected[0, 1] = 1
    expected[1, 1] = 2
    expected[2, 1] = 1
    np.testing.assert_array_equal(cm, expected)
    # class 0: TP 1, FP 0, FN 1 -> IoU 1/2, Dice 2/3
    # class 1: TP 2, FP 2 (from 0 and 2), FN 0 -> IoU 2/4, Dice 4/6
    # class 2: TP 0, FP 0, FN 1 (in gt, never predicted) -> IoU 0, Dice 0
    # class 3: absent from gt and (valid) prediction -> undefined (NaN), left out of the mean
    iou = iou_per_class(cm)
    dice = dice_per_class(cm)
    np.testing.assert_allclose(iou[:3], [0.5, 0.5, 0.0])
    np.testing.assert_allclose(dice[:3], [2 / 3, 4 / 6, 0.0])
    assert math.isnan(iou[3]) and math.isnan(dice[3])
    assert mean_iou(cm) == pytest.approx((0.5 + 0.5 + 0.0) / 3)
    assert pixel_accuracy(cm) == pytest.approx(3 / 5)
    assert image_dice(gt, pred, 4, IGN) == pytest.approx((2 / 3 + 4 / 6 + 0.0) / 3)


def test_class_only_in_prediction_counts_as_zero() -> None:
    gt = np.zeros((2, 2), np.uint8)
    pred = np.array([[0, 0], [0, 5]])
    cm = confusion_matrix(gt, pred, num_classes=6)
    iou = iou_per_class(cm)
    assert iou[5] == 0.0  # false positives only
    assert iou[0] == pytest.approx(3 / 4)
    assert all(math.isnan(iou[c]) for c in (1, 2, 3, 4))
    assert mean_iou(cm) == pytest.approx((0.75 + 0.0) / 2)
    # Dice of image: class 0: 2*3/(6+1) = 6/7; class 5: 0 -> mean 3/7
    assert image_dice(gt, pred, 6) == pytest.approx(3 / 7)


def test_perfect_prediction_and_all_ignored_image() -> None:
    acc = MetricAccumulator(num_classes=3)
    gt = np.array([[0, 1], [2, 2]])
    scores = acc.update(gt, gt.copy())
    assert scores.tolist() == [1.0]
    ignored = np.full((2, 2), IGN)
    scores = acc.update(ignored, np.zeros((2, 2), np.int64))
    assert math.isnan(scores[0])  # no valid pixel: no score
    res = acc.result()
    assert res.mdice == 1.0  # the all-ignored image is left out of the mean
    assert res.miou == 1.0 and res.pixel_accuracy == 1.0
    d = res.to_dict()
    assert d["num_scored_images"] == 1
    assert [c["gt_pixels"] for c in d["per_class"]] == [1, 1, 2]


def test_errors_name_the_problem() -> None:
    with pytest.raises(ValueError, match="shape"):
        confusion_matrix(np.zeros((2, 2)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"ground truth holds labels \[20\]"):
        confusion_matrix(np.array([[20]]), np.array([[0]]), num_classes=14)
    with pytest.raises(ValueError, match=r"prediction holds labels \[14\]"):
        confusion_matrix(np.array([[0]]), np.array([[14]]), num_classes=14)


def _reference(gts: list[np.ndarray], preds: list[np.ndarray], c: int) -> tuple[np.ndarray, float, float, float]:
    """Slow, independent implementation with boolean masks per class and per image."""
    iou = np.full(c, np.nan)
    tp_all = np.zeros(c)
    fp_all = np.zeros(c)
    fn_all = np.zeros(c)
    image_scores = []
    for g, p in zip(gts, preds):
        valid = g != IGN
        per = []
        for k in range(c):
            gk = (g == k) & valid
            pk = (p == k) & valid
            tp, fp, fn = float((gk & pk).sum()), float((~gk & pk).sum()), float((gk & ~pk).sum())
            tp_all[k] += tp
            fp_all[k] += fp
            fn_all[k] += fn
            if gk.any() or pk.any():
                per.append(2 * tp / (2 * tp + fp + fn))
        if per:
            image_scores.append(sum(per) / len(per))
    for k in range(c):
        union = tp_all[k] + fp_all[k] + fn_all[k]
        if union > 0:
            iou[k] = tp_all[k] / union
    miou = float(np.nanmean(iou))
    acc = tp_all.sum() / sum(int((g != IGN).sum()) for g in gts)
    return iou, miou, float(np.mean(image_scores)), float(acc)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_against_independent_implementation(seed: int) -> None:
    rng = np.random.default_rng(seed)
    c = 14
    gts, preds = [], []
    for i in range(7):
        h, w = (20, 30) if i < 3 else rng.integers(5, 40, 2)
        # skewed labels so that some classes are absent from some images / the whole set
        g = rng.choice(c, size=(h, w), p=np.r_[0.5, np.full(9, 0.5 / 9), np.zeros(4)])
        g[rng.random((h, w)) < 0.1] = IGN
        p = np.where(rng.random((h, w)) < 0.6, np.where(g == IGN, 0, g), rng.integers(0, c - 2, (h, w)))
        gts.append(g.astype(np.uint8))
        preds.append(p.astype(np.uint8))
    acc = MetricAccumulator(num_classes=c)
    for g, p in zip(gts, preds):
        acc.update(g, p)
    res = acc.result()
    ref_iou, ref_miou, ref_mdice, ref_acc = _reference(gts, preds, c)
    np.testing.assert_allclose(res.iou, ref_iou, equal_nan=True)
    assert res.miou == pytest.approx(ref_miou)
    assert res.mdice == pytest.approx(ref_mdice)
    assert res.pixel_accuracy == pytest.approx(ref_acc)
    # a batched update gives the same result as one image at a time
    same = list(zip(gts[:3], preds[:3]))
    batch = MetricAccumulator(num_classes=c)
    batch.update(np.stack([g for g, _ in same]), np.stack([p for _, p in same]))
    single = MetricAccumulator(num_classes=c)
    for g, p in same:
        single.update(g, p)
    np.testing.assert_array_equal(batch.confusion, single.confusion)
    np.testing.assert_allclose(batch.image_scores, single.image_scores)
