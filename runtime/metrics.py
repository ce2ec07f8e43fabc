"""Segmentation metrics: confusion matrix, dataset-level IoU/Dice, and the LPCV 2023 per-image mDice.

Everything is pure numpy and vectorised with ``np.bincount``. Notation, for a class ``c`` over a set of pixels
whose ground-truth label is not the ignore index:

* ``TP_c`` = #(gt = c and pred = c), ``FP_c`` = #(gt != c and pred = c), ``FN_c`` = #(gt = c and pred != c)
* ``IoU_c  = TP_c / (TP_c + FP_c + FN_c)``
* ``Dice_c = 2 TP_c / (2 TP_c + FP_c + FN_c)``

Both are undefined when the class is absent from the ground truth *and* the prediction (0 / 0). We return NaN for
such a class and leave it out of every mean.

**Dataset-level mIoU** (the number the reference paper reports): accumulate one confusion matrix over all
images, compute ``IoU_c`` from it, and average over the classes present in the ground truth or in the prediction
of the whole dataset. A class that is predicted but never in the ground truth therefore counts with IoU 0 (it is
pure false positives); a class absent from both counts not at all. This is the convention of mmsegmentation's
``nanmean`` over classes whose union is non-zero.

**Per-image mDice** (the LPCV 2023 challenge metric, docs/field-notes.md section 2): for each image, ``Dice_c`` over the
classes present in that image's ground truth or prediction, their mean; then the mean over images. An image with
no valid pixel at all (everything ignored) has no defined score and is left out of the mean.

Pixels whose ground-truth label is the ignore index are excluded from everything (they count neither as TP, FP
nor FN, whatever is predicted there).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fileformat.errors import InputError
from models.constants import CLASS_NAMES, IGNORE_INDEX, NUM_CLASSES

__all__ = [
    "MetricAccumulator",
    "SegmentationMetrics",
    "confusion_matrix",
    "dice_per_class",
    "image_dice",
    "iou_per_class",
    "mean_iou",
    "pixel_accuracy",
    "summarize",
]


def _valid_pairs(
    gt: np.ndarray, pred: np.ndarray, num_classes: int, ignore_index: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """Flatten ``gt``/``pred``, drop ignored pixels and check the label ranges; return int64 vectors."""
    gt = np.asarray(gt)
    pred = np.asarray(pred)
    if gt.shape != pred.shape:
        raise InputError(f"ground truth shape {gt.shape} differs from prediction shape {pred.shape}")
    g = gt.reshape(-1).astype(np.int64, copy=False)
    p = pred.reshape(-1).astype(np.int64, copy=False)
    if ignore_index is not None:
        keep = g != ignore_index
        g, p = g[keep], p[keep]
    if g.size:
        if g.min() < 0 or g.max() >= num_classes:
            bad = np.unique(g[(g < 0) | (g >= num_classes)])
            raise InputError(f"ground truth holds labels {bad.tolist()} outside 0..{num_classes - 1}")
        if p.min() < 0 or p.max() >= num_classes:
            bad = np.unique(p[(p < 0) | (p >= num_classes)])
            raise InputError(f"prediction holds labels {bad.tolist()} outside 0..{num_classes - 1}")
    return g, p


def confusion_matrix(
    gt: np.ndarray,
    pred: np.ndarray,
    num_classes: int = NUM_CLASSES,
    ignore_index: int | None = IGNORE_INDEX,
) -> np.ndarray:
    """Return the ``[num_classes, num_classes]`` int64 confusion matrix, rows = ground truth, columns = prediction.

    ``cm[i, j]`` = number of valid pixels with ``gt == i`` and ``pred == j``; computed as one
    ``bincount(gt * C + pred)``. ``gt`` and ``pred`` may have any (equal) shape, e.g. ``HxW`` or ``NxHxW``.
    """
    g, p = _valid_pairs(gt, pred, num_classes, ignore_index)
    return np.bincount(g * num_classes + p, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def _stats(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(TP, FP, FN)`` per class from a confusion matrix (last two axes), float64."""
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diagonal(cm, axis1=-2, axis2=-1)
    fp = cm.sum(axis=-2) - tp  # column sums: predicted as c
    fn = cm.sum(axis=-1) - tp  # row sums: labelled c
    return tp, fp, fn


def iou_per_class(cm: np.ndarray) -> np.ndarray:
    """``IoU_c = TP / (TP + FP + FN)`` per class; NaN where the class is absent from ground truth and prediction."""
    tp, fp, fn = _stats(cm)
    union = tp + fp + fn
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, tp / np.where(union > 0, union, 1.0), np.nan)


def dice_per_class(cm: np.ndarray) -> np.ndarray:
    """``Dice_c = 2TP / (2TP + FP + FN)`` per class; NaN where absent from both. Works on ``[..., C, C]`` stacks."""
    tp, fp, fn = _stats(cm)
    denom = 2.0 * tp + fp + fn
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denom > 0, 2.0 * tp / np.where(denom > 0, denom, 1.0), np.nan)


def _nanmean(values: np.ndarray) -> float:
    """Mean over the non-NaN entries; NaN if there are none (without numpy's warning)."""
    values = np.asarray(values, dtype=np.float64)
    ok = ~np.isnan(values)
    return float(values[ok].mean()) if ok.any() else float("nan")


def mean_iou(cm: np.ndarray) -> float:
    """Dataset-level mIoU: mean of ``IoU_c`` over classes present in the ground truth or the prediction."""
    return _nanmean(iou_per_class(cm))


def pixel_accuracy(cm: np.ndarray) -> float:
    """``sum_c TP_c / #valid pixels``; NaN when there is no valid pixel."""
    cm = np.asarray(cm, dtype=np.float64)
    total = cm.sum()
    return float(np.trace(cm) / total) if total > 0 else float("nan")


def image_dice(
    gt: np.ndarray,
    pred: np.ndarray,
    num_classes: int = NUM_CLASSES,
    ignore_index: int | None = IGNORE_INDEX,
) -> float:
    """The challenge score of one image: mean ``Dice_c`` over classes present in its ground truth or prediction.

    NaN when the image has no valid pixel.
    """
    return _nanmean(dice_per_class(confusion_matrix(gt, pred, num_classes, ignore_index)))


@dataclass
class SegmentationMetrics:
    """The result of an evaluation. ``confusion[i, j]``: pixels of ground truth ``i`` predicted as ``j``."""

    confusion: np.ndarray
    image_dice: list[float]
    class_names: tuple[str, ...] = CLASS_NAMES

    @property
    def num_classes(self) -> int:
        """Number of classes (size of the confusion matrix)."""
        return int(self.confusion.shape[0])

    @property
    def iou(self) -> np.ndarray:
        """Per-class IoU (NaN = class absent from ground truth and prediction)."""
        return iou_per_class(self.confusion)

    @property
    def dice(self) -> np.ndarray:
        """Per-class dataset-level Dice (NaN = absent from both)."""
        return dice_per_class(self.confusion)

    @property
    def miou(self) -> float:
        """Dataset-level mIoU over classes present in ground truth or prediction."""
        return mean_iou(self.confusion)

    @property
    def mdice(self) -> float:
        """LPCV per-image mDice: mean over images (with a valid pixel) of each image's mean Dice."""
        return _nanmean(np.asarray(self.image_dice, dtype=np.float64))

    @property
    def pixel_accuracy(self) -> float:
        """Share of valid pixels predicted correctly."""
        return pixel_accuracy(self.confusion)

    @property
    def gt_pixels(self) -> np.ndarray:
        """Valid ground-truth pixels per class (row sums)."""
        return self.confusion.sum(axis=1)

    @property
    def pred_pixels(self) -> np.ndarray:
        """Predicted pixels per class, on valid ground-truth pixels only (column sums)."""
        return self.confusion.sum(axis=0)

    def per_class(self) -> list[dict[str, Any]]:
        """One dict per class: ``name``, ``id``, ``iou``, ``dice`` (None where undefined), pixel counts."""
        out = []
        iou, dice, gt_px, pred_px = self.iou, self.dice, self.gt_pixels, self.pred_pixels
        for c in range(self.num_classes):
            name = self.class_names[c] if c < len(self.class_names) else f"class_{c}"
            out.append(
                {
                    "id": c,
                    "name": name,
                    "iou": None if np.isnan(iou[c]) else float(iou[c]),
                    "dice": None if np.isnan(dice[c]) else float(dice[c]),
                    "gt_pixels": int(gt_px[c]),
                    "pred_pixels": int(pred_px[c]),
                }
            )
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (NaN written as None)."""

        def clean(x: float) -> float | None:
            return None if np.isnan(x) else float(x)

        return {
            "miou": clean(self.miou),
            "mdice": clean(self.mdice),
            "pixel_accuracy": clean(self.pixel_accuracy),
            "num_scored_images": int(np.sum(~np.isnan(np.asarray(self.image_dice, dtype=np.float64)))),
            "per_class": self.per_class(),
            "confusion": self.confusion.astype(np.int64).tolist(),
        }


@dataclass
class MetricAccumulator:
    """Accumulate a dataset-level confusion matrix and per-image Dice scores, one image (or batch) at a time."""

    num_classes: int = NUM_CLASSES
    ignore_index: int | None = IGNORE_INDEX
    class_names: tuple[str, ...] = CLASS_NAMES
    confusion: np.ndarray = field(init=False)
    image_scores: list[float] = field(init=False)

    def __post_init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget everything accumulated so far."""
        self.confusion = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)
        self.image_scores = []

    def update(self, gt: np.ndarray, pred: np.ndarray) -> np.ndarray:
        """Add one image (``HxW``) or a batch (``NxHxW``); return the per-image Dice of what was added.

        The per-image confusion matrices are computed at once with one ``bincount`` over
        ``image_index * C^2 + gt * C + pred``.
        """
        gt = np.asarray(gt)
        pred = np.asarray(pred)
        if gt.shape != pred.shape:
            raise InputError(f"ground truth shape {gt.shape} differs from prediction shape {pred.shape}")
        if gt.ndim == 2:
            gt, pred = gt[None], pred[None]
        if gt.ndim != 3:
            raise InputError(f"expected HxW or NxHxW label maps, got shape {gt.shape}")
        n, c = gt.shape[0], self.num_classes
        image_index = np.broadcast_to(np.arange(n, dtype=np.int64)[:, None, None], gt.shape)
        g, p = gt.reshape(-1).astype(np.int64), pred.reshape(-1).astype(np.int64)
        idx = image_index.reshape(-1)
        if self.ignore_index is not None:
            keep = g != self.ignore_index
            g, p, idx = g[keep], p[keep], idx[keep]
        _valid_pairs(g, p, c, None)  # range checks with clear messages
        cms = np.bincount(idx * c * c + g * c + p, minlength=n * c * c).reshape(n, c, c)
        self.confusion += cms.sum(axis=0)
        dice = dice_per_class(cms)  # [n, c], NaN where absent from both
        ok = ~np.isnan(dice)
        counts = ok.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            scores = np.where(counts > 0, np.where(ok, dice, 0.0).sum(axis=1) / np.maximum(counts, 1), np.nan)
        self.image_scores.extend(float(s) for s in scores)
        return scores

    def result(self) -> SegmentationMetrics:
        """The metrics of everything added so far (a copy)."""
        return SegmentationMetrics(self.confusion.copy(), list(self.image_scores), self.class_names)


def summarize(gts: list[np.ndarray], preds: list[np.ndarray], num_classes: int = NUM_CLASSES) -> SegmentationMetrics:
    """Convenience: metrics of paired lists of label maps (images may differ in size)."""
    acc = MetricAccumulator(num_classes=num_classes)
    for g, p in zip(gts, preds):
        acc.update(g, p)
    return acc.result()
