"""Evaluation metrics, accumulated over a whole test set (paper 6.1, Eigen et al.).

Segmentation: one confusion matrix per translation over every test pixel whose label is
not void; per-class IoU = TP / (TP + FP + FN), mIoU = mean over the classes that occur in
the ground truth or the prediction, global accuracy = correctly labelled / labelled pixels.

Depth (and NIR): on valid pixels only, in raw units (metres for depth):
  delta_k = fraction of pixels with max(pred/gt, gt/pred) < 1.25**k, k = 1, 2, 3;
  RMSE linear = sqrt(mean((pred - gt)^2)); RMSE log = sqrt(mean((log pred - log gt)^2)).
Means are over all valid pixels of the test set (not per image then averaged), as in
Eigen et al. (2014). Predictions are clipped below at `min_value` so ratios and logs exist.

Accumulators are numpy (float64/int64): sums over a whole test set are exact and cheap.
"""

from typing import Dict, Optional, Sequence

import numpy as np

DELTA_THRESHOLD = 1.25


def confusion_matrix(labels, predictions, num_classes: int,
                     void_label: Optional[int] = None) -> np.ndarray:
  """[K, K] int64 confusion matrix; rows = ground truth, columns = prediction.

  Pixels whose label is `void_label` or outside 0..K-1 are ignored.

  Example:
    >>> confusion_matrix([0, 1, 1, 255], [0, 0, 1, 1], 2, void_label=255)
    array([[1, 0],
           [1, 1]])
  """
  labels = np.asarray(labels).reshape(-1).astype(np.int64)
  predictions = np.asarray(predictions).reshape(-1).astype(np.int64)
  if labels.shape != predictions.shape:
    raise ValueError(f"labels and predictions differ in size: {labels.shape} vs "
                     f"{predictions.shape}.")
  valid = (labels >= 0) & (labels < num_classes)
  if void_label is not None:
    valid &= labels != void_label
  # A prediction outside 0..K-1 cannot come from argmax; clip defensively so bincount
  # never writes outside the matrix.
  predictions = np.clip(predictions[valid], 0, num_classes - 1)
  return np.bincount(labels[valid] * num_classes + predictions,
                     minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def segmentation_scores(confusion, class_names: Optional[Sequence[str]] = None) -> dict:
  """Per-class IoU, mIoU and global accuracy of a confusion matrix (fractions, not %).

  A class absent from both the ground truth and the prediction has an undefined IoU
  (None in `per_class_iou`) and does not count in mIoU.

  Returns:
    {"per_class_iou": {name: iou or None}, "miou": float, "global_accuracy": float,
     "pixels": int}
  """
  confusion = np.asarray(confusion, np.float64)
  num_classes = confusion.shape[0]
  names = list(class_names) if class_names is not None else [str(i) for i in range(num_classes)]
  true_positive = np.diag(confusion)
  union = confusion.sum(axis=0) + confusion.sum(axis=1) - true_positive
  with np.errstate(invalid="ignore", divide="ignore"):
    iou = np.where(union > 0, true_positive / np.maximum(union, 1), np.nan)
  total = confusion.sum()
  return {
      "per_class_iou": {n: (None if np.isnan(v) else float(v)) for n, v in zip(names, iou)},
      "miou": float(np.nanmean(iou)) if np.any(~np.isnan(iou)) else float("nan"),
      "global_accuracy": float(true_positive.sum() / total) if total > 0 else float("nan"),
      "pixels": int(total),
  }


class SegmentationMetric:
  """Accumulates a confusion matrix over batches of label maps.

  Example:
    >>> metric = SegmentationMetric(5, void_label=255, class_names=names)
    >>> metric.update(gt_labels, predicted_labels)   # any number of times
    >>> metric.result()["miou"]
  """

  def __init__(self, num_classes: int, void_label: Optional[int] = None,
               class_names: Optional[Sequence[str]] = None):
    self.num_classes = int(num_classes)
    self.void_label = void_label
    self.class_names = class_names
    self.confusion = np.zeros([self.num_classes, self.num_classes], np.int64)

  def update(self, labels, predictions):
    self.confusion += confusion_matrix(labels, predictions, self.num_classes, self.void_label)

  def result(self) -> dict:
    scores = segmentation_scores(self.confusion, self.class_names)
    scores["confusion_matrix"] = self.confusion.tolist()
    return scores


class DepthMetric:
  """Accumulates Eigen et al. depth metrics over batches, on valid pixels only.

  Args:
    min_value: Predictions (and ground truth) are clipped below at this value before
      ratios and logs; ground truth pixels <= 0 are invalid anyway.
  """

  def __init__(self, min_value: float = 1e-3):
    self.min_value = float(min_value)
    self.pixels = 0
    self.delta_counts = np.zeros(3, np.int64)
    self.squared_error = 0.0
    self.squared_log_error = 0.0

  def update(self, targets, predictions, valid=None):
    """Adds a batch.

    Args:
      targets: Ground truth in raw units (e.g. metres), any shape.
      predictions: Same shape, same units.
      valid: Optional boolean mask of pixels with a measurement; pixels with a
        non-finite or non-positive target are always excluded.
    """
    targets = np.asarray(targets, np.float64)
    predictions = np.asarray(predictions, np.float64)
    if targets.shape != predictions.shape:
      raise ValueError(f"targets and predictions differ in shape: {targets.shape} vs "
                       f"{predictions.shape}.")
    mask = np.isfinite(targets) & (targets > 0)
    if valid is not None:
      mask &= np.asarray(valid, bool).reshape(targets.shape)
    gt = targets[mask]
    pred = np.nan_to_num(predictions[mask], nan=self.min_value)
    pred = np.maximum(pred, self.min_value)
    gt = np.maximum(gt, self.min_value)
    ratio = np.maximum(pred / gt, gt / pred)
    for k in range(3):
      self.delta_counts[k] += int(np.sum(ratio < DELTA_THRESHOLD ** (k + 1)))
    self.squared_error += float(np.sum((pred - gt) ** 2))
    self.squared_log_error += float(np.sum((np.log(pred) - np.log(gt)) ** 2))
    self.pixels += int(gt.size)

  def result(self) -> Dict[str, float]:
    if self.pixels == 0:
      nan = float("nan")
      return {"delta1": nan, "delta2": nan, "delta3": nan, "rmse": nan, "rmse_log": nan,
              "pixels": 0}
    return {
        "delta1": float(self.delta_counts[0] / self.pixels),
        "delta2": float(self.delta_counts[1] / self.pixels),
        "delta3": float(self.delta_counts[2] / self.pixels),
        "rmse": float(np.sqrt(self.squared_error / self.pixels)),
        "rmse_log": float(np.sqrt(self.squared_log_error / self.pixels)),
        "pixels": int(self.pixels),
    }


def depth_metrics(targets, predictions, valid=None, min_value: float = 1e-3) -> Dict[str, float]:
  """Depth metrics of one set of arrays (see `DepthMetric`)."""
  metric = DepthMetric(min_value)
  metric.update(targets, predictions, valid)
  return metric.result()


class MeanMetric:
  """Example-weighted running mean (alignment factors over batches)."""

  def __init__(self):
    self.total = 0.0
    self.count = 0

  def update(self, value, count: int):
    self.total += float(value) * int(count)
    self.count += int(count)

  def result(self) -> float:
    return self.total / self.count if self.count else float("nan")
